"""GallerySearch as the server uses it: exact = brute-force numpy at every batch size, concurrent
searches during adds, per-thread OpenMP count, approximate recall measured."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from upgrader.runtime.index import GallerySearch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # recall is measured as the benchmark does
from search_helpers import measure_recall  # noqa: E402

DIM = 127  # the interface of K = 128, as the benchmark uses


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _add(gs: GallerySearch, x: np.ndarray, start: int, gen: int) -> None:
    n = len(x)
    gs.add(np.arange(start + 1, start + n + 1), [f"id-{start + i}" for i in range(n)], np.full(n, gen), None, x)


def _numpy_topk(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = queries @ gallery.T  # [Q, N]
    idx = np.argsort(-s, axis=1)[:, :k]
    return np.take_along_axis(s, idx, axis=1), idx


@pytest.mark.parametrize("nq", [1, 3, 15, 16, 50])  # each kernel: FAISS SIMD, numpy matmul, FAISS BLAS
def test_exact_search_equals_numpy_brute_force(nq: int) -> None:
    rng = np.random.default_rng(nq)
    chunks = [_unit(rng, 1500), _unit(rng, 700), _unit(rng, 800)]  # three generations, added incrementally
    gs = GallerySearch(DIM)
    start = 0
    for gen, x in enumerate(chunks, 1):
        _add(gs, x, start, gen)
        start += len(x)
    gallery = np.concatenate(chunks)
    queries = _unit(rng, nq)
    scores, positions = gs.search_arrays(queries, 10)
    ref_scores, ref_idx = _numpy_topk(gallery, queries, 10)
    np.testing.assert_array_equal(gs.row_ids_at(positions) - 1, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    hits = gs.search(queries, 10)
    expected_gen = np.searchsorted(np.cumsum([len(c) for c in chunks]), ref_idx, side="right") + 1
    assert [[h.generation_id for h in row] for row in hits] == expected_gen.tolist()


@pytest.mark.parametrize("nq", [1, 5, 20])
def test_exact_search_after_removals_and_with_k_above_size(nq: int) -> None:
    rng = np.random.default_rng(11)
    gallery = _unit(rng, 300)
    gs = GallerySearch(DIM)
    _add(gs, gallery, 0, 1)
    gone = [f"id-{i}" for i in range(0, 300, 3)]
    assert gs.remove(gone) == 100 and "id-0" not in gs and "id-1" in gs
    keep = np.array([i for i in range(300) if i % 3])
    queries = _unit(rng, nq)
    _, ref = _numpy_topk(gallery[keep], queries, 7)
    _, positions = gs.search_arrays(queries, 7)
    np.testing.assert_array_equal(gs.row_ids_at(positions) - 1, keep[ref])
    scores, positions = gs.search_arrays(queries, 250)  # more than the 200 rows left
    assert (positions[:, :200] >= 0).all() and (positions[:, 200:] == -1).all()
    assert np.isneginf(scores[:, 200:]).all()


def test_searches_run_while_rows_are_added() -> None:
    rng = np.random.default_rng(7)
    base, extra = _unit(rng, 3000), _unit(rng, 3000)
    queries = _unit(rng, 8)
    gs = GallerySearch(DIM)
    _add(gs, base, 0, 1)
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            for _ in range(200):  # bounded
                if stop.is_set():
                    return
                scores, positions = gs.search_arrays(queries, 5)
                assert (positions >= 0).all() and np.isfinite(scores).all()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    for s in range(0, len(extra), 500):
        _add(gs, extra[s : s + 500], 3000 + s, 2)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors[0]
    assert len(gs) == 6000 and gs.generation_counts() == {1: 3000, 2: 3000}
    _, ref_idx = _numpy_topk(np.concatenate([base, extra]), queries, 5)
    np.testing.assert_array_equal(gs.row_ids_at(gs.search_arrays(queries, 5)[1]) - 1, ref_idx)


def test_thread_count_applies_in_the_calling_thread() -> None:
    # OpenMP keeps the count per thread: a server's worker threads would otherwise use all cores.
    gs = GallerySearch(DIM, threads=1)
    _add(gs, _unit(np.random.default_rng(0), 100), 0, 1)
    seen: list[int] = []

    def worker() -> None:
        faiss.omp_set_num_threads(2)
        gs.search_arrays(_unit(np.random.default_rng(1), 1), 3)
        seen.append(faiss.omp_get_max_threads())

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [1]


def test_hnsw_recall_is_measured_against_exact() -> None:
    rng = np.random.default_rng(3)
    gallery = _unit(rng, 4000)
    near = gallery[rng.integers(0, 4000, 100)] + 0.05 * rng.standard_normal((100, DIM)).astype(np.float32)
    flat, hnsw = GallerySearch(DIM), GallerySearch(DIM, index="hnsw", ef_search=128)
    _add(flat, gallery, 0, 1)
    _add(hnsw, gallery, 0, 1)
    recall = measure_recall(hnsw, flat, near, 10)
    assert 0.8 <= recall <= 1.0
    hnsw.ef_search = 512  # the knob is read per search and raises recall
    assert measure_recall(hnsw, flat, near, 10) >= recall
