"""GallerySearch with per-generation score maps, and following the registry's changes in place.

The reference for calibrated search is brute force: every item's cosine mapped by
``upgrader.compat.score_calibration.Calibration.apply`` (what the gate's estimate applies), then sorted.
"""

from __future__ import annotations

import numpy as np
import pytest

from registry import GalleryMatrix

from upgrader.compat.score_calibration import Calibration, ScoreMap
from upgrader.runtime.index import GallerySearch

DIM = 16
GENS = (1, 2, 3, 4)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _gallery(rng: np.random.Generator, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """n unit rows, written by generations 1..4 in turn (interleaved, like a gallery grown over time)."""
    return _unit(rng.standard_normal((n, DIM))), np.array([GENS[i % 4] for i in range(n)])


def _filled(x: np.ndarray, gens: np.ndarray, **kw) -> GallerySearch:  # type: ignore[no-untyped-def]
    gs = GallerySearch(DIM, **kw)
    gs.add(np.arange(1, len(x) + 1), [f"item-{i}" for i in range(len(x))], gens, None, x)
    return gs


CAL = Calibration(4, {1: ScoreMap(1.3, 0.12), 2: ScoreMap(0.8, 0.05), 3: ScoreMap(1.0, -0.04)})
MAPS = {g: (m.scale, m.shift) for g, m in CAL.maps.items()}


@pytest.mark.parametrize("nq", [1, 5, 40])  # FAISS SIMD, numpy matmul, FAISS BLAS kernels
def test_calibrated_flat_search_equals_brute_force_over_mapped_scores(nq: int) -> None:
    rng = np.random.default_rng(nq)
    x, gens = _gallery(rng)
    q = _unit(rng.standard_normal((nq, DIM)))
    gs = _filled(x, gens)
    scores, positions = gs.search_arrays(q, 10, MAPS)
    mapped = CAL.apply(q @ x.T, gens)  # [nq, N]
    ref = np.argsort(-mapped, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(positions, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(mapped, ref, axis=1), atol=1e-5)
    raw = gs.search_arrays(q, 10)[1]
    np.testing.assert_array_equal(raw, np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10])
    assert not np.array_equal(raw, positions)  # the maps do change what wins


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_order_within_each_generation_is_the_raw_order(kind: str) -> None:
    rng = np.random.default_rng(11)
    x, gens = _gallery(rng)
    q = _unit(rng.standard_normal((3, DIM)))
    gs = _filled(x, gens, index=kind, nlist=8, nprobe=8, ef_search=400)
    raw_s, raw_p = gs.search_arrays(q, 400)
    cal_s, cal_p = gs.search_arrays(q, 400, MAPS)
    for r in range(3):
        for g in GENS:
            raw_g = [p for p in raw_p[r] if p >= 0 and gens[p] == g]
            cal_g = [p for p in cal_p[r] if p >= 0 and gens[p] == g]
            assert cal_g == raw_g
        assert list(cal_s[r]) == sorted(cal_s[r], reverse=True)


def test_the_wrong_item_wins_raw_and_the_right_one_calibrated() -> None:
    # The case: the query generation (4) scores its own items high; an item of the query's
    # class written by generation 1 scores 0.79, an item of another class written by generation 4
    # scores 0.91. Generation 1's map (+0.15) puts the right item first.
    rng = np.random.default_rng(2)
    q = _unit(rng.standard_normal(DIM))
    other = rng.standard_normal((2, DIM)).astype(np.float32)

    def at(cos: float, noise: np.ndarray) -> np.ndarray:
        u = _unit(noise - (noise @ q) * q)  # orthogonal to q
        return _unit(cos * q + np.sqrt(1 - cos**2) * u)

    right, wrong = at(0.79, other[0]), at(0.91, other[1])
    gs = GallerySearch(DIM)
    gs.add([1, 2], ["coat-by-g1", "shirt-by-g4"], [1, 4], ["Coat", "Shirt"], np.stack([right, wrong]))
    assert gs.search(q, 1)[0][0].external_id == "shirt-by-g4"
    top = gs.search(q, 2, {1: (1.0, 0.15)})[0]
    assert [h.external_id for h in top] == ["coat-by-g1", "shirt-by-g4"]
    assert top[0].score == pytest.approx(0.94, abs=1e-5)  # the mapped score is what ranks


def test_a_score_map_that_could_reorder_a_generation_is_refused() -> None:
    x, gens = _gallery(np.random.default_rng(3), 20)
    gs = _filled(x, gens)
    for bad in ((0.0, 0.1), (-1.0, 0.0), (float("nan"), 0.0), (1.0, float("inf"))):
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            gs.search(x[:1], 3, {2: bad})


def _changes(rows: list[int], ext: list[str], gens: list[int], x: np.ndarray) -> GalleryMatrix:
    return GalleryMatrix(np.array(rows, dtype=np.int64), ext, np.array(gens, dtype=np.int64), [None] * len(ext), x)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_apply_changes_reembeds_in_place_and_deletes(kind: str) -> None:
    rng = np.random.default_rng(4)
    x, gens = _gallery(rng, 200)
    gs = _filled(x, gens, index=kind, nlist=4, nprobe=4, ef_search=200)
    fresh = _unit(rng.standard_normal((2, DIM)))
    # item-0 (gen 1) and item-1 (gen 2) are re-embedded by gen 4; rows 3 and 4 (item-2, item-3) are deleted.
    removed, added = gs.apply_changes([3, 4], _changes([1, 2], ["item-0", "item-1"], [4, 4], fresh))
    assert (removed, added, len(gs)) == (4, 2, 198)
    hits = gs.search(fresh, 1)
    assert [(h.external_id, h.generation_id, h.row_id) for h in (r[0] for r in hits)] == [
        ("item-0", 4, 1), ("item-1", 4, 2)]
    everything = {h.external_id for h in gs.search(x[:4], 198)[0]}
    assert {"item-2", "item-3"}.isdisjoint(everything) and len(everything) == 198
    counts = gs.generation_counts()
    assert counts == {1: 49, 2: 49, 3: 49, 4: 51} and sum(counts.values()) == len(gs)  # 50 each before


def test_apply_changes_checks_everything_before_changing_anything() -> None:
    x, gens = _gallery(np.random.default_rng(5), 10)
    gs = _filled(x, gens)
    bad = np.full((1, DIM), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        gs.apply_changes([5], _changes([1], ["item-0"], [4], bad))
    assert len(gs) == 10 and gs.generation_counts() == {1: 3, 2: 3, 3: 2, 4: 2}
