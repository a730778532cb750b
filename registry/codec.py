"""Embedding codec: numpy matrices <-> per-row blobs.

Each embedding is stored as the raw little-endian bytes of one row, ``float32`` (4 bytes per value) or
``float16`` (2 bytes, half the disk and I/O, about 3 significant digits — plenty for cosine search on
L2-normalised vectors). The storage dtype of the *gallery* is chosen once per workspace
(``Registry.set_interface(K, embedding_dtype="float16")``); probe embeddings, which feed the gate's
numbers, are always ``float32``. Decoding always returns a C-contiguous ``float32`` matrix.

Validation happens here, before anything is written: the matrix's shape (see
:func:`registry.validation.embedding_matrix`), then only finite values in the storage dtype (checked
after the cast, since ``float16`` overflows to inf beyond ±65504).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from registry import validation
from registry.errors import EmbeddingError


@dataclass(frozen=True)
class EmbeddingCodec:
    """Encodes and decodes embeddings of one dimension in one storage dtype.

    Attributes:
        dim: the embedding dimension every row must have (the interface's K-1).
        dtype: the storage dtype, ``"float32"`` or ``"float16"``.
    """

    dim: int
    dtype: str = "float32"

    def __post_init__(self) -> None:
        validation.embedding_dtype(self.dtype)
        if self.dim < 1:
            raise EmbeddingError(f"embedding dimension must be positive, got {self.dim}")

    @property
    def row_bytes(self) -> int:
        """Size in bytes of one encoded row."""
        return self.dim * np.dtype(self.dtype).itemsize

    def validate(self, embeddings: object, *, rows: int | None = None) -> np.ndarray:
        """Check a matrix and return it cast to the storage dtype, C-contiguous, little-endian.

        Args:
            embeddings: array-like ``[N, dim]`` of floats.
            rows: the number of rows expected (the number of ids given with them), if known.

        Returns:
            The matrix in the storage dtype.

        Raises:
            EmbeddingError: not a 2-D floating matrix, wrong dimension or row count, NaN or inf.
        """
        arr = validation.embedding_matrix(embeddings, self.dim, rows)
        with np.errstate(over="ignore"):  # float16 overflow is reported below, as an EmbeddingError
            out = np.ascontiguousarray(arr, dtype=np.dtype(self.dtype).newbyteorder("<"))
        if not np.isfinite(out).all():
            bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
            if np.isfinite(arr[bad]).all():
                raise EmbeddingError(
                    f"embedding row {bad} overflows {self.dtype} (|value| > 65504); normalise the "
                    f"embeddings or use a float32 workspace"
                )
            raise EmbeddingError(f"embedding row {bad} contains NaN or inf; fix the encoder output")
        return out

    def encode(self, embeddings: object, *, rows: int | None = None) -> list[bytes]:
        """Validate a matrix and split it into one blob per row.

        Args:
            embeddings: array-like ``[N, dim]`` of floats.
            rows: the expected row count, if known.

        Returns:
            ``N`` byte strings of :attr:`row_bytes` each.
        """
        arr = self.validate(embeddings, rows=rows)
        # One tobytes() then slicing is several times faster than tobytes() per row.
        buf = arr.tobytes()
        step = self.row_bytes
        return [buf[i : i + step] for i in range(0, len(buf), step)]

    def decode(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Join row blobs into a C-contiguous ``float32`` matrix ``[N, dim]``.

        Args:
            blobs: encoded rows, as written by :meth:`encode`.

        Raises:
            EmbeddingError: a blob whose size does not match this codec (a corrupt row or a
                workspace whose dtype or dimension changed under it).
        """
        joined = b"".join(blobs)
        if len(joined) != len(blobs) * self.row_bytes or any(len(b) != self.row_bytes for b in blobs[:1]):
            raise EmbeddingError(
                f"stored embeddings do not decode as {self.dtype}[{self.dim}]: "
                f"{len(joined)} bytes for {len(blobs)} rows; the registry is corrupt or was written "
                f"by another workspace"
            )
        # astype copies, so the result owns writable memory (frombuffer over bytes is read-only).
        return self._view(joined, len(blobs)).astype(np.float32, order="C")

    def decode_raw(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Like :meth:`decode` but returns a read-only view in the storage dtype (no copy).

        For callers that copy the rows into a matrix of their own anyway.
        """
        joined = b"".join(blobs)
        if len(joined) != len(blobs) * self.row_bytes:
            raise EmbeddingError(
                f"stored embeddings do not decode as {self.dtype}[{self.dim}]: "
                f"{len(joined)} bytes for {len(blobs)} rows; the registry is corrupt or was written "
                f"by another workspace"
            )
        return self._view(joined, len(blobs))

    def _view(self, joined: bytes, rows: int) -> np.ndarray:
        return np.frombuffer(joined, dtype=np.dtype(self.dtype).newbyteorder("<")).reshape(rows, self.dim)
