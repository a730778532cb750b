"""Score calibration across generations, and item-level search on a composed probe gallery."""

from __future__ import annotations

import numpy as np
import pytest

from upgrader.compat.item_search import LEFT_OUT, bootstrap, compose, cross_validated
from upgrader.compat.score_calibration import Calibration, ScoreMap, fit_calibration

CLASSES = 6


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def biased_generation(labels: np.ndarray, bias: float, rng: np.random.Generator, noise: float = 0.0) -> np.ndarray:
    """Items whose score against every query is ``0.44 * same_class + 0.6 * bias`` (+ noise).

    Axes 0..C-1 are the classes, axis C is shared with every query (so ``bias`` shifts every score of
    this generation alike), axis C+1 pads each row to unit norm.
    """
    n = len(labels)
    x = np.zeros((n, CLASSES + 2 + CLASSES), dtype=np.float64)
    x[np.arange(n), labels] = 0.55
    x[:, CLASSES] = bias
    if noise:
        x[:, CLASSES + 2:] = noise * rng.standard_normal((n, CLASSES))
    x[:, CLASSES + 1] = np.sqrt(np.clip(1.0 - (x ** 2).sum(axis=1), 0.0, None))
    return x.astype(np.float32)


def queries_for(labels: np.ndarray) -> np.ndarray:
    q = np.zeros((len(labels), CLASSES + 2 + CLASSES), dtype=np.float32)
    q[np.arange(len(labels)), labels] = 0.8  # a score of 0.44 from the class axis
    q[:, CLASSES] = 0.6  # and 0.6 * bias from the shared axis
    return unit(q)


def test_calibration_recovers_known_per_generation_offsets() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(CLASSES), 5)
    queries = queries_for(labels)
    biases = {1: 0.2, 2: 0.5, 3: 0.8}  # generation 3 is the query generation: its own items score highest
    galleries = {g: (biased_generation(labels, b, rng), labels) for g, b in biases.items()}
    cal = fit_calibration(3, queries, labels, galleries)
    q_bias = float(queries[0, CLASSES])
    for g, b in biases.items():
        m = cal.map_for(g)
        assert m.scale == pytest.approx(1.0, abs=1e-5)
        # The shift undoes exactly this generation's offset relative to the query generation's own.
        assert m.shift == pytest.approx(q_bias * (biases[3] - b), abs=1e-5)
    assert cal.map_for(3) == ScoreMap()


def test_calibration_keeps_the_order_within_a_generation_and_round_trips() -> None:
    cal = Calibration(2, {1: ScoreMap(1.5, 0.1), 3: ScoreMap(0.5, -0.2)})
    scores = np.array([[0.9, 0.1, 0.5, 0.3, 0.8]], dtype=np.float32)
    gens = np.array([1, 1, 3, 3, 2])
    mapped = cal.apply(scores, gens)
    for g in (1, 2, 3):
        sel = gens == g
        assert (np.argsort(mapped[0, sel]) == np.argsort(scores[0, sel])).all()
    assert mapped[0, 4] == scores[0, 4]  # no map: identity
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_compose_shares_a_class_out_in_proportion_and_leaves_unheld_classes_out() -> None:
    labels = np.array([0] * 10 + [1] * 4 + [2] * 3)
    gens = compose(labels, {0: {1: 300, 2: 100}, 1: {2: 5}}, new_classes={1: 9})
    assert (gens[:10] == 1).sum() == 8 and (gens[:10] == 2).sum() == 2  # 3:1 of 10, largest remainder
    assert (gens[10:14] == 2).all()  # held already: the new-class rule does not apply
    assert (gens[14:] == LEFT_OUT).all()
    assert (compose(labels, {}, new_classes={2: 7})[14:] == 7).all()


def test_cross_validated_calibration_closes_the_gap_to_a_reindex_on_a_biased_mixed_gallery() -> None:
    rng = np.random.default_rng(1)
    q_labels = np.repeat(np.arange(CLASSES), 30)
    g_labels = np.repeat(np.arange(CLASSES), 20)
    queries = unit(queries_for(q_labels) + 0.05 * rng.standard_normal((len(q_labels), CLASSES * 2 + 2)))
    # Generation 1 (old, low bias) stores classes 0-2; generation 2 (the query's, high bias) stores 3-5.
    embedded = {1: unit(biased_generation(g_labels, 0.0, rng, noise=0.1)),
                2: unit(biased_generation(g_labels, 0.8, rng, noise=0.1))}
    gens = compose(g_labels, {0: {1: 1}, 1: {1: 1}, 2: {1: 1}, 3: {2: 1}, 4: {2: 1}, 5: {2: 1}})
    known = {1: None, 2: None}
    raw = cross_validated(queries, q_labels, g_labels, gens, embedded, known, 2, calibrate=False)
    cal = cross_validated(queries, q_labels, g_labels, gens, embedded, known, 2, calibrate=True)
    reindex = cross_validated(queries, q_labels, g_labels, np.full(len(g_labels), 2), embedded, known, 2)
    assert raw.hits.mean() < 0.7  # old-generation classes lose to the biased new generation's items
    assert cal.hits.mean() > raw.hits.mean() + 0.2
    assert abs(cal.hits.mean() - reindex.hits.mean()) < 0.05
    gain = bootstrap(cal.hits - raw.hits)
    assert gain.excludes_zero() and gain.low > 0


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_queries() -> None:
    rng = np.random.default_rng(2)
    small, large = rng.random(50) < 0.7, rng.random(5000) < 0.7
    a, b = bootstrap(small.astype(float)), bootstrap(large.astype(float))
    assert a.low <= a.value <= a.high and b.low <= b.value <= b.high
    assert (b.high - b.low) < (a.high - a.low) / 5
