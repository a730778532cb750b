"""Shifts fitted to the search: probe Recall@1 on a composed gallery, against the moment fit."""

from __future__ import annotations

import numpy as np
import pytest

from upgrader.compat.item_search import compose, cross_validated
from upgrader.compat.score_calibration import Calibration, ScoreMap, fit_calibration
from upgrader.compat.search_calibration import fit_search_shifts
from upgrader.compat.served import serving_calibration

CLASSES = 6
DIM = CLASSES + 2 + CLASSES


def _generation(labels: np.ndarray, weight: float, bias: float, rng: np.random.Generator) -> np.ndarray:
    """Items scoring ``0.8 * weight`` (own class) + ``0.6 * bias`` (every query) + noise against a query.

    Axes 0..C-1 are the classes, axis C is shared with every query, axis C+1 pads to unit norm.
    """
    x = np.zeros((len(labels), DIM))
    x[np.arange(len(labels)), labels] = weight
    x[:, CLASSES] = bias
    x[:, CLASSES + 2:] = 0.25 * rng.standard_normal((len(labels), CLASSES))
    x[:, CLASSES + 1] = np.sqrt(np.clip(1.0 - (x ** 2).sum(axis=1), 0.0, None))
    return x.astype(np.float32)


def _world(seed: int = 0):
    """Query generation 2 and an old generation 1 whose items score lower overall (bias 0.3 vs 0.6)
    and lower still on their own class (weight 0.3 vs 0.55): aligning the best wrong matches (the
    moment fit) undoes the first and not the second."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(CLASSES), 40)
    q = np.zeros((len(labels), DIM))
    q[np.arange(len(labels)), labels] = 0.8
    q[:, CLASSES] = 0.6
    q[:, CLASSES + 2:] = 0.3 * rng.standard_normal((len(labels), CLASSES))
    queries = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    return labels, queries, {1: _generation(labels, 0.3, 0.3, rng), 2: _generation(labels, 0.55, 0.6, rng)}


HOLDERS = {c: {1 if c < 3 else 2: 40} for c in range(CLASSES)}  # classes 0-2 by gen 1, 3-5 by gen 2


def test_the_fit_raises_probe_recall_and_keeps_order_within_a_generation() -> None:
    labels, queries, embedded = _world()
    gens = compose(labels, HOLDERS)
    gallery = np.where((gens == 1)[:, None], embedded[1], embedded[2])
    cal = fit_search_shifts(2, queries, labels, gallery, labels, gens)
    assert set(cal.maps) == {1} and cal.map_for(1).scale == 1.0 and cal.map_for(2) == ScoreMap()
    assert cal.map_for(1).shift > 0  # the old generation's items are lifted
    raw = cross_validated(queries, labels, labels, gens, embedded, {}, 2, calibrate=False).hits.mean()
    fitted = cross_validated(queries, labels, labels, gens, embedded, {}, 2).hits.mean()  # search: the default
    moments = cross_validated(queries, labels, labels, gens, embedded, {}, 2, method="shift").hits.mean()
    assert raw < moments < fitted  # measured: 73.8% < 95.8% < 97.1%
    scores = np.array([[0.1, 0.9, 0.5]], dtype=np.float32)
    mapped = cal.apply(scores, np.array([1, 1, 2]))
    assert mapped[0, 1] > mapped[0, 0]  # one generation's order never changes


def test_fallback_maps_cover_generations_the_composed_gallery_lacks() -> None:
    labels, queries, embedded = _world()
    gens = np.ones(len(labels), dtype=np.int64)  # only gen 1 stores items: nothing to fit against
    moments = Calibration(2, {1: ScoreMap(1.0, 0.07), 3: ScoreMap(1.0, -0.02)})
    cal = fit_search_shifts(2, queries, labels, embedded[1], labels, gens, fallback=moments)
    assert cal.maps == moments.maps
    # the query generation stores nothing, gens 1 and 3 do: the fit is relative to the larger (3, by
    # the tie on counts), whose moment offset puts the fitted shifts on the query generation's scale
    both = {1: embedded[1], 3: embedded[2]}
    gens = compose(labels, {c: {1 if c < 3 else 3: 40} for c in range(CLASSES)})
    gallery = np.where((gens == 1)[:, None], both[1], both[3])
    cal = fit_search_shifts(2, queries, labels, gallery, labels, gens, fallback=moments)
    alone = fit_search_shifts(2, queries, labels, gallery, labels, gens)
    assert cal.map_for(3).shift == pytest.approx(-0.02) and alone.map_for(3) == ScoreMap()
    assert cal.map_for(1).shift == pytest.approx(alone.map_for(1).shift - 0.02) and alone.map_for(1).shift > 0


def test_serving_stores_the_search_fit_and_the_moment_fits_stay_reachable() -> None:
    labels, queries, embedded = _world()
    args = (2, [1], labels, labels, {2: queries}, embedded, {}, {c: h for c, h in HOLDERS.items() if c < 3})
    served = serving_calibration(*args)  # candidate 2 writes classes 3-5 once it serves
    gens = compose(labels, HOLDERS)
    gallery = np.where((gens == 1)[:, None], embedded[1], embedded[2])
    assert served == fit_search_shifts(2, queries, labels, gallery, labels, gens,
                                       fallback=serving_calibration(*args, method="shift"))
    assert serving_calibration(*args, method="shift") == fit_calibration(2, queries, labels,
                                                                         {g: (e, labels) for g, e in embedded.items()})
    with pytest.raises(ValueError, match="calibration method"):
        cross_validated(queries, labels, labels, gens, embedded, {}, 2, method="nope")
