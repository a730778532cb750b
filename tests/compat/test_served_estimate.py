"""Item-level search on the gallery after the move: the estimate, its intervals and the gate's rules on it.

Synthetic generations built by hand with numpy, so each verdict is known before it is computed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from upgrader.compat import gate
from upgrader.compat.item_search import LEFT_OUT, bootstrap, compose, cross_validated
from upgrader.compat.matrix import PairEvaluator, per_query_values
from upgrader.compat.metrics import METRICS, pair_metrics
from upgrader.compat.served import composition_after, estimate_served, item_metric, serving_calibration

SHA = "ab" * 32
DIM, PER_CLASS = 8, 60

# --------------------------------------------------------------------------------------------------
# A candidate whose new classes crowd the old ones
# --------------------------------------------------------------------------------------------------
#
# Six classes. Gen 1 (production) learnt 0-3 on axes e0..e3 and lumps the classes it never learnt
# (4, 5) onto e6; it stores classes 0-3 in the real gallery. Gen 2 learnt 0-5 with cleaner features,
# but puts its new classes right next to old ones: 4 at e0 + 0.4 e4, 5 at e1 + 0.4 e5. Pairwise it is
# compatible (it reads gen 1's gallery of 0-3 better than gen 1 does) and an improvement; once its
# items of 4 and 5 join the gallery, queries of 0 and 1 land on them, so search after the move is
# worse than with gen 3, which is gen 2 with 4 and 5 on their own axes.


def _world() -> dict:
    rng = np.random.default_rng(0)
    ql = np.repeat(np.arange(6), PER_CLASS)
    gl = np.repeat(np.arange(6), PER_CLASS)[::-1].copy()
    axes = np.eye(DIM)
    old = axes[:6].copy()
    old[4] = old[5] = axes[6]
    crowded = axes[:6].copy()
    crowded[4], crowded[5] = axes[0] + 0.4 * axes[4], axes[1] + 0.4 * axes[5]

    def embed(centres: np.ndarray, labels: np.ndarray, sigma: float) -> np.ndarray:
        c = centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True)
        x = c + sigma * rng.standard_normal((labels.size, DIM))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    q = {1: embed(old, ql, 0.3), 2: embed(crowded, ql, 0.15), 3: embed(axes[:6], ql, 0.15)}
    g = {1: embed(old, gl, 0.3), 2: embed(crowded, gl, 0.15), 3: embed(axes[:6], gl, 0.15)}
    return {"ql": ql, "gl": gl, "q": q, "g": g, "holders": {v: {1: 40} for v in range(4)}}


@pytest.fixture(scope="module")
def world() -> dict:
    return _world()


def _inputs(world: dict, candidate: int, **kw) -> gate.GateInputs:
    fields = dict(
        query_labels=world["ql"], gallery_labels=world["gl"], query_embeddings=world["q"],
        gallery_embeddings=world["g"], candidate=candidate, live=[1], production=1, registered_sha256=SHA,
        artifact_sha256=SHA, classes={1: [0, 1, 2, 3], candidate: [0, 1, 2, 3, 4, 5]},
        gallery_holders=world["holders"],
    )
    return gate.GateInputs(**{**fields, **kw})


def _noisy(world: dict, sigma: float = 0.45) -> dict:
    """``world`` plus gen 4: gen 1's features with noisier embeddings, so it reads gen 1's gallery worse."""
    rng = np.random.default_rng(5)
    axes = np.eye(DIM)
    old = axes[:6].copy()
    old[4] = old[5] = axes[6]

    def embed(labels: np.ndarray) -> np.ndarray:
        c = old[labels] / np.linalg.norm(old[labels], axis=1, keepdims=True)
        x = c + sigma * rng.standard_normal((labels.size, DIM))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return {**world, "q": {**world["q"], 4: embed(world["ql"])}, "g": {**world["g"], 4: embed(world["gl"])}}


def test_the_gate_refuses_a_candidate_whose_search_on_the_gallery_as_it_stands_regresses(world: dict) -> None:
    v = gate.evaluate_candidate(_inputs(_noisy(world), 4), gate.GateConfig(require_improvement=False))
    assert not v.passed
    reg = next(c for c in v.checks if c.kind == "regression")
    assert not reg.passed and reg.comparison == ">=" and reg.metric == "recall_at_1"
    assert (reg.query_gen, reg.reference_gen) == (4, 1)
    est = v.served
    assert est is not None and est.regression is not None
    assert est.regression.classes == (0, 1, 2, 3)
    assert reg.value == est.regression.candidate.recall_at_1.value
    assert reg.threshold == est.regression.production_now.recall_at_1.value
    assert reg.value < reg.threshold - 0.05
    d = est.regression.difference
    assert d.value == pytest.approx(reg.value - reg.threshold) and d.high < 0  # the probe set can tell
    assert (
        f"gen 4 regresses search on the gallery as it stands (classes 0-3): item-level recall@1 "
        f"{reg.value:.3f} < production gen 1's {reg.threshold:.3f} (difference "
        f"{d.value:+.3f}, 95% interval {d.low:+.3f} to {d.high:+.3f}); allowing the regression waives this rule"
    ) in v.reasons


def test_new_classes_that_crowd_old_ones_cost_search_after_the_move_but_are_no_regression(world: dict) -> None:
    # Gen 2's new classes 4 and 5 sit next to 0 and 1: once its items join the gallery, search gets
    # harder (the item-level estimate after the move says so), but on the gallery as it stands gen 2
    # reads the served classes at least as well as production: the new classes' price, not a regression.
    crowded = gate.evaluate_candidate(_inputs(world, 2))
    apart = gate.evaluate_candidate(_inputs(world, 3))
    assert crowded.passed and apart.passed, (crowded.explain(), apart.explain())
    assert next(c for c in crowded.checks if c.kind == "regression").passed
    assert crowded.served.calibrated.recall_at_1.value < apart.served.calibrated.recall_at_1.value
    assert "item-level search after the move (recall@1)" in apart.explain()


def test_the_no_regression_rule_is_waived_by_allow_regression_and_the_report_says_so(world: dict) -> None:
    v = gate.evaluate_candidate(_inputs(world, 2), gate.GateConfig(allow_regression=True))
    assert v.passed, v.explain()
    assert "regression" not in {c.kind for c in v.checks}
    waived = next(n for n in v.notes if n.startswith("no-regression rule waived"))
    assert "gen 2 recall@1" in waived and "production gen 1" in waived and "classes 0-3" in waived
    body = json.loads(json.dumps(v.to_dict()))
    assert body["allow_regression"] is True and body["served"]["regression"]["distinguishable"] is True
    assert gate.evaluate_candidate(_inputs(world, 2)).to_dict()["allow_regression"] is False


def test_a_first_generation_has_nothing_to_regress_from(world: dict) -> None:
    v = gate.evaluate_candidate(_inputs(world, 1, live=[], production=None, gallery_holders={},
                                        classes={1: [0, 1, 2, 3]}))
    assert v.passed and v.checks == ()
    assert v.served is not None and v.served.regression is None
    assert "no-regression rule: no production generation: nothing to regress from" in v.notes
    # Nothing stored yet: the probe gallery is the candidate's own, so calibrated = raw = re-index.
    assert v.served.new_classes == (0, 1, 2, 3) and v.served.gap.value == 0.0
    assert v.served.calibrated == v.served.raw == v.served.reindex


def test_the_gallery_after_the_move_keeps_the_holders_in_proportion_and_adds_the_new_classes(world: dict) -> None:
    holders = {0: {1: 30, 3: 10}, 1: {1: 5}, 2: {1: 5}, 3: {1: 5}}
    est = estimate_served(2, 1, [1, 3], world["ql"], world["gl"], world["q"], world["g"],
                          {1: [0, 1, 2, 3], 2: list(range(6)), 3: list(range(6))}, holders)
    assert est.composition == {0: {1: 45, 3: 15}, 1: {1: 60}, 2: {1: 60}, 3: {1: 60}, 4: {2: 60}, 5: {2: 60}}
    assert est.new_classes == (4, 5)
    assert est.ownership() == "class 0 by gen 1+3, classes 1,2,3 by gen 1, classes 4,5 by gen 2"
    assert composition_after(2, world["gl"], holders, range(6)) == (est.composition, (4, 5))
    # A class the candidate never learnt and nobody holds is left out of the probe gallery.
    narrow = estimate_served(2, 1, [1], world["ql"], world["gl"], world["q"], world["g"],
                             {1: [0, 1, 2, 3], 2: [0, 1, 2, 3, 4]}, world["holders"])
    assert set(narrow.composition) == {0, 1, 2, 3, 4} and narrow.calibrated.queries == 5 * PER_CLASS


def test_every_interval_brackets_its_estimate_and_the_gap_is_paired(world: dict) -> None:
    est = gate.evaluate_candidate(_inputs(world, 2)).served
    assert est is not None and est.regression is not None
    for summary in (est.calibrated, est.raw, est.reindex, est.regression.candidate, est.regression.production_now):
        for iv in (summary.recall_at_1, summary.map):
            assert iv.low <= iv.value <= iv.high
            assert 0.0 <= iv.low and iv.high <= 1.0
    assert est.gap.low <= est.gap.value <= est.gap.high
    assert est.gap.value == pytest.approx(est.calibrated.recall_at_1.value - est.reindex.recall_at_1.value)
    assert est.regression.candidate.queries == est.regression.production_now.queries == 4 * PER_CLASS
    # The stored form carries the same numbers.
    d = json.loads(json.dumps(est.to_dict()))
    assert d["calibrated"]["recall_at_1"]["value"] == est.value and d["queries"] == 6 * PER_CLASS
    assert d["composition"]["4"] == {"2": PER_CLASS} and d["new_classes"] == [4, 5]


def test_the_estimate_is_scored_with_the_calibration_serving_fits_on_held_out_queries(world: dict) -> None:
    v = gate.evaluate_candidate(_inputs(world, 2))
    assert v.calibration is not None and v.calibration.query_gen == 2
    served = serving_calibration(2, [1, 2], world["ql"], world["gl"], world["q"], world["g"],
                                 {1: [0, 1, 2, 3], 2: list(range(6))}, world["holders"])
    assert v.calibration == served and set(served.maps) == {1}  # the candidate is the reference
    assert v.to_dict()["calibration"] == served.to_dict()
    # Recompute the calibrated number by hand: same folds, the serving fit's galleries.
    gens = compose(world["gl"], world["holders"], {4: 2, 5: 2})
    scores = cross_validated(world["q"][2], world["ql"], world["gl"], gens, world["g"],
                             {1: frozenset(range(4)), 2: frozenset(range(6))}, 2, fit_gens=[1, 2])
    assert v.served is not None and v.served.value == pytest.approx(scores.hits.mean())
    raw = cross_validated(world["q"][2], world["ql"], world["gl"], gens, world["g"], {}, 2, calibrate=False)
    assert v.served.raw.recall_at_1.value == pytest.approx(raw.hits.mean())
    reindex = np.where(gens != LEFT_OUT, 2, LEFT_OUT)
    again = cross_validated(world["q"][2], world["ql"], world["gl"], reindex, world["g"], {}, 2, calibrate=False)
    assert v.served.reindex.recall_at_1.value == pytest.approx(again.hits.mean())


def test_mixed_tolerance_bounds_the_item_level_gap_to_a_re_index(world: dict) -> None:
    base = gate.evaluate_candidate(_inputs(world, 2), gate.GateConfig(allow_regression=True))
    est = base.served
    assert est is not None and est.gap.value < -0.02
    strict = gate.evaluate_candidate(_inputs(world, 2), gate.GateConfig(allow_regression=True, mixed_tolerance=0.0))
    assert not strict.passed
    mixed = next(c for c in strict.checks if c.kind == "mixed")
    assert not mixed.passed and mixed.metric == "recall_at_1" and mixed.interval == est.gap
    assert mixed.value == est.value and mixed.threshold == pytest.approx(est.reindex.recall_at_1.value)
    assert strict.reasons[0].startswith(
        f"gen 2 on the gallery after the move: item-level recall@1 {est.value:.3f} (calibrated) < "
        f"{est.reindex.recall_at_1.value:.3f} after a re-index - tolerance 0.000 (classes 0-3 by gen 1, "
        "classes 4,5 by gen 2; difference"
    )
    loose = gate.GateConfig(allow_regression=True, mixed_tolerance=round(-est.gap.value + 0.01, 3))
    assert gate.evaluate_candidate(_inputs(world, 2), loose).passed
    assert "mixed" not in {c.kind for c in base.checks}  # without a tolerance it is only reported


def test_the_rules_take_map_when_map_is_the_primary_metric(world: dict) -> None:
    assert item_metric("mean_ap") == "map" and item_metric("template_top1") == "recall_at_1"
    v = gate.evaluate_candidate(_inputs(world, 3), gate.GateConfig(primary_metric="mean_ap"))
    reg = next(c for c in v.checks if c.kind == "regression")
    assert reg.metric == "map" and v.served is not None and v.served.regression is not None
    assert reg.value == v.served.regression.candidate.map.value


# --------------------------------------------------------------------------------------------------
# Pairwise differences, paired by probe query
# --------------------------------------------------------------------------------------------------


def test_per_query_values_average_to_the_pair_metric(world: dict) -> None:
    for metric in METRICS:
        for classes in (None, frozenset({0, 1, 2, 3})):
            values = per_query_values(world["q"][2], world["ql"], world["g"][1], world["gl"], classes, metric)
            expected = pair_metrics(world["q"][2], world["ql"], world["g"][1], world["gl"], classes).get(metric)
            assert values.mean() == pytest.approx(expected, abs=1e-12)


def test_each_pairwise_check_carries_the_interval_of_its_paired_difference(world: dict) -> None:
    v = gate.evaluate_candidate(_inputs(world, 3))
    comp = next(c for c in v.checks if c.kind == "compatibility")
    assert comp.interval is not None
    assert comp.interval.value == pytest.approx(comp.value - comp.threshold)  # margin 0
    assert comp.interval.low <= comp.interval.value <= comp.interval.high
    ev = PairEvaluator(world["ql"], world["gl"], world["q"], world["g"], {1: [0, 1, 2, 3], 3: list(range(6))})
    cls = frozenset({0, 1, 2, 3})
    by_hand = bootstrap(ev.per_query(3, 1, cls, "template_top1") - ev.per_query(1, 1, cls, "template_top1"))
    assert comp.interval == by_hand
    assert v.to_dict()["checks"][0]["difference"] == by_hand.to_dict()
    imp = next(c for c in v.checks if c.kind == "improvement")
    assert imp.interval is not None and imp.interval.value == pytest.approx(imp.value - imp.threshold)


def test_a_line_says_when_the_probe_set_cannot_tell_a_pair_apart() -> None:
    # Gen 2 embeds like gen 1 except that one query of class 1 moves from wrong to right: M(2, 1)
    # beats M(1, 1) by one query of twenty, and the interval of that difference spans 0.
    labels = np.repeat(np.arange(2), 10)
    rng = np.random.default_rng(5)
    base = np.eye(3)[labels] + 0.3 * rng.standard_normal((20, 3))
    base[10] = [1.0, 0.2, 0.0]  # a class-1 query gen 1 puts among class 0
    q1 = (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float32)
    q2 = q1.copy()
    q2[10] = [0.0, 1.0, 0.0]
    gal = (np.eye(3)[labels] + 0.05 * rng.standard_normal((20, 3))).astype(np.float32)
    inputs = gate.GateInputs(query_labels=labels, gallery_labels=labels, query_embeddings={1: q1, 2: q2},
                             gallery_embeddings={1: gal, 2: gal}, candidate=2, live=[1], production=None,
                             registered_sha256=SHA, artifact_sha256=SHA)
    v = gate.evaluate_candidate(inputs)
    comp = v.checks[0]
    assert comp.passed and comp.value - comp.threshold == pytest.approx(1 / 20)
    assert comp.interval is not None and comp.interval.low <= 0 <= comp.interval.high
    line = comp.undecided_line()
    assert line is not None and line in v.notes
    assert line.startswith("M(2, 1) vs M(1, 1): the probe set is too small to tell them apart (difference +5.0 points")
    # A clear difference gets no such line.
    clear = gate.evaluate_candidate(_inputs(_world(), 3))
    assert all(c.undecided_line() is None for c in clear.checks if c.kind == "compatibility")


def test_a_holder_without_probe_embeddings_is_a_clear_error(world: dict) -> None:
    with pytest.raises(ValueError, match="no probe gallery embeddings for gen 7: embed the probe set first"):
        gate.evaluate_candidate(_inputs(world, 2, gallery_holders={0: {7: 3}}))
