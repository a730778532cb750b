"""The FAISS structures behind the gallery index, and the kernel exact search runs on.

Index kinds (``GallerySearch(dim, index=...)``):

* ``"flat"`` (default) — ``faiss.IndexFlatIP``: exact; the right choice up to a few million rows.
* ``"hnsw"`` — ``faiss.IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT``: approximate graph search, for
  large galleries where exact search is too slow. Tune ``ef_search`` for recall, measured against a
  flat index holding the same rows (``bench/search_bench.py`` does).
* ``"ivf"`` — ``faiss.IndexIVFFlat`` (inner product): approximate, inverted lists. It trains on a
  random sample of at most ``train_size`` rows of its first batch; ``nlist`` defaults to
  ``4 * sqrt(n)`` of that batch.

Flat and HNSW sit inside ``IndexIDMap2``, so FAISS returns the gallery's own slot numbers.

Exact search picks its kernel by batch size, so it is never slower than plain numpy:

* 1 query — FAISS's SIMD kernel (dot products and a heap in one pass over the gallery; ~1.3-1.6x
  faster than numpy ``gallery @ q`` + ``argpartition``).
* 2 to ``blas_min_queries - 1`` queries — :func:`numpy_topk`: numpy matmul + ``argpartition`` on a
  zero-copy view of the FAISS storage: here FAISS's SIMD kernel costs one full pass per query and its
  BLAS kernel works in 1024-row blocks with per-block heaps, both measured slower than one GEMM.
* ``blas_min_queries`` (16) and more — FAISS's BLAS kernel (sgemm + heap): 2-6x numpy at 1000 queries.
  FAISS chooses it by ``faiss.cvar.distance_compute_blas_threshold``, which FAISS 1.15 compares with
  ``n_queries * dim`` and ships at 128000, so batches of up to ~1000 queries at dim 127 never used
  BLAS and were ~3x *slower* than numpy. :func:`set_blas_threshold` sets it to
  ``blas_min_queries * dim``; the variable is process-wide, so the last GallerySearch constructed
  decides it — which only ever changes speed, never results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np

IndexKind = Literal["flat", "hnsw", "ivf"]
INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf")


@dataclass(frozen=True)
class FaissIndex:
    """A FAISS index and the inner structures it needs alive.

    Attributes:
        index: what rows are added to, searched in and removed from; its ids are gallery slots.
        flat: the ``IndexFlatIP`` holding a flat index's vectors (None for the other kinds): the
            numpy kernel reads its storage.
        owned: inner objects the index refers to but SWIG does not keep alive on its own (the HNSW
            graph, IVF's coarse quantizer).
    """

    index: Any
    flat: Any = None
    owned: tuple[Any, ...] = ()


def new_index(kind: IndexKind, dim: int, *, hnsw_m: int, ef_construction: int, ef_search: int) -> FaissIndex | None:
    """An empty flat or HNSW index; None for IVF, which is created by :func:`train_ivf`."""
    if kind == "flat":
        inner = faiss.IndexFlatIP(dim)
        return FaissIndex(faiss.IndexIDMap2(inner), flat=inner, owned=(inner,))
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = ef_construction
        inner.hnsw.efSearch = ef_search
        return FaissIndex(faiss.IndexIDMap2(inner), owned=(inner,))
    return None  # IVF: created at training time, once nlist is known


def train_ivf(x: np.ndarray, dim: int, *, nlist: int | None, nprobe: int, train_size: int,
              seed: int) -> tuple[FaissIndex, int]:
    """An IVF index trained on (a seeded sample of at most ``train_size`` rows of) ``x``.

    Args:
        x: float32 [N, dim], L2-normalised.
        dim: embedding dimension.
        nlist: inverted lists; None picks ``4 * sqrt(N)``.
        nprobe: lists visited per query by default (capped at ``nlist``).
        train_size: largest training sample.
        seed: seed of the sample.

    Returns:
        (the trained index, the nlist it uses).

    Raises:
        ValueError: fewer rows than lists.
    """
    n = x.shape[0]
    nlist = nlist or max(1, int(4 * math.sqrt(n)))
    if n < nlist:
        raise ValueError(
            f"IVF with nlist={nlist} needs at least {nlist} training rows, got {n}; "
            "add a larger first batch, call train() with a sample, or lower nlist"
        )
    if n > train_size:
        rng = np.random.default_rng(seed)
        x = x[np.sort(rng.choice(n, train_size, replace=False))]
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.nprobe = min(nprobe, nlist)
    return FaissIndex(index, owned=(quantizer,)), nlist


def search_parameters(kind: IndexKind, index: Any, k: int, *, ef_search: int, nprobe: int) -> Any:
    """The per-call recall knobs of an approximate search (None for flat).

    Passed per call rather than set on the index, so concurrent searches never write shared state.
    """
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(ef_search, int(k)))
    if kind == "ivf":
        return faiss.SearchParametersIVF(nprobe=max(1, min(nprobe, int(index.nlist))))
    return None


def set_blas_threshold(blas_min_queries: int, dim: int) -> None:
    """Make FAISS use its BLAS kernel from ``blas_min_queries`` queries on (process-wide)."""
    # FAISS 1.15 compares n_queries * dim with this (see the module docstring).
    faiss.cvar.distance_compute_blas_threshold = int(blas_min_queries) * int(dim)


def normalise_rows(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    """A float32 C-contiguous copy of ``x`` with unit rows, so inner product is cosine similarity.

    Raises:
        ValueError: not [N, dim], not numeric, NaN / inf, or an all-zero row.
    """
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{what} must have shape [N, {dim}], got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = np.array(arr, dtype=np.float32, order="C", copy=True)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or inf")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{what} row {int(np.flatnonzero(norms[:, 0] == 0)[0])} is all zeros")
    arr /= norms
    return arr


def numpy_topk(q: np.ndarray, flat: FaissIndex, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a small batch by one matmul over a flat index's own storage.

    The views are valid only while no add or remove can reallocate the storage: the caller holds
    the index's read lock.

    Args:
        q: float32 [Q, D] normalised queries.
        flat: a flat index (``flat.flat`` set).
        k: results per query.

    Returns:
        (scores float32 [Q, k], slots int64 [Q, k]); ``-inf`` / ``-1`` beyond the stored rows.
    """
    n = int(flat.index.ntotal)
    dim = q.shape[1]
    vectors = faiss.rev_swig_ptr(flat.flat.get_xb(), n * dim).reshape(n, dim)  # [N, D] view
    slots = faiss.rev_swig_ptr(flat.index.id_map.data(), n)  # [N] view: storage row -> slot
    kk = min(k, n)
    sims = q @ vectors.T  # [Q, N]
    part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (q.shape[0], 1))
    top = np.take_along_axis(sims, part, axis=1)  # [Q, kk]
    order = np.argsort(-top, axis=1, kind="stable")
    rows = np.take_along_axis(part, order, axis=1)
    scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    positions = np.full((q.shape[0], k), -1, dtype=np.int64)
    scores[:, :kk] = np.take_along_axis(top, order, axis=1)
    positions[:, :kk] = slots[rows]
    return scores, positions
