"""Top-k search over the mixed-generation gallery with FAISS, optionally with per-generation score maps.

A gallery holds embeddings written by several generations; compatible generations share one space,
so queries from the production generation are compared with every item. Every row keeps its metadata
(external id, generation id, label, registry row id) so a hit says which generation wrote it. Vectors
are L2-normalised on the way in (queries too), so inner product is cosine similarity.

Rows live in one FAISS shard per generation (:mod:`upgrader.runtime.kernels` has the structures, the
kernel exact search picks per batch size, and why shards). A search may pass ``score_maps``
(generation -> ``(scale, shift)``, scale > 0): each shard's scores are mapped before the shards'
top-k lists are merged, so a query generation's bias toward its own items is corrected while the
order within a generation never changes. Without maps, results are ranked by raw cosine, as one
index over all rows would rank them.

IVF needs training: its quantizer trains on the first :meth:`GallerySearch.add` (or an explicit
:meth:`GallerySearch.train`); later adds only assign to lists, so the first batch should be
representative.

Thread safety: a readers-writer lock lets any number of searches run at once (FAISS's search is
const; the HNSW/IVF recall knobs travel as per-call ``SearchParameters``, never as index state), while
:meth:`add`, :meth:`remove` and :meth:`apply_changes` run alone. A write holds the lock for its whole
FAISS insertion (seconds per million rows for flat, minutes for HNSW), so a server adds large backlogs
in chunks to keep search latency bounded. :meth:`apply_changes` removes a re-embedded row's old
vector and adds its new one in the same hold: a search sees one or the other, never neither. A slot
(the id FAISS stores) is never reused, so its metadata never changes and :meth:`hits_from` may read it
after the lock is released.

This module holds the search API, its checks and its lock; the slot -> metadata table and
:class:`Hit` are in :mod:`upgrader.runtime.rows`, what happens inside the shards (adding, removing,
score-mapped search and merge, and ``ScoreMaps``) in :mod:`upgrader.runtime.shards`. ``Hit`` and
``ScoreMaps`` are importable from here as before.

Threads and removal: see :mod:`upgrader.runtime.kernels`. Following the registry's change sequence
with :meth:`GallerySearch.apply_changes`: see :mod:`upgrader.serving.following`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import faiss
import numpy as np

from upgrader.runtime.kernels import (
    Batch,
    FaissIndex,
    IndexKind,
    check_batch,
    check_parameters,
    check_score_maps,
    ivf_shard,
    new_index,
    normalise_rows,
    set_blas_threshold,
    train_quantizer,
)
from upgrader.runtime.rows import Hit, RowTable
from upgrader.runtime.rwlock import ReadWriteLock
from upgrader.runtime.shards import ScoreMaps, Shards, add_to_shards, merge_parts, remove_from_shards, search_shards


class _GalleryLike(Protocol):
    """What :meth:`GallerySearch.add_gallery` reads (``registry.entities.GalleryMatrix`` fits)."""

    row_ids: np.ndarray
    external_ids: list[str]
    generation_ids: np.ndarray
    labels: list[str | None]
    matrix: np.ndarray


class GallerySearch:
    """Top-k cosine search over gallery embeddings from any number of generations.

    Args:
        dim: embedding dimension (K - 1 of the workspace interface).
        index: ``"flat"`` (exact), ``"hnsw"`` or ``"ivf"`` (approximate); see :mod:`upgrader.runtime.kernels`.
        hnsw_m: HNSW graph degree (links per node); more = better recall, more memory, slower build.
        ef_construction: HNSW build-time beam width.
        ef_search: HNSW query-time beam width (>= k is enforced per search); the recall knob.
        nlist: IVF list count; None = ``int(4 * sqrt(n))`` of the training batch (at least 1).
        nprobe: IVF lists visited per query and shard; the recall knob.
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
        check_parameters(dim, index, nlist=nlist, threads=threads, blas_min_queries=blas_min_queries, hnsw_m=hnsw_m,
                         ef_construction=ef_construction, ef_search=ef_search, nprobe=nprobe, train_size=train_size)
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
        # Row metadata by slot: a slot is assigned at add, never reused, and is the id FAISS stores,
        # so a FAISS result maps to metadata by plain indexing (upgrader.runtime.rows).
        self._rows = RowTable()
        self._shards: Shards = {}  # generation id -> the FAISS index of its rows (upgrader.runtime.shards)
        self._quantizer: Any = None  # IVF: the trained coarse quantizer every shard shares

    # ------------------------------------------------------------------ construction

    def _apply_threads(self) -> None:
        # Per calling thread: OpenMP keeps the count in thread-local state (module docstring).
        if self.threads is not None:
            faiss.omp_set_num_threads(self.threads)

    def _new_shard(self) -> FaissIndex:
        if self.kind == "ivf":
            assert self._quantizer is not None and self.nlist is not None  # trained before any add
            return ivf_shard(self._quantizer, self.dim, self.nlist, self.nprobe)
        shard = new_index(self.kind, self.dim, hnsw_m=self.hnsw_m, ef_construction=self.ef_construction,
                          ef_search=self.ef_search)
        assert shard is not None
        return shard

    @property
    def is_trained(self) -> bool:
        """False only for an IVF index that has not seen its training batch yet."""
        return self.kind != "ivf" or self._quantizer is not None

    def train(self, sample: np.ndarray) -> None:
        """Train an IVF index on ``sample`` (a no-op for flat and HNSW, and once trained).

        Raises:
            ValueError: fewer rows than lists, or bad shape / values.
        """
        x = normalise_rows(sample, self.dim, "training sample")
        self._apply_threads()
        with self._lock.write():
            if not self.is_trained:
                self._train_ivf(x)

    def _train_ivf(self, x: np.ndarray) -> None:
        self._quantizer, self.nlist = train_quantizer(x, self.dim, nlist=self.nlist, train_size=self.train_size,
                                                      seed=self.seed)

    # ------------------------------------------------------------------ size and cursor

    def __len__(self) -> int:
        with self._lock.read():
            return len(self._rows)

    def __contains__(self, external_id: object) -> bool:
        """Whether a row with this external id is in the index (removed rows are not)."""
        return external_id in self._rows

    @property
    def last_row_id(self) -> int:
        """Highest registry row id ever added (0 when none). Removing rows does not lower it."""
        return self._rows.last_row_id

    def generation_counts(self) -> dict[int, int]:
        """Generation id -> number of rows currently in the index."""
        with self._lock.read():
            return {g: int(shard.index.ntotal) for g, shard in sorted(self._shards.items()) if shard.index.ntotal}

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
        batch = check_batch(row_ids, external_ids, generation_ids, labels, matrix, self.dim)
        if batch is None:
            return 0
        self._apply_threads()
        with self._lock.write():
            known = self._rows.known(batch.external_ids)
            if known:
                raise ValueError(f"external id {known[0]!r} is already in the index ({len(known)} known)")
            self._insert(batch)
        return len(batch.external_ids)

    def add_gallery(self, gallery: _GalleryLike) -> int:
        """Add a ``registry.entities.GalleryMatrix`` (or anything with the same fields)."""
        return self.add(gallery.row_ids, gallery.external_ids, gallery.generation_ids,
                        gallery.labels, gallery.matrix)

    def apply_changes(self, deleted_row_ids: np.ndarray | Sequence[int], upserts: _GalleryLike) -> tuple[int, int]:
        """Follow the registry's change sequence: drop deleted rows, then add or replace ``upserts``.

        An upsert whose external id the index holds replaces that row (a re-embedded item arrives
        with its new generation and embedding; an id deleted and added again arrives as a new row).
        Everything happens in one hold of the write lock, so a search sees each item before or after
        the change, never missing. All-or-nothing for bad input (checked before anything changes).

        Returns:
            (rows removed, rows added).

        Raises:
            ValueError: as :meth:`add` (external ids repeating within ``upserts``, bad embeddings).
        """
        batch = check_batch(upserts.row_ids, upserts.external_ids, upserts.generation_ids,
                            upserts.labels, upserts.matrix, self.dim)
        gone = np.asarray(deleted_row_ids, dtype=np.int64).reshape(-1)
        self._apply_threads()
        with self._lock.write():
            if batch is not None and not self.is_trained:
                self._train_ivf(batch.matrix)  # before anything is removed: a failure changes nothing
            slots = self._rows.live_slots_of_rows(gone) if gone.size else np.empty(0, np.int64)
            if batch is not None:
                slots = np.union1d(slots, self._rows.slots_of(batch.external_ids))
            self._delete_slots(slots.astype(np.int64))
            if batch is not None:
                self._insert(batch)
        return int(slots.size), 0 if batch is None else len(batch.external_ids)

    def remove(self, external_ids: Sequence[str]) -> int:
        """Remove rows by external id; unknown ids are ignored. Returns how many were removed.

        Flat and IVF remove in place; HNSW rebuilds the graph of each generation it removes from.
        """
        self._apply_threads()
        with self._lock.write():
            slots = self._rows.slots_of(set(external_ids))
            self._delete_slots(slots)
            return int(slots.size)

    def _insert(self, batch: Batch) -> None:
        """Add a checked batch to the shards of its generations (write lock held)."""
        gens, x = batch.generation_ids, batch.matrix
        if not self.is_trained:
            self._train_ivf(x)  # only IVF starts untrained; a too-small batch raises before any change
        add_to_shards(self._shards, gens, x, self._rows.next_slots(len(batch.external_ids)), self._new_shard)
        self._rows.append(batch)

    def _delete_slots(self, slots: np.ndarray) -> None:
        """Remove live slots from their shards (write lock held); an emptied shard is dropped."""
        if slots.size == 0:
            return
        remove_from_shards(self._shards, self.kind, self._rows.generations_of(slots), slots, self._new_shard)
        self._rows.kill(slots)

    # ------------------------------------------------------------------ search

    def search_arrays(self, queries: np.ndarray, k: int,
                      score_maps: ScoreMaps | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Batch search returning arrays.

        Args:
            queries: float [N, dim] (or [dim] for one query); L2-normalised here.
            k: results per query (>= 1); fewer rows in the index leave ``-1`` positions.
            score_maps: generation -> ``(scale, shift)`` applied to that generation's cosine scores
                before the generations' results are merged (None or missing: raw scores).

        Returns:
            (scores float32 [N, k], descending, mapped where a map applies; positions int64 [N, k],
            -1 where there is no result). A position is the row's slot: :meth:`row_ids_at`,
            :meth:`generation_ids_at` and :meth:`hits_from` turn positions into metadata.

        Raises:
            ValueError: bad k, wrong dim, NaN/inf/all-zero queries, a scale that is not positive.
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        maps = check_score_maps(score_maps) if score_maps else {}
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        q = normalise_rows(q, self.dim, "queries")
        k = int(k)
        self._apply_threads()
        with self._lock.read():
            parts = search_shards(self._shards, self.kind, q, k, maps, ef_search=self.ef_search, nprobe=self.nprobe,
                                  blas_min_queries=self.blas_min_queries)
        return merge_parts(parts, q.shape[0], k)

    def search(self, queries: np.ndarray, k: int, score_maps: ScoreMaps | None = None) -> list[list[Hit]]:
        """Top-k hits per query, nearest first (see :meth:`search_arrays` for arguments)."""
        scores, positions = self.search_arrays(queries, k, score_maps)
        return self.hits_from(scores, positions)

    def hits_from(self, scores: np.ndarray, positions: np.ndarray) -> list[list[Hit]]:
        """Turn :meth:`search_arrays` output into :class:`Hit` lists (dropping ``-1`` positions)."""
        return self._rows.hits_from(scores, positions)

    def row_ids_at(self, positions: np.ndarray) -> np.ndarray:
        """Registry row ids of positions (``-1`` stays ``-1``)."""
        return self._rows.row_ids_at(positions)

    def generation_ids_at(self, positions: np.ndarray) -> np.ndarray:
        """Generation ids of positions (``-1`` stays ``-1``)."""
        return self._rows.generation_ids_at(positions)

    def external_ids_at(self, positions: np.ndarray) -> list[list[str | None]]:
        """External ids of a [N, k] position array (None for ``-1``)."""
        return self._rows.external_ids_at(positions)


__all__ = ["GallerySearch", "Hit", "ScoreMaps"]
