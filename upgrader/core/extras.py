"""The optional parts of the install, and the one error for a command that needs a part that is missing.

The core install is what a CPU server and an operator need (registry, gate, ONNX Runtime, FAISS, the
HTTP server, the CLI, the dashboard). What only some machines need is an extra of the distribution
(pyproject.toml): ``train`` (torch, the ONNX exporter, the study's plots) and ``postgres`` (the
driver). Those packages are imported lazily, where a command first needs them; an ``ImportError``
from such an import goes through :func:`missing_extra`, which turns it into a :class:`MissingExtra`
naming the extra to install, so every front end says the same one line instead of a traceback.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

from upgrader.core.errors import UpgraderError
from upgrader.core.version import DISTRIBUTION

#: Top-level module -> the extra of the distribution that installs it (pyproject.toml).
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "train",
    "onnx": "train",
    "onnxscript": "train",
    "matplotlib": "train",
    "psycopg": "postgres",
}
#: Drivers SQLAlchemy picks for a URL that names none, which no extra installs: the fix is the URL.
URL_DRIVERS: dict[str, str] = {"psycopg2": "postgresql+psycopg://"}


class MissingExtra(UpgraderError):
    """An optional dependency is not installed; the message names the extra that installs it.

    Attributes:
        extra: the extra to install (``train``, ``postgres``).
        module: the top-level module that could not be imported.
    """

    def __init__(self, extra: str, module: str, *, url_prefix: str | None = None) -> None:
        install = f"pip install '{DISTRIBUTION}[{extra}]'"
        if url_prefix is None:
            message = f"this needs the '{extra}' extra ({module} is not installed here); install it with {install}"
        else:
            message = (f"the registry URL selects the {module} driver, which upgrader does not use; "
                       f"write it as {url_prefix}... and install the '{extra}' extra with {install}")
        super().__init__(message, subject="extra")
        self.extra, self.module = extra, module


def _installed(module: str) -> bool:
    """Whether ``module`` can be found at all (``None`` in ``sys.modules`` counts as absent)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_extra(err: ImportError) -> MissingExtra | None:
    """The :class:`MissingExtra` an import error stands for, or ``None`` when it is not one.

    Only a module that is really absent counts: an extra's package that is installed but fails to
    import (a broken build, a missing system library) keeps its own error, which says more.

    Args:
        err: the error an import raised.
    """
    top = (err.name or "").partition(".")[0]
    if top in URL_DRIVERS and not _installed(top):
        return MissingExtra("postgres", top, url_prefix=URL_DRIVERS[top])
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None or _installed(top):
        return None
    return MissingExtra(extra, top)


@contextmanager
def requires_extra() -> Iterator[None]:
    """Run a block whose imports may need an extra; a missing one is raised as :class:`MissingExtra`.

    Raises:
        MissingExtra: an import in the block failed because an extra's package is absent.
    """
    try:
        yield
    except ImportError as err:
        missing = missing_extra(err)
        if missing is None:
            raise
        raise missing from None
