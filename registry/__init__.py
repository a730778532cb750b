"""The upgrader registry: workspace interface, probe set, generations, gate reports, aliases and the
production gallery, in SQLite or PostgreSQL (SQLAlchemy 2 + numpy; no torch, no upgrader).

Open a workspace with :meth:`Registry.open`; every failure is a :class:`RegistryError` subclass.
Front ends check a generation name with :func:`generation_name` before making folders for it.
"""

from __future__ import annotations

from registry.api import Registry
from registry.codec import EmbeddingCodec
from registry.entities import (
    EMBEDDING_DTYPES,
    GENERATION_KINDS,
    GENERATION_STATUSES,
    PROBE_SPLITS,
    PRODUCTION,
    AliasMove,
    Evaluation,
    GalleryChanges,
    GalleryMatrix,
    GallerySource,
    GateReport,
    Generation,
    Interface,
    NewGeneration,
    ProbeSet,
)
from registry.errors import (
    AliasTampered,
    BackendError,
    ConstraintViolation,
    DuplicateItem,
    EmbeddingError,
    GateNotPassed,
    InterfaceError,
    InvalidStatus,
    ProbeSetError,
    RegistryError,
    SchemaFromFuture,
    SchemaOutOfDate,
    UnknownGalleryItem,
    UnknownGateReport,
    UnknownGeneration,
    WorkspaceNotFound,
)
from registry.validation import GENERATION_NAME_PATTERN, generation_name

__all__ = [
    "EMBEDDING_DTYPES",
    "GENERATION_NAME_PATTERN",
    "GENERATION_KINDS",
    "GENERATION_STATUSES",
    "PROBE_SPLITS",
    "PRODUCTION",
    "AliasMove",
    "AliasTampered",
    "BackendError",
    "ConstraintViolation",
    "DuplicateItem",
    "EmbeddingCodec",
    "EmbeddingError",
    "Evaluation",
    "GalleryChanges",
    "GalleryMatrix",
    "GallerySource",
    "GateNotPassed",
    "GateReport",
    "Generation",
    "Interface",
    "InterfaceError",
    "InvalidStatus",
    "NewGeneration",
    "ProbeSet",
    "ProbeSetError",
    "Registry",
    "RegistryError",
    "SchemaFromFuture",
    "SchemaOutOfDate",
    "UnknownGalleryItem",
    "UnknownGateReport",
    "UnknownGeneration",
    "WorkspaceNotFound",
    "generation_name",
]
