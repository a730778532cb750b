"""Helpers the search benchmark (and the recall tests) share: recall of an approximate index, and
FAISS's thread count for the calling thread."""

from __future__ import annotations

import faiss
import numpy as np

from upgrader.runtime.index import GallerySearch


def measure_recall(approx: GallerySearch, exact: GallerySearch, queries: np.ndarray, k: int) -> float:
    """Recall@k of an approximate index against an exact one holding the same rows.

    Mean over queries of |approx top-k ∩ exact top-k| / |exact top-k|, matching rows by external id.
    """
    _, pa = approx.search_arrays(queries, k)
    _, pe = exact.search_arrays(queries, k)
    ea = approx.external_ids_at(pa)
    ee = exact.external_ids_at(pe)
    total = 0.0
    for a, e in zip(ea, ee):
        truth = {x for x in e if x is not None}
        if truth:
            total += len(truth & {x for x in a if x is not None}) / len(truth)
    return total / max(1, len(ee))


def set_threads(n: int) -> None:
    """Set FAISS's OpenMP thread count for the *calling thread* (OpenMP keeps it per thread).

    Threads started later keep OpenMP's default (``OMP_NUM_THREADS`` or all cores); GallerySearch
    applies its own ``threads`` at every call, so this only sets the benchmark's main thread.
    """
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    faiss.omp_set_num_threads(int(n))
