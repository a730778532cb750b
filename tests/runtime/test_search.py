"""GallerySearch: exact results equal brute force, incremental adds, mixed generations, approximation."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from upgrader.runtime.index import GallerySearch, Hit

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # recall is measured as the benchmark does
from search_helpers import measure_recall  # noqa: E402

DIM = 16


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _fill(gs: GallerySearch, x: np.ndarray, *, start: int = 0, gen: int = 1) -> None:
    n = x.shape[0]
    gs.add(
        np.arange(start + 1, start + n + 1),
        [f"item-{start + i}" for i in range(n)],
        np.full(n, gen),
        [f"class-{(start + i) % 5}" for i in range(n)],
        x,
    )


def _brute(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = queries @ gallery.T
    idx = np.argsort(-s, axis=1)[:, :k]
    return np.take_along_axis(s, idx, axis=1), idx


def test_flat_equals_brute_force_numpy() -> None:
    rng = np.random.default_rng(0)
    g, q = _unit(rng, 500), _unit(rng, 20)
    gs = GallerySearch(DIM)
    _fill(gs, g)
    hits = gs.search(q, 7)
    ref_scores, ref_idx = _brute(g, q, 7)
    assert [[h.external_id for h in row] for row in hits] == [[f"item-{i}" for i in r] for r in ref_idx]
    np.testing.assert_allclose([[h.score for h in row] for row in hits], ref_scores, atol=1e-5)
    first = hits[0][0]
    i = int(ref_idx[0, 0])
    assert first == Hit(f"item-{i}", first.score, 1, f"class-{i % 5}", i + 1)
    scores, positions = gs.search_arrays(q, 7)
    assert scores.shape == positions.shape == (20, 7)
    np.testing.assert_array_equal(gs.row_ids_at(positions), ref_idx + 1)


def test_unnormalised_input_is_cosine() -> None:
    rng = np.random.default_rng(1)
    g, q = _unit(rng, 100), _unit(rng, 3)
    gs = GallerySearch(DIM)
    _fill(gs, g * rng.uniform(0.1, 10, (100, 1)).astype(np.float32))
    scores, positions = gs.search_arrays(q * 5, 3)
    ref_scores, ref_idx = _brute(g, q, 3)
    np.testing.assert_array_equal(positions, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert scores.max() <= 1.0 + 1e-5


def test_incremental_add_stays_equal_to_brute_force_and_moves_the_cursor() -> None:
    rng = np.random.default_rng(2)
    g, q = _unit(rng, 300), _unit(rng, 10)
    gs = GallerySearch(DIM)
    assert gs.last_row_id == 0 and len(gs) == 0
    _fill(gs, g[:100])
    assert gs.last_row_id == 100
    _fill(gs, g[100:], start=100)
    assert len(gs) == 300 and gs.last_row_id == 300
    _, positions = gs.search_arrays(q, 5)
    np.testing.assert_array_equal(gs.row_ids_at(positions) - 1, _brute(g, q, 5)[1])


def test_mixed_generations_are_all_served() -> None:
    # Three generations wrote gallery items in one shared space; queries near each generation's
    # items get that generation's items back, and every hit says who wrote it.
    rng = np.random.default_rng(3)
    gs = GallerySearch(DIM)
    blocks = {}
    for n, gen in enumerate((1, 2, 5)):
        blocks[gen] = _unit(rng, 50)
        _fill(gs, blocks[gen], start=50 * n, gen=gen)
    assert gs.generation_counts() == {1: 50, 2: 50, 5: 50}
    queries = np.vstack([blocks[g][:4] + 0.01 * rng.standard_normal((4, DIM)) for g in (1, 2, 5)])
    hits = gs.search(queries.astype(np.float32), 3)
    top_gens = [row[0].generation_id for row in hits]
    assert top_gens == [1] * 4 + [2] * 4 + [5] * 4
    assert {h.generation_id for row in hits for h in row} == {1, 2, 5}


def test_fewer_items_than_k_and_empty_index() -> None:
    gs = GallerySearch(DIM)
    assert gs.search(np.ones(DIM, np.float32), 3) == [[]]
    _fill(gs, _unit(np.random.default_rng(4), 2))
    hits = gs.search(np.ones(DIM, np.float32), 5)
    assert len(hits) == 1 and len(hits[0]) == 2
    assert hits[0][0].score >= hits[0][1].score


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_remove_drops_items_from_results(kind: str) -> None:
    rng = np.random.default_rng(5)
    g = _unit(rng, 400)
    gs = GallerySearch(DIM, index=kind, nlist=8, nprobe=8, ef_search=200)
    _fill(gs, g)
    target = g[:3]
    before = gs.search(target, 1)
    assert [row[0].external_id for row in before] == ["item-0", "item-1", "item-2"]
    assert gs.remove(["item-0", "item-2", "no-such-item"]) == 2
    assert len(gs) == 398 and gs.last_row_id == 400
    after = gs.search(target, 5)
    assert not {"item-0", "item-2"} & {h.external_id for row in after for h in row}
    assert after[1][0].external_id == "item-1"
    # A removed external id may be added again (a re-embedded item).
    gs.add([401], ["item-0"], [2], None, g[:1])
    assert gs.search(g[:1], 1)[0][0] == Hit("item-0", pytest.approx(1.0, abs=1e-5), 2, None, 401)


def test_hnsw_recall_against_exact() -> None:
    rng = np.random.default_rng(6)
    g, q = _unit(rng, 3000), _unit(rng, 100)
    exact, approx = GallerySearch(DIM), GallerySearch(DIM, index="hnsw", ef_search=64)
    _fill(exact, g)
    _fill(approx, g)
    recall = measure_recall(approx, exact, q, 10)
    assert recall > 0.9
    assert measure_recall(exact, exact, q, 10) == 1.0


def test_ivf_trains_on_first_batch_and_finds_near_duplicates() -> None:
    rng = np.random.default_rng(7)
    g = _unit(rng, 2000)
    gs = GallerySearch(DIM, index="ivf", nprobe=4)
    assert not gs.is_trained
    _fill(gs, g[:1000])
    assert gs.is_trained and gs.nlist == int(4 * np.sqrt(1000))
    _fill(gs, g[1000:], start=1000)
    hits = gs.search(g[1500:1510], 1)
    assert [row[0].external_id for row in hits] == [f"item-{i}" for i in range(1500, 1510)]
    small = GallerySearch(DIM, index="ivf", nlist=64)
    with pytest.raises(ValueError, match="training rows"):
        _fill(small, g[:10])


def test_bad_input_raises_clear_errors() -> None:
    gs = GallerySearch(DIM)
    x = _unit(np.random.default_rng(8), 4)
    with pytest.raises(ValueError, match=r"shape \[N, 16\]"):
        gs.add([1], ["a"], [1], None, np.ones((1, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        bad = x.copy()
        bad[1, 2] = np.inf
        gs.add([1, 2, 3, 4], list("abcd"), [1] * 4, None, bad)
    with pytest.raises(ValueError, match="all zeros"):
        gs.add([1], ["a"], [1], None, np.zeros((1, DIM), np.float32))
    with pytest.raises(ValueError, match="external_ids has 3 entries for 4"):
        gs.add([1, 2, 3, 4], list("abc"), [1] * 4, None, x)
    assert len(gs) == 0  # nothing half-added
    gs.add([1, 2, 3, 4], list("abcd"), [1] * 4, None, x)
    with pytest.raises(ValueError, match="already in the index"):
        gs.add([5], ["a"], [1], None, x[:1])
    with pytest.raises(ValueError, match=r"shape \[N, 16\]"):
        gs.search(np.ones((2, 8), np.float32), 3)
    with pytest.raises(ValueError, match="k must be"):
        gs.search(x, 0)
    with pytest.raises(ValueError, match="dim"):
        GallerySearch(0)
    with pytest.raises(ValueError, match="unknown index kind"):
        GallerySearch(DIM, index="lsh")  # type: ignore[arg-type]


def test_add_while_searching_from_another_thread() -> None:
    rng = np.random.default_rng(9)
    g, q = _unit(rng, 2000), _unit(rng, 8)
    gs = GallerySearch(DIM)
    _fill(gs, g[:100])
    errors: list[BaseException] = []

    def searcher() -> None:
        try:
            for _ in range(50):
                for row in gs.search(q, 5):
                    assert len(row) == 5 and all(h.row_id >= 1 for h in row)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=searcher)
    t.start()
    for start in range(100, 2000, 100):
        _fill(gs, g[start : start + 100], start=start)
    t.join()
    assert not errors
    assert len(gs) == 2000
    _, positions = gs.search_arrays(q, 5)
    np.testing.assert_array_equal(gs.row_ids_at(positions) - 1, _brute(g, q, 5)[1])


def test_template_accuracy_scores_class_means_not_single_items() -> None:
    from upgrader.services.gallery import template_accuracy

    # Class "a" has one stray item right next to the query of "b"; its template (the mean) does not.
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    labels = ["a", "a", "b", "a"]
    queries = np.array([[0.59, 0.81], [1.0, 0.0]], dtype=np.float32)
    assert template_accuracy(queries, ["b", "a"], gallery, labels) == 1.0
    assert template_accuracy(queries, ["b", "zzz"], gallery, labels) == 1.0  # a label absent from the gallery is left out
    assert np.isnan(template_accuracy(queries, ["x", "y"], gallery, labels))
