"""Checks on what callers hand the registry, made before any transaction starts.

Names (classes, generations, external ids), the interface's K, probe splits and images, statuses,
gate report kinds and the shape of embedding matrices. Each check raises the registry error named
after the condition, with a message that says what is wrong and how to fix it in the registry's own
words (callers such as a CLI add their own commands and flags).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from registry.entities import (
    EMBEDDING_DTYPES,
    GENERATION_KINDS,
    GENERATION_STATUSES,
    PROBE_SPLITS,
    PRODUCTION,
)
from registry.errors import (
    ConstraintViolation,
    DuplicateItem,
    EmbeddingError,
    InterfaceError,
    InvalidStatus,
    ProbeSetError,
)

#: Gate report kinds a stored report may have (and an alias move accepts).
GATE_KINDS: tuple[str, ...] = ("promote", "rollback")


def preview(values: Iterable[Any], limit: int = 5) -> str:
    """The first ``limit`` values, repr'd and comma-joined, with a count of the rest (for messages)."""
    vals = list(values)
    shown = ", ".join(repr(v) for v in vals[:limit])
    return shown + (f" (+{len(vals) - limit} more)" if len(vals) > limit else "")


def num_classes(value: int) -> int:
    """Check K, the number of d-Simplex vertices of an interface.

    Raises:
        InterfaceError: not an integer, or below 2.
    """
    if isinstance(value, bool) or int(value) != value or value < 2:
        raise InterfaceError(f"the interface needs at least 2 classes (K), got {value!r}")
    return int(value)


def embedding_dtype(value: str) -> str:
    """Check a gallery storage dtype.

    Raises:
        EmbeddingError: not one of :data:`registry.entities.EMBEDDING_DTYPES`.
    """
    if value not in EMBEDDING_DTYPES:
        raise EmbeddingError(f"unknown embedding dtype {value!r}; use one of {', '.join(EMBEDDING_DTYPES)}")
    return value


def class_names(names: Iterable[str]) -> list[str]:
    """Check label-map class names; returns them without repeats, first occurrence order kept.

    Raises:
        InterfaceError: a name that is not a non-empty string.
    """
    wanted: list[str] = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise InterfaceError(f"class names must be non-empty strings, got {name!r}")
        if name not in wanted:
            wanted.append(name)
    return wanted


def probe_split(split: str) -> str:
    """Check a probe split name.

    Raises:
        ProbeSetError: not ``"query"`` or ``"gallery"``.
    """
    if split not in PROBE_SPLITS:
        raise ProbeSetError(f"unknown probe split {split!r}; use 'query' or 'gallery'")
    return split


def probe_images(images: np.ndarray) -> np.ndarray:
    """Check probe pixels and return them as a C-contiguous uint8 ``[N, H, W, C]`` array.

    ``[N, H, W]`` is taken as one channel.

    Raises:
        ProbeSetError: empty, not 4-D, not uint8, or a channel count other than 1 or 3.
    """
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise ProbeSetError(f"probe images must be a non-empty uint8 [N, H, W, C] array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ProbeSetError(f"probe images must be uint8 pixels, got {arr.dtype}; pass the raw images")
    if int(arr.shape[3]) not in (1, 3):
        raise ProbeSetError(f"probe images must have 1 or 3 channels (NHWC), got {int(arr.shape[3])}")
    return np.ascontiguousarray(arr)


def probe_item_ids(item_ids: Sequence[int] | np.ndarray) -> list[int]:
    """Check probe item ids given with embeddings; returns them as ints.

    Raises:
        ProbeSetError: an id repeats.
    """
    ids = [int(i) for i in np.asarray(item_ids).reshape(-1)]
    if len(set(ids)) != len(ids):
        raise ProbeSetError("probe item ids repeat; pass each item once")
    return ids


#: What a generation name must look like. Names become folder names of the workspace, so no path
#: separator, no leading dot (hidden files, ``..``), no spaces and no markup brackets can appear.
GENERATION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_GENERATION_NAME = re.compile(GENERATION_NAME_PATTERN)


def generation_name(name: object) -> str:
    """Check a new generation's name; returns it unchanged.

    A name must match :data:`GENERATION_NAME_PATTERN`, ``^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$``:
    1 to 100 letters, digits, ``.``, ``_`` or ``-``, the first a letter or digit. So it is safe as a
    folder name inside the workspace (no ``/``, ``\\``, leading ``.``, absolute path, space or
    ``[``/``]``). It must also not be all digits (it would read as an id) nor ``production``.

    Raises:
        ConstraintViolation: any other name.
    """
    key = name if isinstance(name, str) else ""
    if not _GENERATION_NAME.fullmatch(key) or key.isdigit() or key == PRODUCTION:
        raise ConstraintViolation(
            f"generation name {name!r} is not allowed: a name must match {GENERATION_NAME_PATTERN} "
            f"(letters, digits, '.', '_', '-', starting with a letter or digit, at most 100 characters), "
            f"be non-numeric and not {PRODUCTION!r}; choose a name like 'g2-finetune'"
        )
    return key


def generation_kind(kind: str) -> str:
    """Check a generation kind.

    Raises:
        ConstraintViolation: not one of :data:`registry.entities.GENERATION_KINDS`.
    """
    if kind not in GENERATION_KINDS:
        raise ConstraintViolation(f"unknown generation kind {kind!r}; use one of {', '.join(GENERATION_KINDS)}")
    return kind


def settable_status(status: str) -> str:
    """Check a status a caller may set directly (everything but ``production``).

    Raises:
        InvalidStatus: an unknown status, or ``production``, which only an alias move confers.
    """
    if status not in GENERATION_STATUSES:
        raise InvalidStatus(f"unknown status {status!r}; use one of {', '.join(GENERATION_STATUSES)}")
    if status == "production":
        raise InvalidStatus(
            "a generation becomes production only when the production alias moves to it; "
            "promote it through the gate instead (move_alias)"
        )
    return status


def gate_kind(kind: str) -> str:
    """Check a gate report kind.

    Raises:
        ConstraintViolation: not ``"promote"`` or ``"rollback"``.
    """
    if kind not in GATE_KINDS:
        raise ConstraintViolation(f"unknown gate report kind {kind!r}; use one of {', '.join(GATE_KINDS)}")
    return kind


def external_ids(values: Sequence[object]) -> list[str]:
    """Check a batch of gallery external ids; returns them as strings.

    Raises:
        DuplicateItem: an empty id, or an id that repeats within the batch.
    """
    ids = [str(x) for x in values]
    if any(not x for x in ids):
        raise DuplicateItem("external ids must be non-empty strings")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        repeated = {x for x in ids if x in seen or seen.add(x)}  # type: ignore[func-returns-value]
        raise DuplicateItem(f"external ids repeat within the batch: {preview(sorted(repeated))}")
    return ids


def optional_strings(values: Sequence[object | None] | None, n: int) -> list[str | None]:
    """Per-item optional strings (labels, source URIs): ``None`` stays, anything else is ``str``'d."""
    if values is None:
        return [None] * n
    return [None if v is None else str(v) for v in values]


def embedding_matrix(embeddings: object, dim: int, rows: int | None = None) -> np.ndarray:
    """Check the shape of an embedding matrix: 2-D, floating, ``dim`` columns, ``rows`` rows.

    Args:
        embeddings: array-like ``[N, dim]``; a single row ``[dim]`` is accepted when ``rows == 1``.
        dim: the workspace's embedding dimension (K-1).
        rows: the number of rows expected (the number of ids given with them), if known.

    Returns:
        The matrix as a 2-D array (not yet cast or checked for finite values).

    Raises:
        EmbeddingError: the shape, dtype, dimension or row count is wrong.
    """
    arr = np.asarray(embeddings)
    if arr.ndim == 1 and rows == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise EmbeddingError(f"embeddings must be a 2-D matrix [N, {dim}], got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise EmbeddingError(f"embeddings must be floating point, got dtype {arr.dtype}; pass float32 values")
    if arr.shape[1] != dim:
        raise EmbeddingError(
            f"embedding dimension {arr.shape[1]} does not match the workspace's {dim} "
            f"(K-1); embed with a generation of this workspace"
        )
    if rows is not None and arr.shape[0] != rows:
        raise EmbeddingError(f"{arr.shape[0]} embeddings given for {rows} ids; pass one row per id")
    return arr
