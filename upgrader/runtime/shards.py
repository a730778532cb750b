"""The per-generation FAISS shards behind :class:`~upgrader.runtime.index.GallerySearch`.

A gallery's rows live in one FAISS index per generation (:mod:`upgrader.runtime.kernels` says why),
held as a dict generation id -> index. These helpers spread a batch over the shards of its
generations, take slots out of them, and search every shard, applying each generation's score map
to its shard's scores before the shards' top-k lists are merged. Kept apart from
:mod:`upgrader.runtime.index` so that module holds the search API, its checks and its lock, and
this one what happens inside the shards. None of them locks: the index calls them under its lock,
with its current knobs (``ef_search`` and ``nprobe`` may change between searches).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from upgrader.runtime.kernels import FaissIndex, IndexKind, hnsw_without, merge_topk, shard_topk

#: Gallery generation -> ``(scale, shift)``: a score ``s`` of that generation's items ranks as
#: ``scale * s + shift`` (generations left out keep raw scores).
ScoreMaps = Mapping[int, tuple[float, float]]

#: Generation id -> the FAISS index of that generation's rows (an emptied shard is dropped).
Shards = dict[int, FaissIndex]


def add_to_shards(shards: Shards, generation_ids: np.ndarray, matrix: np.ndarray, slots: np.ndarray,
                  new_shard: Callable[[], FaissIndex]) -> None:
    """Add each row of ``matrix`` under its slot to its generation's shard, making missing shards."""
    for g in np.unique(generation_ids).tolist():
        sel = generation_ids == g
        shard = shards.get(g)
        if shard is None:
            shard = shards[g] = new_shard()
        shard.index.add_with_ids(np.ascontiguousarray(matrix[sel]), slots[sel])


def remove_from_shards(shards: Shards, kind: IndexKind, generation_ids: np.ndarray, slots: np.ndarray,
                       new_shard: Callable[[], FaissIndex]) -> None:
    """Remove live ``slots`` (of ``generation_ids``, one each) from their shards.

    Flat and IVF remove in place; HNSW rebuilds the graph of each generation it removes from.
    """
    for g in np.unique(generation_ids).tolist():
        mine = slots[generation_ids == g]
        shard = shards[g]
        if kind == "hnsw":
            shard = shards[g] = hnsw_without(shard, mine, new_shard())
        else:
            removed = shard.index.remove_ids(mine)
            if removed != mine.size:  # pragma: no cover - FAISS contract
                raise RuntimeError(f"FAISS removed {removed} of {mine.size} rows")
        if shard.index.ntotal == 0:
            del shards[g]


def search_shards(shards: Shards, kind: IndexKind, queries: np.ndarray, k: int, maps: ScoreMaps, *,
                  ef_search: int, nprobe: int, blas_min_queries: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each shard's top-k ``(scores, slots)`` for unit-row ``queries``, scores mapped where ``maps`` has
    the shard's generation (maps checked already: every scale > 0)."""
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for g, shard in shards.items():
        scores, slots = shard_topk(kind, shard, queries, k, ef_search=ef_search, nprobe=nprobe,
                                   blas_min_queries=blas_min_queries)
        if g in maps:
            scale, shift = maps[g]
            scores = scores * scale + shift  # -inf (no result) stays -inf: scale > 0
        parts.append((scores, slots))
    return parts


def merge_parts(parts: list[tuple[np.ndarray, np.ndarray]], n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k over every shard's results; with no shards, ``-inf`` scores and ``-1`` positions."""
    if not parts:
        return np.full((n_queries, k), -np.inf, dtype=np.float32), np.full((n_queries, k), -1, dtype=np.int64)
    return merge_topk(parts, k)


__all__ = ["ScoreMaps", "Shards", "add_to_shards", "merge_parts", "remove_from_shards", "search_shards"]
