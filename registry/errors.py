"""The registry's error hierarchy.

Every failure that leaves ``registry/`` is a :class:`RegistryError` subclass named after the condition;
no ``sqlalchemy.exc`` exception crosses the package boundary. Messages are one line that names the
problem and the fix in the registry's own words (never a CLI command or flag), so any front end can
print them as they are and add its own way to apply the fix.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Root of every error the registry raises."""


class WorkspaceNotFound(RegistryError):
    """No registry exists at the location given (and ``create`` was not asked for)."""


class SchemaOutOfDate(RegistryError):
    """The database schema is older than this code; :meth:`registry.Registry.upgrade` migrates it."""


class SchemaFromFuture(RegistryError):
    """The database schema is newer than this code knows; upgrade the package."""


class InterfaceError(RegistryError):
    """The workspace interface (K, label map) is missing, already set, or contradicted."""


class ProbeSetError(RegistryError):
    """The probe set is missing, already registered, or malformed."""


class UnknownGeneration(RegistryError):
    """No generation has the id or name given."""


class DuplicateItem(RegistryError):
    """An item with the same unique key (gallery external id, generation name, ...) already exists."""


class EmbeddingError(RegistryError):
    """Embeddings with the wrong dimension, dtype or shape, or non-finite values."""


class GateNotPassed(RegistryError):
    """An alias move was asked for without a passing gate report for the exact artifact."""


class InvalidStatus(RegistryError):
    """A generation status outside the allowed set, or a transition the registry refuses."""


class BackendError(RegistryError):
    """The database failed in a way the caller cannot fix by changing its input (I/O, locks)."""


class ConstraintViolation(RegistryError):
    """The database refused a write that broke one of its constraints (a reference or a check)."""


class UnknownGateReport(RegistryError):
    """No gate report has the id given."""


class UnknownGalleryItem(RegistryError):
    """An operation on existing gallery items (re-embedding) named an external id the gallery lacks."""


class AliasTampered(RegistryError):
    """An alias disagrees with the last move of its append-only history: the database was edited
    outside the registry. Nothing serves or moves the alias until the two agree again."""
