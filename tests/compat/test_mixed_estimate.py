"""The template mixed-gallery estimate: who stores each class, and how the candidate ranks that mixed
gallery with class templates. Reported in every promotion report (the study plots it); the gate's rules
use the item-level estimate (tests/compat/test_served_estimate.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from upgrader.compat import gate
from upgrader.compat.metrics import retrieval_metrics
from upgrader.compat.mixed import MixedEstimate, estimate_mixed, gallery_holders, gallery_owners, owners_of

SHA = "ab" * 32
NAMES = {f"c{v}": v for v in range(6)}

# --------------------------------------------------------------------------------------------------
# Owners
# --------------------------------------------------------------------------------------------------


def test_owner_is_the_generation_with_most_items_and_ties_go_to_the_older() -> None:
    counts = {
        (1, "c0"): 30, (2, "c0"): 10,  # majority: gen 1
        (1, "c1"): 5, (3, "c1"): 9,  # majority: gen 3
        (3, "c2"): 7, (2, "c2"): 7,  # tie: the older gen 2
        (1, None): 100,  # unlabelled: owns nothing
        (1, "not-a-class"): 50,  # unknown label: owns nothing
        (9, "c4"): 80, (2, "c4"): 1,  # gen 9 is not live: its items do not count
    }
    assert gallery_owners(counts, NAMES, [1, 2, 3]) == {0: 1, 1: 3, 2: 2, 4: 2}
    assert gallery_owners({}, NAMES, [1]) == {}
    holders = gallery_holders(counts, NAMES, [1, 2, 3])
    assert holders == {0: {1: 30, 2: 10}, 1: {1: 5, 3: 9}, 2: {3: 7, 2: 7}, 4: {2: 1}}
    assert owners_of(holders) == gallery_owners(counts, NAMES, [1, 2, 3])


# --------------------------------------------------------------------------------------------------
# A synthetic candidate that is pairwise compatible but ranks the mixed gallery badly
# --------------------------------------------------------------------------------------------------
#
# Six classes on orthogonal axes e0..e5 of a 7-D space. Gen 1 (production, learnt 0-3) is noisy and
# stores classes 0-3 in the real gallery. Gen 2 learnt 0-5, is cleaner, and (the `ce` failure) adds a
# direction of its own, 2 * e6, to every feature: its features are rotated away from gen 1's towards
# e6. Against gen 1's gallery alone that offset shifts every template score equally, so M(2, 1) beats
# M(1, 1); in the mixed gallery gen 2's own templates of classes 4 and 5 share the offset and attract
# the queries of classes 0-3. Gen 3 is gen 2 without the offset: a stationary upgrade.

DIM, PER_CLASS = 7, 25


def _world() -> dict:
    rng = np.random.default_rng(0)
    ql = np.repeat(np.arange(6), PER_CLASS)
    gl = np.repeat(np.arange(6), PER_CLASS)[::-1].copy()
    axes = np.eye(DIM)

    def embed(labels: np.ndarray, sigma: float, offset: float) -> np.ndarray:
        x = axes[labels] + offset * axes[6] + sigma * rng.standard_normal((labels.size, DIM))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    q = {1: embed(ql, 0.8, 0.0), 2: embed(ql, 0.2, 2.0), 3: embed(ql, 0.2, 0.0)}
    g = {1: embed(gl, 0.8, 0.0), 2: embed(gl, 0.2, 2.0), 3: embed(gl, 0.2, 0.0)}
    counts = {(1, f"c{v}"): 40 for v in range(4)}
    return {"ql": ql, "gl": gl, "q": q, "g": g, "owners": gallery_owners(counts, NAMES, [1]),
            "holders": gallery_holders(counts, NAMES, [1])}


@pytest.fixture(scope="module")
def world() -> dict:
    return _world()


def _inputs(world: dict, candidate: int) -> gate.GateInputs:
    return gate.GateInputs(
        query_labels=world["ql"],
        gallery_labels=world["gl"],
        query_embeddings=world["q"],
        gallery_embeddings=world["g"],
        candidate=candidate,
        live=[1],
        production=1,
        registered_sha256=SHA,
        artifact_sha256=SHA,
        classes={1: [0, 1, 2, 3], candidate: [0, 1, 2, 3, 4, 5]},
        gallery_holders=world["holders"],
    )


def test_estimate_drops_for_a_candidate_with_a_direction_of_its_own(world: dict) -> None:
    est = estimate_mixed(2, world["ql"], world["q"], world["gl"], world["g"], world["owners"], range(6))
    assert est.owners == {0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 2}
    assert est.classes == 6
    assert est.reindex > 0.95
    assert est.mixed < 0.5  # classes 0-3 go to gen 2's templates of 4 and 5
    assert est.drop == pytest.approx(est.reindex - est.mixed)
    # The re-index number is the gate's self-test M(2, 2): the same function on the same items.
    same = retrieval_metrics(world["q"][2], world["ql"], world["g"][2], world["gl"]).template_top1
    assert est.reindex == pytest.approx(same)
    d = json.loads(json.dumps(est.to_dict()))
    assert d["owners"] == {"0": 1, "1": 1, "2": 1, "3": 1, "4": 2, "5": 2}
    assert d["mixed"] == pytest.approx(est.mixed) and d["drop"] == pytest.approx(est.drop)
    assert est.summary().startswith(f"mixed gallery estimate: {100 * est.mixed:.1f}% vs {100 * est.reindex:.1f}%")
    assert "classes 0-3 stored by gen 1, classes 4,5 by candidate gen 2" in est.summary()


def test_pairwise_gate_passes_the_template_estimate_drops_and_the_item_level_rules_decide(world: dict) -> None:
    waived = gate.evaluate_candidate(_inputs(world, 2), gate.GateConfig(allow_regression=True))
    assert waived.passed, waived.explain()
    assert [c.kind for c in waived.checks] == ["compatibility", "improvement"]
    est = waived.mixed  # the template estimate: reported, decides nothing
    assert isinstance(est, MixedEstimate) and est.drop > 0.4
    body = json.loads(json.dumps(waived.to_dict()))
    assert body["mixed_tolerance"] is None and body["mixed"]["mixed"] == pytest.approx(est.mixed)
    assert body["mixed"]["owners"] == {"0": 1, "1": 1, "2": 1, "3": 1, "4": 2, "5": 2}
    # Item level the same failure shows: raw nearest-item search on the mixed gallery is far below a
    # re-index (gen 2's own items attract every query), and the calibration wins back part of it.
    served = waived.served
    assert served is not None
    assert served.raw.recall_at_1.value < 0.5 and served.reindex.recall_at_1.value > 0.95
    assert served.calibrated.recall_at_1.value > served.raw.recall_at_1.value + 0.1
    # A tolerance on the gap to a re-index refuses it, with the item-level numbers.
    strict = gate.evaluate_candidate(_inputs(world, 2), gate.GateConfig(allow_regression=True, mixed_tolerance=0.1))
    assert not strict.passed
    mixed = next(c for c in strict.checks if c.kind == "mixed")
    assert not mixed.passed and mixed.value == served.value
    assert mixed.threshold == pytest.approx(served.reindex.recall_at_1.value - 0.1)
    assert strict.reasons[0].startswith(f"gen 2 on the gallery after the move: item-level recall@1 {served.value:.3f}")
    # By default the no-regression rule refuses it too: on classes 0-3 its search on the gallery as it stands is
    # below gen 1's now. 150 probe queries cannot tell the two apart, and the reason says so.
    default = gate.evaluate_candidate(_inputs(world, 2))
    assert not default.passed and [c.kind for c in default.failing_checks] == ["regression"]
    assert default.reasons[0].startswith("gen 2 regresses search on the gallery as it stands (classes 0-3)")
    assert "the probe set cannot tell them apart" in default.reasons[0]


def test_a_stationary_upgrade_ranks_the_mixed_gallery_like_a_re_index(world: dict) -> None:
    est = estimate_mixed(3, world["ql"], world["q"], world["gl"], world["g"], world["owners"], range(6))
    assert abs(est.drop) <= 0.05
    # Exactly stationary: gen 4 embeds the old classes' gallery items as gen 1 does, so the mixed
    # gallery *is* its own gallery and the estimate equals the re-index.
    g4 = world["g"][3].copy()
    old = world["gl"] < 4
    g4[old] = world["g"][1][old]
    galleries = {**world["g"], 4: g4}
    queries = {**world["q"], 4: world["q"][3]}
    est = estimate_mixed(4, world["ql"], queries, world["gl"], galleries, world["owners"], None)
    assert est.mixed == est.reindex and est.drop == 0.0
    assert "(+0.0 points; classes 0-3 stored by gen 1, classes 4,5 by candidate gen 4)" in est.summary()


def test_unowned_classes_are_indexed_by_the_candidate_and_classes_restrict(world: dict) -> None:
    nobody = estimate_mixed(2, world["ql"], world["q"], world["gl"], world["g"], {}, None)
    assert nobody.mixed == nobody.reindex and set(nobody.owners.values()) == {2}
    only_new = estimate_mixed(2, world["ql"], world["q"], world["gl"], world["g"], world["owners"], [4, 5])
    assert only_new.classes == 2 and only_new.owners == {4: 2, 5: 2}
    assert only_new.mixed == only_new.reindex
    first = gate.evaluate_candidate(
        gate.GateInputs(**{**_inputs(world, 1).__dict__, "live": [], "production": None, "gallery_holders": {}})
    )
    assert first.passed and first.mixed is not None and first.mixed.drop == 0.0
    assert "item-level search" not in first.explain()  # nothing is stored yet: nothing to say


def test_missing_owner_embeddings_and_bad_tolerances_are_refused(world: dict) -> None:
    with pytest.raises(ValueError, match="no probe gallery embeddings for gen 7"):
        estimate_mixed(2, world["ql"], world["q"], world["gl"], world["g"], {0: 7}, None)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="mixed_tolerance"):
            gate.GateConfig(mixed_tolerance=bad)


def test_rollback_makes_no_estimate_but_carries_the_calibration_serving_needs(world: dict) -> None:
    inputs = gate.GateInputs(**{**_inputs(world, 1).__dict__, "live": [1, 3], "production": 3})
    verdict = gate.evaluate_rollback(inputs, 1, [3], gate.GateConfig(mixed_tolerance=0.0))
    assert verdict.mixed is None and verdict.to_dict()["mixed"] is None
    assert verdict.served is None and verdict.to_dict()["served"] is None
    assert all(c.kind not in ("mixed", "regression") for c in verdict.checks)
    # Once gen 1 serves again its queries meet gen 3's items: the map for them goes with the report.
    assert verdict.calibration is not None and verdict.calibration.query_gen == 1
    assert set(verdict.calibration.maps) == {3} and verdict.to_dict()["calibration"] == verdict.calibration.to_dict()
