"""Helpers the search benchmark (and the recall tests) share: recall of an approximate index, score maps
like a calibration's, brute-force calibrated top-k, and FAISS's thread count for the calling thread."""

from __future__ import annotations

import faiss
import numpy as np

from upgrader.runtime.index import GallerySearch, ScoreMaps


def measure_recall(approx: GallerySearch, exact: GallerySearch, queries: np.ndarray, k: int,
                   score_maps: ScoreMaps | None = None) -> float:
    """Recall@k of an approximate index against an exact one holding the same rows.

    Mean over queries of |approx top-k ∩ exact top-k| / |exact top-k|, matching rows by external id;
    with ``score_maps``, both rank by the calibrated scores.
    """
    _, pa = approx.search_arrays(queries, k, score_maps)
    _, pe = exact.search_arrays(queries, k, score_maps)
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


def bench_score_maps(generations: int, rng: np.random.Generator) -> dict[int, tuple[float, float]]:
    """Score maps for gallery generations ``1..generations-1``, queried by the newest one (which keeps the
    identity, as a calibration's reference does): scales and shifts of the size the demo's fits show."""
    return {g: (float(rng.uniform(0.8, 1.25)), float(rng.uniform(0.02, 0.15))) for g in range(1, generations)}


def calibrated_topk(gallery: np.ndarray, gens: np.ndarray, maps: dict[int, tuple[float, float]],
                    queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force calibrated top-k rows: every score mapped by its item's generation, then sorted."""
    scale = np.ones(gens.shape, np.float32)
    shift = np.zeros(gens.shape, np.float32)
    for g, (a, b) in maps.items():
        scale[gens == g], shift[gens == g] = a, b
    out = np.empty((queries.shape[0], k), np.int64)
    for s in range(0, queries.shape[0], 64):
        sc = (queries[s : s + 64] @ gallery.T) * scale + shift
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sc, part, axis=1), axis=1)
        out[s : s + 64] = np.take_along_axis(part, order, axis=1)
    return out
