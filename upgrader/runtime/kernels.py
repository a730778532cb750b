"""The FAISS structures behind the gallery index, and the kernel exact search runs on.

Index kinds (``GallerySearch(dim, index=...)``):

* ``"flat"`` (default) — ``faiss.IndexFlatIP``: exact; the right choice up to a few million rows.
* ``"hnsw"`` — ``faiss.IndexHNSWFlat`` with ``METRIC_INNER_PRODUCT``: approximate graph search, for
  large galleries where exact search is too slow. Tune ``ef_search`` for recall, measured against a
  flat index holding the same rows (``bench/search_bench.py`` does).
* ``"ivf"`` — ``faiss.IndexIVFFlat`` (inner product): approximate, inverted lists. Its coarse
  quantizer trains on a random sample of at most ``train_size`` rows of the first batch; ``nlist``
  defaults to ``4 * sqrt(n)`` of that batch.

Each generation's rows sit in a *shard* of their own (one FAISS index per generation; IVF shards share
one quantizer): a score map ``scale * s + shift`` with ``scale > 0`` keeps the order within a
generation, so the calibrated top-k of the whole gallery is the merge (:func:`merge_topk`) of each
shard's raw top-k, mapped by that shard's one (scale, shift) pair. This is exact for flat search, costs
one pass over the gallery like a single index (measured 1.05x one index's single-query time at 1M rows
in 4 shards, where mapping every score of a numpy matmul cost 1.4x), and, for the approximate kinds,
calibrates every shard's candidates before the merge. An HNSW search visits every generation's
graph: measured on the benchmark's 100k rows in 4 shards, recall@10 0.74 at efSearch 64 where one
graph over all rows gave 0.55, for 1.1 ms a query instead of 0.3 ms. Flat and HNSW shards sit inside
``IndexIDMap2``, so FAISS returns the gallery's own slot numbers.

Removal: flat and IVF remove in place (``remove_ids``; flat shards are wrapped in ``IndexIDMap2``,
which compacts the storage, O(n)). FAISS's HNSW cannot delete, so for ``"hnsw"`` a removal rebuilds the
graph of each shard it touches from the stored vectors — correct but as slow as building that shard;
batch your removals.

Threads: OpenMP's thread count is a *per-thread* setting (``omp_set_num_threads`` in one thread does
not reach threads created later, such as a web server's worker pool), so ``GallerySearch(threads=)``
is applied in the calling thread at every search and add. The default is 1: a server gets its parallelism from
concurrent requests, and a second OpenMP thread on a busy machine mostly spins in barriers (single
query latency got several times worse under load with 2 threads on 2 cores).

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
from collections.abc import Mapping, Sequence
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


def check_parameters(dim: Any, kind: Any, *, nlist: int | None, threads: int | None, blas_min_queries: int,
                     **at_least_one: int) -> None:
    """Refuse a bad ``GallerySearch`` parameter (``at_least_one``: knobs that must be >= 1).

    Raises:
        ValueError: naming the parameter and what it must be.
    """
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    for name, value in at_least_one.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if nlist is not None and nlist < 1:
        raise ValueError(f"nlist must be >= 1, got {nlist}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if blas_min_queries < 0:
        raise ValueError(f"blas_min_queries must be >= 0, got {blas_min_queries}")


@dataclass(frozen=True)
class Batch:
    """Checked columns of gallery rows to add: ``N >= 1`` rows, external ids unique within it."""

    row_ids: np.ndarray  # int64 [N]
    external_ids: list[str]
    generation_ids: np.ndarray  # int64 [N]
    labels: list[str | None]
    matrix: np.ndarray  # float32 [N, dim], unit rows


def check_batch(row_ids: Any, external_ids: Sequence[str], generation_ids: Any,
                labels: Sequence[str | None] | None, matrix: np.ndarray, dim: int) -> Batch | None:
    """The checked columns of rows to add (None when there are none), before any lock is taken.

    Raises:
        ValueError: lengths that differ, bad embeddings (see :func:`normalise_rows`), repeated ids.
    """
    x = normalise_rows(matrix, dim, "gallery matrix")
    n = x.shape[0]
    rows = np.asarray(row_ids, dtype=np.int64).reshape(-1)
    gens = np.asarray(generation_ids, dtype=np.int64).reshape(-1)
    ext = [str(e) for e in external_ids]
    labs: list[str | None] = [None] * n if labels is None else list(labels)
    for name, length in (("row_ids", rows.size), ("external_ids", len(ext)),
                         ("generation_ids", gens.size), ("labels", len(labs))):
        if length != n:
            raise ValueError(f"{name} has {length} entries for {n} embeddings")
    if n == 0:
        return None
    if len(set(ext)) != n:
        raise ValueError("external_ids repeat within the batch")
    return Batch(rows, ext, gens, labs, x)


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


def hnsw_without(shard: FaissIndex, slots: np.ndarray, fresh: FaissIndex) -> FaissIndex:
    """``fresh`` (an empty HNSW shard) holding ``shard``'s vectors except ``slots``: HNSW cannot delete."""
    old = shard.index
    ids = faiss.vector_to_array(old.id_map).astype(np.int64)
    vectors = old.index.reconstruct_n(0, old.ntotal)
    keep = ~np.isin(ids, slots)
    if keep.any():
        fresh.index.add_with_ids(np.ascontiguousarray(vectors[keep]), ids[keep])
    return fresh


def train_quantizer(x: np.ndarray, dim: int, *, nlist: int | None, train_size: int, seed: int) -> tuple[Any, int]:
    """IVF's coarse quantizer trained on (a seeded sample of at most ``train_size`` rows of) ``x``.

    One quantizer is shared by every generation's IVF shard (:func:`ivf_shard`): it is trained once,
    on the first batch, so a new generation's first few items need no training of their own.

    Args:
        x: float32 [N, dim], L2-normalised.
        dim: embedding dimension.
        nlist: inverted lists; None picks ``4 * sqrt(N)``.
        train_size: largest training sample.
        seed: seed of the sample.

    Returns:
        (the trained ``IndexFlatIP`` holding the list centroids, the nlist it uses).

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
    trainer = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    trainer.train(x)  # k-means into the quantizer; the trainer itself is dropped
    return quantizer, nlist


def ivf_shard(quantizer: Any, dim: int, nlist: int, nprobe: int) -> FaissIndex:
    """An empty, trained IVF index over a shared, trained quantizer (it holds one generation's rows)."""
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = min(nprobe, nlist)
    return FaissIndex(index, owned=(quantizer,))


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


def shard_topk(kind: IndexKind, shard: FaissIndex, q: np.ndarray, k: int, *, ef_search: int, nprobe: int,
               blas_min_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one generation's shard: raw cosine scores (float32 [Q, k], ``-inf`` where there is no
    result) and slots (int64 [Q, k], ``-1`` there). The caller holds the index's read lock."""
    if kind == "flat" and 2 <= q.shape[0] < blas_min_queries:
        return numpy_topk(q, shard, k)
    # The recall knobs are passed per call, so concurrent searches never write shared index state.
    params = search_parameters(kind, shard.index, k, ef_search=ef_search, nprobe=nprobe)
    scores, slots = shard.index.search(q, k, params=params)
    scores = scores.astype(np.float32, copy=False)
    scores[slots < 0] = -np.inf
    return scores, slots.astype(np.int64, copy=False)


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of several shards' top-k lists, per query row (each part: scores [Q, k], slots [Q, k]).

    The sort is stable and the parts' rows are already in descending order, so two results of one
    shard never swap, not even on a tie a score map produced by rounding: a generation's results keep
    the exact order its own shard gave them.
    """
    if len(parts) == 1:
        return parts[0]
    scores = np.concatenate([s for s, _ in parts], axis=1)  # [Q, G*k]
    slots = np.concatenate([p for _, p in parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(slots, order, axis=1)


def check_score_maps(score_maps: Mapping[int, tuple[float, float]]) -> dict[int, tuple[np.float32, np.float32]]:
    """Score maps as float32 pairs, refusing one that could reorder a generation's own results.

    Raises:
        ValueError: a scale that is not positive and finite, or a shift that is not finite.
    """
    out: dict[int, tuple[np.float32, np.float32]] = {}
    for gen, (scale, shift) in score_maps.items():
        if not (math.isfinite(scale) and scale > 0 and math.isfinite(shift)):
            raise ValueError(f"the score map of generation {gen} is ({scale}, {shift}); its scale must be a "
                             "positive finite number (order within a generation must not change) and its shift finite")
        out[int(gen)] = (np.float32(scale), np.float32(shift))
    return out
