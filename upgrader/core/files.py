"""File helpers every layer shares: atomic writes and checksums."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from upgrader.core.errors import ArtifactError


@contextmanager
def replacing(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` only if the block succeeds.

    Same folder, so the rename is atomic: a reader never sees a half-written file, and a failure or a
    crash leaves the old file (or none) in place. ``suffix`` serves writers that insist on one
    (``np.savez`` appends ``.npz`` otherwise).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`replacing`), flushed to disk first."""
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file (read in 1 MiB chunks).

    Raises:
        ArtifactError: the file cannot be read.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read ({exc.strerror}); check the artifact path") from None
    return h.hexdigest()
