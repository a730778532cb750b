"""Top-k search over the mixed-generation gallery with FAISS.

A gallery holds embeddings written by several generations; compatible generations share one space,
so a single inner-product index over all of them serves queries from the production generation. Every
row keeps its metadata (external id, generation id, label, registry row id) so a hit says which
generation wrote it. Vectors are L2-normalised on the way in (queries too), so inner product is cosine
similarity. The FAISS structure of each index kind, and the kernel exact search picks per batch size,
are in :mod:`upgrader.runtime.kernels`.

IVF needs training: it trains on the first :meth:`GallerySearch.add` (or an explicit
:meth:`GallerySearch.train`); later adds only assign to lists, so the first batch should be
representative.

Removal: flat and IVF remove in place (``remove_ids``; flat is wrapped in ``IndexIDMap2``, which
compacts the storage, O(n)). FAISS's HNSW cannot delete, so for ``"hnsw"`` :meth:`remove` rebuilds the
graph from the stored vectors — correct but as slow as the original build; batch your removals.

Thread safety: a readers-writer lock lets any number of searches run at once (FAISS's search is
const; the HNSW/IVF recall knobs travel as per-call ``SearchParameters``, never as index state), while
:meth:`add` and :meth:`remove` run alone. An add holds the write lock for its whole FAISS insertion
(seconds per million rows for flat, minutes for HNSW), so a server adds large backlogs in chunks to
keep search latency bounded.

Threads: OpenMP's thread count is a *per-thread* setting (``omp_set_num_threads`` in one thread does
not reach threads created later, such as a web server's worker pool), so ``threads=`` is applied in the
calling thread at every search and add. The default is 1: a server gets its parallelism from
concurrent requests, and a second OpenMP thread on a busy machine mostly spins in barriers (single
query latency got several times worse under load with 2 threads on 2 cores).

Incremental sync with the registry::

    gs.add_gallery(reg.load_gallery(after_row_id=gs.last_row_id))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np

from upgrader.runtime.kernels import (
    INDEX_KINDS,
    FaissIndex,
    IndexKind,
    new_index,
    normalise_rows,
    numpy_topk,
    search_parameters,
    set_blas_threshold,
    train_ivf,
)
from upgrader.runtime.rwlock import ReadWriteLock


class _GalleryLike(Protocol):
    """What :meth:`GallerySearch.add_gallery` reads (``registry.entities.GalleryMatrix`` fits)."""

    row_ids: np.ndarray
    external_ids: list[str]
    generation_ids: np.ndarray
    labels: list[str | None]
    matrix: np.ndarray


@dataclass(frozen=True)
class Hit:
    """One search result."""

    external_id: str  # the caller's id of the gallery item
    score: float  # cosine similarity, higher is nearer
    generation_id: int  # generation whose model wrote this embedding
    label: str | None  # the item's label, if it has one
    row_id: int  # registry row id of the gallery item


class GallerySearch:
    """Top-k cosine search over gallery embeddings from any number of generations.

    Args:
        dim: embedding dimension (K - 1 of the workspace interface).
        index: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"`` (approximate); see :mod:`upgrader.runtime.kernels`.
        hnsw_m: HNSW graph degree (links per node); more = better recall, more memory, slower build.
        ef_construction: HNSW build-time beam width.
        ef_search: HNSW query-time beam width (>= k is enforced per search); the recall knob.
        nlist: IVF list count; None = ``int(4 * sqrt(n))`` of the training batch (at least 1).
        nprobe: IVF lists visited per query; the recall knob.
        train_size: IVF trains on at most this many rows of the first batch (a random sample).
        threads: FAISS OpenMP threads per search / add, applied in the calling thread (default 1, see
            the module docstring); None leaves the calling thread's OpenMP setting alone.
        seed: seed of the IVF training sample.
        blas_min_queries: exact search of at least this many queries at once uses FAISS's BLAS
            kernel (sets ``faiss.cvar.distance_compute_blas_threshold``, process-wide); smaller
            batches of 2+ queries use numpy matmul (:mod:`upgrader.runtime.kernels`). 0 leaves
            FAISS's threshold.

    Raises:
        ValueError: a bad ``dim``, ``index`` or parameter.
    """

    def __init__(
        self,
        dim: int,
        *,
        index: IndexKind = "flat",
        hnsw_m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        nlist: int | None = None,
        nprobe: int = 16,
        train_size: int = 100_000,
        threads: int | None = 1,
        seed: int = 0,
        blas_min_queries: int = 16,
    ) -> None:
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if index not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {index!r}; choose one of {', '.join(INDEX_KINDS)}")
        for name, value in (("hnsw_m", hnsw_m), ("ef_construction", ef_construction),
                            ("ef_search", ef_search), ("nprobe", nprobe), ("train_size", train_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if nlist is not None and nlist < 1:
            raise ValueError(f"nlist must be >= 1, got {nlist}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if blas_min_queries < 0:
            raise ValueError(f"blas_min_queries must be >= 0, got {blas_min_queries}")
        if blas_min_queries:
            set_blas_threshold(blas_min_queries, dim)
        self.threads = None if threads is None else int(threads)
        self.blas_min_queries = int(blas_min_queries)
        self.dim = int(dim)
        self.kind: IndexKind = index
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.nlist = nlist
        self.nprobe = int(nprobe)
        self.train_size = int(train_size)
        self.seed = int(seed)
        self._lock = ReadWriteLock()
        # Row metadata lives in slot arrays: a slot is assigned at add, never reused, and is the id
        # FAISS stores, so a FAISS result maps to metadata by plain indexing.
        self._row_ids = np.empty(0, dtype=np.int64)
        self._gen_ids = np.empty(0, dtype=np.int64)
        self._external: list[str] = []
        self._labels: list[str | None] = []
        self._alive = np.empty(0, dtype=bool)
        self._slot_of: dict[str, int] = {}  # live external id -> slot
        self._last_row_id = 0
        self._faiss: FaissIndex | None = self._new_index()

    # ------------------------------------------------------------------ construction

    def _apply_threads(self) -> None:
        # Per calling thread: OpenMP keeps the count in thread-local state (module docstring).
        if self.threads is not None:
            faiss.omp_set_num_threads(self.threads)

    def _new_index(self) -> FaissIndex | None:
        return new_index(self.kind, self.dim, hnsw_m=self.hnsw_m, ef_construction=self.ef_construction,
                         ef_search=self.ef_search)

    @property
    def is_trained(self) -> bool:
        """False only for an IVF index that has not seen its training batch yet."""
        return self._faiss is not None and bool(self._faiss.index.is_trained)

    def train(self, sample: np.ndarray) -> None:
        """Train an IVF index on ``sample`` (a no-op for flat and HNSW, and once trained).

        Raises:
            ValueError: fewer rows than lists, or bad shape / values.
        """
        self._apply_threads()
        with self._lock.write():
            if self.kind != "ivf" or self._faiss is not None:
                return
            self._train_ivf(normalise_rows(sample, self.dim, "training sample"))

    def _train_ivf(self, x: np.ndarray) -> FaissIndex:
        self._faiss, self.nlist = train_ivf(x, self.dim, nlist=self.nlist, nprobe=self.nprobe,
                                            train_size=self.train_size, seed=self.seed)
        return self._faiss

    # ------------------------------------------------------------------ size and cursor

    def __len__(self) -> int:
        with self._lock.read():
            return len(self._slot_of)

    def __contains__(self, external_id: object) -> bool:
        """Whether a row with this external id is in the index (removed rows are not)."""
        return external_id in self._slot_of

    @property
    def last_row_id(self) -> int:
        """Highest registry row id ever added (0 when none): the cursor for ``load_gallery(after_row_id=)``.

        Removing rows does not lower it, so a sync never re-adds what was removed.
        """
        return self._last_row_id

    def generation_counts(self) -> dict[int, int]:
        """Generation id -> number of rows currently in the index."""
        with self._lock.read():
            gens, counts = np.unique(self._gen_ids[self._alive], return_counts=True)
            return {int(g): int(c) for g, c in zip(gens, counts)}

    # ------------------------------------------------------------------ add / remove

    def add(
        self,
        row_ids: np.ndarray | Sequence[int],
        external_ids: Sequence[str],
        generation_ids: np.ndarray | Sequence[int],
        labels: Sequence[str | None] | None,
        matrix: np.ndarray,
    ) -> int:
        """Append rows, incrementally (no rebuild). All-or-nothing: a bad batch adds nothing.

        Args:
            row_ids: int [N] registry row ids.
            external_ids: [N] unique ids, also unique against rows already in the index.
            generation_ids: int [N] generation that wrote each embedding.
            labels: [N] optional labels, or None for none.
            matrix: float [N, dim] embeddings (L2-normalised here).

        Returns:
            The number of rows added.

        Raises:
            ValueError: length mismatch, wrong dim, NaN/inf/all-zero rows, duplicate external ids,
                or (IVF) a first batch too small to train on.
        """
        x = normalise_rows(matrix, self.dim, "gallery matrix")
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
            return 0
        if len(set(ext)) != n:
            raise ValueError("external_ids repeat within the batch")
        self._apply_threads()
        with self._lock.write():
            known = [e for e in ext if e in self._slot_of]
            if known:
                raise ValueError(f"external id {known[0]!r} is already in the index ({len(known)} known)")
            index = self._faiss if self._faiss is not None else self._train_ivf(x)  # only IVF starts empty
            start = self._alive.size
            slots = np.arange(start, start + n, dtype=np.int64)
            index.index.add_with_ids(x, slots)
            self._row_ids = np.concatenate([self._row_ids, rows])
            self._gen_ids = np.concatenate([self._gen_ids, gens])
            self._alive = np.concatenate([self._alive, np.ones(n, dtype=bool)])
            self._external.extend(ext)
            self._labels.extend(labs)
            self._slot_of.update(zip(ext, slots.tolist()))
            self._last_row_id = max(self._last_row_id, int(rows.max()))
        return n

    def add_gallery(self, gallery: _GalleryLike) -> int:
        """Add a ``registry.entities.GalleryMatrix`` (or anything with the same fields)."""
        return self.add(gallery.row_ids, gallery.external_ids, gallery.generation_ids,
                        gallery.labels, gallery.matrix)

    def remove(self, external_ids: Sequence[str]) -> int:
        """Remove rows by external id; unknown ids are ignored. Returns how many were removed.

        Flat and IVF remove in place; HNSW rebuilds its graph from the stored vectors (slow: it costs
        a full build).
        """
        self._apply_threads()
        with self._lock.write():
            slots = np.array([self._slot_of[e] for e in set(external_ids) if e in self._slot_of],
                             dtype=np.int64)
            if slots.size == 0:
                return 0
            if self.kind == "hnsw":
                self._rebuild_hnsw_without(slots)
            else:
                removed = self._faiss.index.remove_ids(slots)  # type: ignore[union-attr]
                if removed != slots.size:  # pragma: no cover - FAISS contract
                    raise RuntimeError(f"FAISS removed {removed} of {slots.size} rows")
            self._alive[slots] = False
            for s in slots.tolist():
                del self._slot_of[self._external[s]]
            return int(slots.size)

    def _rebuild_hnsw_without(self, slots: np.ndarray) -> None:
        old = self._faiss.index  # type: ignore[union-attr]
        ids = faiss.vector_to_array(old.id_map).astype(np.int64)
        vectors = old.index.reconstruct_n(0, old.ntotal)
        keep = ~np.isin(ids, slots)
        fresh = self._new_index()
        assert fresh is not None  # HNSW is built empty, never trained
        if keep.any():
            fresh.index.add_with_ids(np.ascontiguousarray(vectors[keep]), ids[keep])
        self._faiss = fresh

    # ------------------------------------------------------------------ search

    def search_arrays(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch search returning arrays.

        Args:
            queries: float [N, dim] (or [dim] for one query); L2-normalised here.
            k: results per query (>= 1); fewer rows in the index leave ``-1`` positions.

        Returns:
            (scores float32 [N, k], descending; positions int64 [N, k], -1 where there is no result).
            A position is the row's slot: :meth:`row_ids_at`, :meth:`generation_ids_at` and
            :meth:`hits_from` turn positions into metadata.

        Raises:
            ValueError: bad k, wrong dim, NaN/inf/all-zero queries.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        q = normalise_rows(q, self.dim, "queries")
        self._apply_threads()
        with self._lock.read():
            fi = self._faiss
            if fi is None or fi.index.ntotal == 0:
                return (np.full((q.shape[0], k), -np.inf, dtype=np.float32),
                        np.full((q.shape[0], k), -1, dtype=np.int64))
            if self.kind == "flat" and 2 <= q.shape[0] < self.blas_min_queries:
                return numpy_topk(q, fi, int(k))
            # The recall knobs are read at every search (a caller may tune them on a live index) and
            # passed per call, so concurrent searches never write shared index state.
            params = search_parameters(self.kind, fi.index, int(k), ef_search=self.ef_search, nprobe=self.nprobe)
            scores, positions = fi.index.search(q, int(k), params=params)
        scores = scores.astype(np.float32, copy=False)
        scores[positions < 0] = -np.inf
        return scores, positions.astype(np.int64, copy=False)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-k hits per query, nearest first (see :meth:`search_arrays` for arguments)."""
        scores, positions = self.search_arrays(queries, k)
        return self.hits_from(scores, positions)

    def hits_from(self, scores: np.ndarray, positions: np.ndarray) -> list[list[Hit]]:
        """Turn :meth:`search_arrays` output into :class:`Hit` lists (dropping ``-1`` positions)."""
        out: list[list[Hit]] = []
        for srow, prow in zip(scores.tolist(), positions.tolist()):
            out.append([
                Hit(self._external[p], float(s), int(self._gen_ids[p]), self._labels[p],
                    int(self._row_ids[p]))
                for s, p in zip(srow, prow) if p >= 0
            ])
        return out

    def row_ids_at(self, positions: np.ndarray) -> np.ndarray:
        """Registry row ids of positions (``-1`` stays ``-1``)."""
        p = np.asarray(positions, dtype=np.int64)
        return np.where(p >= 0, self._row_ids[np.maximum(p, 0)] if self._row_ids.size else -1, -1)

    def generation_ids_at(self, positions: np.ndarray) -> np.ndarray:
        """Generation ids of positions (``-1`` stays ``-1``)."""
        p = np.asarray(positions, dtype=np.int64)
        return np.where(p >= 0, self._gen_ids[np.maximum(p, 0)] if self._gen_ids.size else -1, -1)

    def external_ids_at(self, positions: np.ndarray) -> list[list[str | None]]:
        """External ids of a [N, k] position array (None for ``-1``)."""
        return [[self._external[p] if p >= 0 else None for p in row]
                for row in np.asarray(positions, dtype=np.int64).tolist()]


__all__ = ["GallerySearch", "Hit"]
