"""The gate: retrieval metrics, AC/AM, the formal check and the promotion / rollback verdicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from upgrader.compat.formal import formal_compatibility
from upgrader.compat.gate import GateConfig, GateInputs, compatibility_check, evaluate_candidate, evaluate_rollback, evaluator
from upgrader.compat.matrix import average_compatibility, average_multimodel_accuracy, compatibility_matrix, matrix_from_pairs
from upgrader.compat.metrics import METRICS, retrieval_metrics

SHA = "ab" * 32

# --------------------------------------------------------------------------------------------------
# Retrieval metrics on a hand-made 2-D example
# --------------------------------------------------------------------------------------------------
#
# Gallery: g0 = (1, 0) class 0, g1 = (0, 1) class 1, g2 = (0.6, 0.8) class 0.
# Templates: class 0 = (1.6, 0.8)/|.| = (2, 1)/sqrt(5); class 1 = (0, 1).
# q0 = (0, 1) class 0: templates 0.447 vs 1.0 -> wrong. Items: g1 1.0, g2 0.8, g0 0.0 -> nearest is
#      class 1 (wrong); relevant at ranks 2 and 3 -> AP = (1/2 + 2/3) / 2 = 7/12.
# q1 = (1, 0) class 0: templates 0.894 vs 0 -> right. Items: g0 1.0, g2 0.6, g1 0 -> right; AP = 1.
# q2 = (0.8, 0.6) class 1: templates 0.984 vs 0.6 -> wrong. Items: g2 0.96, g0 0.8, g1 0.6 -> wrong;
#      relevant at rank 3 -> AP = 1/3.
# q3 class 7 has no gallery item: excluded.
GALLERY = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
GALLERY_LABELS = np.array([0, 1, 0])
QUERIES = np.array([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6], [0.6, -0.8]], dtype=np.float32)
QUERY_LABELS = np.array([0, 0, 1, 7])


def test_hand_made_metrics_match_the_worked_answers() -> None:
    m = retrieval_metrics(QUERIES, QUERY_LABELS, GALLERY, GALLERY_LABELS)
    assert m.template_top1 == pytest.approx(1 / 3)
    assert m.recall_at_1 == pytest.approx(1 / 3)
    assert m.mean_ap == pytest.approx((7 / 12 + 1 + 1 / 3) / 3)
    assert (m.num_queries, m.excluded_queries) == (3, 1)
    assert list(m.as_dict()) == list(METRICS)
    assert m.get("mean_ap") == m.mean_ap
    with pytest.raises(ValueError, match="unknown metric"):
        m.get("accuracy")


def _map_by_ranking(q: np.ndarray, ql: np.ndarray, g: np.ndarray, gl: np.ndarray) -> float:
    """mAP the slow, obvious way: rank each query's gallery (ties in gallery order), walk the list."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    aps = []
    for row, label in zip(q @ g.T, ql):
        ranked = sorted(range(len(gl)), key=lambda k: (-row[k], k))
        hits, precisions = 0, []
        for rank, k in enumerate(ranked, 1):
            if gl[k] == label:
                hits += 1
                precisions.append(hits / rank)
        aps.append(np.mean(precisions))
    return float(np.mean(aps))


@pytest.mark.parametrize("ties", [False, True])
def test_mean_ap_equals_walking_the_ranked_list(ties: bool) -> None:
    # The fast path ranks from sorted scores alone; equal scores (duplicated gallery items) must
    # still rank in gallery order, as the stable sort does.
    rng = np.random.default_rng(3)
    g = rng.standard_normal((120, 6)).astype(np.float32)
    if ties:
        g[60:] = g[:60]  # every item twice: equal scores for every query
    gl = rng.integers(0, 4, 120)
    q = rng.standard_normal((700, 6)).astype(np.float32)  # more than one 512-query chunk
    ql = rng.integers(0, 4, 700)
    m = retrieval_metrics(q, ql, g, gl)
    assert m.mean_ap == pytest.approx(_map_by_ranking(q, ql, g, gl), abs=1e-12)


def test_metrics_renormalise_unnormalised_features() -> None:
    scale = np.array([[3.0], [0.5], [7.0], [2.0]], dtype=np.float32)
    a = retrieval_metrics(QUERIES * scale, QUERY_LABELS, GALLERY * 4, GALLERY_LABELS)
    b = retrieval_metrics(QUERIES, QUERY_LABELS, GALLERY, GALLERY_LABELS)
    assert a.as_dict() == pytest.approx(b.as_dict())


def test_template_protocol_differs_from_item_protocol() -> None:
    # Class 0 has one item close to the query and two far ones; class 1 is moderately close.
    # Nearest item is class 0 (recall@1 right) but the class-0 template is pulled away (template wrong).
    g = np.array([[1.0, 0.05], [-0.2, 1.0], [-0.5, 1.0], [0.9, 0.45]], dtype=np.float32)
    gl = np.array([0, 0, 0, 1])
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    m = retrieval_metrics(q, np.array([0]), g, gl)
    assert m.recall_at_1 == 1.0
    assert m.template_top1 == 0.0


def test_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="dim"):
        retrieval_metrics(QUERIES, QUERY_LABELS, np.ones((3, 3), np.float32), GALLERY_LABELS)
    with pytest.raises(ValueError, match="NaN"):
        bad = QUERIES.copy()
        bad[0, 0] = np.nan
        retrieval_metrics(bad, QUERY_LABELS, GALLERY, GALLERY_LABELS)
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(QUERIES, QUERY_LABELS[:2], GALLERY, GALLERY_LABELS)
    with pytest.raises(ValueError, match="all zeros"):
        retrieval_metrics(np.zeros((1, 2), np.float32), [0], GALLERY, GALLERY_LABELS)


# --------------------------------------------------------------------------------------------------
# AC and AM
# --------------------------------------------------------------------------------------------------


def test_ac_am_worked_by_hand() -> None:
    # Lower triangle: (1,0) 0.6 > 0.5 ok; (2,0) 0.4 <= 0.5 violation; (2,1) 0.7 <= 0.7 tie -> violation.
    # AC = 1 - 2/(3*2) * 2 = 1/3. AM = (0.5 + 0.6 + 0.7 + 0.4 + 0.7 + 0.8) / 6 = 3.7 / 6.
    # The 9s in the upper triangle would change both if they were read.
    c = np.array([[0.5, 9.0, 9.0], [0.6, 0.7, 9.0], [0.4, 0.7, 0.8]])
    assert average_compatibility(c) == pytest.approx(1 / 3)
    assert average_multimodel_accuracy(c) == pytest.approx(3.7 / 6)
    c_nan = c.copy()
    c_nan[np.triu_indices(3, k=1)] = np.nan
    assert average_compatibility(c_nan) == pytest.approx(1 / 3)


def test_ac_tie_is_a_violation_and_single_generation_is_one() -> None:
    assert average_compatibility([[0.5, 0.0], [0.5, 0.9]]) == 0.0
    assert average_compatibility([[0.5, 0.0], [0.51, 0.9]]) == 1.0
    assert average_compatibility([[0.42]]) == 1.0
    assert average_multimodel_accuracy([[0.42]]) == pytest.approx(0.42)


def test_ac_am_reject_non_square_and_missing_lower_values() -> None:
    with pytest.raises(ValueError, match="square"):
        average_compatibility(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="square"):
        average_multimodel_accuracy(np.zeros(3))
    with pytest.raises(ValueError, match="below the diagonal"):
        average_compatibility([[0.5, 0.1], [np.nan, 0.7]])


def test_compatibility_matrix_is_full_and_from_pairs_leaves_gaps() -> None:
    c = compatibility_matrix([3, 5], lambda q, g: 10 * q + g)
    assert c.tolist() == [[33, 35], [53, 55]]  # upper triangle (3 queries on 5 gallery) included
    m = matrix_from_pairs([3, 5], {(3, 3): 0.5, (5, 3): 0.6, (5, 5): 0.7})
    assert np.isnan(m[0, 1])
    assert average_compatibility(m) == 1.0


# --------------------------------------------------------------------------------------------------
# Synthetic generations
# --------------------------------------------------------------------------------------------------
#
# Items are points around the vertices of a d-Simplex (K = 8, D = 7). Each generation embeds an item
# as its latent point plus generation noise: gen 1 noisy (the old model), gen 2 cleaner (a compatible
# improvement), gen 3 = gen 2 in a randomly rotated space (a good model, incompatible with the others).

K, D = 8, 7


def _simplex(k: int) -> np.ndarray:
    n = k - 1
    v = np.vstack([np.eye(n), np.full((1, n), (1 - np.sqrt(1 + n)) / n)])
    v -= v.mean(axis=0)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def world() -> dict:
    rng = np.random.default_rng(0)
    centres = _simplex(K)
    ql = rng.integers(0, K, 200)
    gl = np.repeat(np.arange(K), 25)
    xq = centres[ql] + 0.35 * rng.standard_normal((ql.size, D))
    xg = centres[gl] + 0.35 * rng.standard_normal((gl.size, D))
    rotation, _ = np.linalg.qr(rng.standard_normal((D, D)))

    def embed(sigma: float, seed: int, rot: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(seed)
        a = xq + sigma * r.standard_normal(xq.shape)
        b = xg + sigma * r.standard_normal(xg.shape)
        if rot is not None:
            a, b = a @ rot, b @ rot
        return a.astype(np.float32), b.astype(np.float32)

    q, g = {}, {}
    q[1], g[1] = embed(0.35, 1)
    q[2], g[2] = embed(0.10, 2)
    q[3], g[3] = embed(0.10, 3, rotation)
    q[4], g[4] = embed(0.30, 4)  # compatible with gen 1, but worse than gen 2
    q[5], g[5] = q[1].copy(), g[1].copy()  # gen 1 re-registered: identical embeddings
    return {"ql": ql, "gl": gl, "q": q, "g": g}


def _inputs(world: dict, candidate: int, live: list[int], production: int | None, **kw) -> GateInputs:
    return GateInputs(
        query_labels=world["ql"],
        gallery_labels=world["gl"],
        query_embeddings=world["q"],
        gallery_embeddings=world["g"],
        candidate=candidate,
        live=live,
        production=production,
        registered_sha256=kw.get("registered", SHA),
        artifact_sha256=kw.get("actual", SHA),
    )


def test_first_generation_passes_trivially(world: dict) -> None:
    v = evaluate_candidate(_inputs(world, 1, [], None))
    assert v.passed and v.kind == "promote"
    assert v.checks == () and v.reasons == ()
    assert (1, 1) in v.evaluations  # its self-test is still measured and stored
    assert "passed" in v.explain()


def test_compatible_candidate_passes_and_report_is_json(world: dict) -> None:
    v = evaluate_candidate(_inputs(world, 2, [1], 1))
    assert v.passed, v.explain()
    kinds = sorted(c.kind for c in v.checks)
    assert kinds == ["compatibility", "improvement"]
    comp = next(c for c in v.checks if c.kind == "compatibility")
    assert (comp.query_gen, comp.gallery_gen) == (2, 1)
    assert comp.value == pytest.approx(v.evaluations[(2, 1)].template_top1)
    assert comp.threshold == pytest.approx(v.evaluations[(1, 1)].template_top1)
    assert v.formal[(2, 1)].passed
    d = json.loads(json.dumps(v.to_dict()))  # what the registry stores
    assert d["passed"] is True and d["artifact_sha256"] == SHA
    assert d["matrix"]["generations"] == [1, 2]
    assert d["matrix"]["values"][1][0] == pytest.approx(comp.value)
    assert {"query_gen": 2, "gallery_gen": 1}.items() <= d["evaluations"][1].items()


def test_rotated_space_fails_naming_the_pair(world: dict) -> None:
    v = evaluate_candidate(_inputs(world, 3, [1, 2], 2), GateConfig(require_improvement=False))
    assert not v.passed
    failing = {(c.query_gen, c.gallery_gen) for c in v.failing_checks}
    assert failing == {(3, 1), (3, 2)}
    assert any(r.startswith("gen 3 queries on gen 1 gallery: template top-1 ") for r in v.reasons)
    assert "<= self-test of gen 2" in " ".join(v.reasons)
    assert "gen 3 queries on gen 2 gallery" in v.explain()
    assert v.explain().startswith("Gate refused promotion of gen 3")
    # The formal definition sees it too, but only reports it (check_formal defaults to off).
    assert not v.formal[(3, 1)].same_class_ok
    assert not any("formal" in r for r in v.reasons)


def test_tie_fails(world: dict) -> None:
    # Gen 5 embeds exactly like gen 1: M(5, 1) == M(1, 1), and the criterion is strict.
    v = evaluate_candidate(_inputs(world, 5, [1], None))
    assert not v.passed
    check = v.checks[0]
    assert check.value == check.threshold
    # Quoted as the matrix and `generations` print a self-test (%, one decimal), with its class set.
    assert v.reasons == (
        f"gen 5 queries on gen 1 gallery: template top-1 {100 * check.value:.1f}% <= self-test of gen 1 "
        f"{100 * check.threshold:.1f}% on every probe class",
    )


def test_margin_applies(world: dict) -> None:
    base = evaluate_candidate(_inputs(world, 2, [1], None))
    gap = base.checks[0].value - base.checks[0].threshold
    assert gap > 0.05
    assert evaluate_candidate(_inputs(world, 2, [1], None), GateConfig(margin=gap - 0.01)).passed
    tight = evaluate_candidate(_inputs(world, 2, [1], None), GateConfig(margin=gap + 0.01))
    assert not tight.passed
    assert f"+ margin {100 * (gap + 0.01):.1f} points on every probe class" in tight.reasons[0]
    with pytest.raises(ValueError, match="margin"):
        GateConfig(margin=-0.1)
    with pytest.raises(ValueError, match="primary metric"):
        GateConfig(primary_metric="top5")


def test_primary_metric_is_configurable(world: dict) -> None:
    v = evaluate_candidate(_inputs(world, 2, [1], 1), GateConfig(primary_metric="mean_ap"))
    comp = next(c for c in v.checks if c.kind == "compatibility")
    assert comp.value == pytest.approx(v.evaluations[(2, 1)].mean_ap)
    assert v.to_dict()["matrix"]["metric"] == "mean_ap"


def test_sha_mismatch_fails(world: dict) -> None:
    v = evaluate_candidate(_inputs(world, 2, [1], 1, actual="cd" * 32))
    assert not v.passed and not v.artifact_ok
    assert v.reasons == ("artifact changed since registration: registered sha256 abababababab..., "
                         "file now cdcdcdcdcdcd...",)
    missing = evaluate_candidate(_inputs(world, 2, [1], 1, actual=None))
    assert not missing.passed
    assert "missing" in missing.reasons[0]


def test_improvement_required_unless_waived(world: dict) -> None:
    # Gen 4 is compatible with live gen 1 but worse than production gen 2.
    v = evaluate_candidate(_inputs(world, 4, [1], 2))
    assert [c.kind for c in v.failing_checks] == ["improvement"]
    assert "not an improvement" in v.reasons[0] and "production gen 2" in v.reasons[0]
    waived = evaluate_candidate(_inputs(world, 4, [1], 2), GateConfig(require_improvement=False))
    assert waived.passed
    assert any("improvement waived" in n for n in waived.notes)


def test_missing_embeddings_are_a_clear_error(world: dict) -> None:
    with pytest.raises(ValueError, match="no probe query embeddings for gen 9"):
        evaluate_candidate(_inputs(world, 9, [1], 1))


def test_rollback_checks_the_upper_triangle(world: dict) -> None:
    # Roll back to gen 1 while gen 2 wrote gallery items: needs M(1, 2) >= M(2, 2) - margin.
    v = evaluate_rollback(_inputs(world, 1, [1, 2], 2), 1, [2])
    assert v.kind == "rollback"
    check = v.checks[0]
    assert (check.kind, check.query_gen, check.gallery_gen) == ("rollback", 1, 2)
    assert check.value == pytest.approx(v.evaluations[(1, 2)].template_top1)
    gap = check.threshold - check.value  # the noisier old queries retrieve worse than gen 2's own
    assert gap > 0 and not v.passed
    assert "gen 1 queries on gen 2 gallery" in v.reasons[0]
    ok = evaluate_rollback(_inputs(world, 1, [1, 2], 2), 1, [2], GateConfig(margin=gap))
    assert ok.passed  # >= : exactly at the tolerance passes
    # An incompatible newer gallery cannot be served by the old model whatever the margin.
    bad = evaluate_rollback(_inputs(world, 1, [1, 3], 3), 1, [3], GateConfig(margin=0.3))
    assert not bad.passed
    # A newer generation with no items in the gallery is not checked.
    skip = evaluate_rollback(_inputs(world, 1, [1], 3), 1, [3])
    assert skip.passed and skip.checks == ()
    with pytest.raises(ValueError, match="rollback target"):
        evaluate_rollback(_inputs(world, 2, [1, 2], 2), 1, [2])


def test_formal_check_directions() -> None:
    # Old space: queries and gallery on the axes. A new model whose class-0 queries drift toward
    # class 1 is farther from same-class items and nearer to different-class ones: both fail.
    old_q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    old_g = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    labels = np.array([0, 1])
    same = formal_compatibility(old_q, old_q, old_g, labels, labels)
    assert same.passed  # identical embeddings: equalities satisfy both <= and >=
    assert same.same_class_old == pytest.approx(0.0) and same.diff_class_old == pytest.approx(1.0)
    drift = np.array([[0.6, 0.8], [0.0, 1.0]], np.float32)
    f = formal_compatibility(drift, old_q, old_g, labels, labels, new_gen=2, old_gen=1)
    # same-class: (1 - 0.6 + 1 - 1) / 2 = 0.2 > 0; different-class: (1 - 0.8 + 1 - 0) / 2 = 0.6 < 1.
    assert f.same_class_cross == pytest.approx(0.2) and not f.same_class_ok
    assert f.diff_class_cross == pytest.approx(0.6) and not f.diff_class_ok
    # A weak old model (queries leaning toward the other class) and a new one with clean queries:
    # same-class cross (1 - 1) = 0 <= old (1 - 0.8) = 0.2; different-class cross 1 >= old 1 - 0.6 = 0.4.
    weak_q = np.array([[0.8, 0.6], [0.6, 0.8]], np.float32)
    better = formal_compatibility(old_q, weak_q, old_g, labels, labels)
    assert better.same_class_cross == pytest.approx(0.0) and better.same_class_old == pytest.approx(0.2)
    assert better.diff_class_cross == pytest.approx(1.0) and better.diff_class_old == pytest.approx(0.4)
    assert better.passed


def test_check_formal_makes_the_formal_definition_decide(world: dict) -> None:
    # Formal and empirical agree on the rotated candidate; with check_formal the reasons say so too.
    v = evaluate_candidate(
        _inputs(world, 3, [1], None), GateConfig(check_formal=True, require_improvement=False)
    )
    assert any("formal compatibility violated" in r and "same-class" in r for r in v.reasons)
    assert v.to_dict()["formal"][0]["passed"] is False


def test_gate_imports_no_torch_sqlalchemy_or_registry() -> None:
    code = (
        "import sys, upgrader.compat.gate, upgrader.compat.matrix, upgrader.compat.mixed, upgrader.runtime.index; "
        "bad = [m for m in ('torch', 'sqlalchemy', 'registry') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------------------------------
# One rule for the gate and the matrix view
# --------------------------------------------------------------------------------------------------


def _unit_rows(rows: list[list[float]]) -> np.ndarray:
    x = np.array(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _narrower_candidate() -> GateInputs:
    """gen 1 learnt classes 0-2 but confuses its class-2 queries with class 0 (self-test 4/6 over all
    three, 1.0 over classes 0 and 1); gen 2 learnt only 0 and 1 and embeds them as gen 1 does, but
    for one class-1 query it puts next to class 0 (3 of its 4 queries right on gen 1's gallery)."""
    labels = np.array([0, 0, 1, 1, 2, 2])
    queries = _unit_rows([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, -0.1], [1, 0, -0.1]])
    narrower = _unit_rows([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0.1, 0], [1, 0, -0.1], [1, 0, -0.1]])
    gallery = _unit_rows([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0.1], [1, 0, 0.1]])
    return GateInputs(
        query_labels=labels, gallery_labels=labels, query_embeddings={1: queries, 2: narrower},
        gallery_embeddings={1: gallery, 2: gallery}, candidate=2, live=[1], production=1,
        registered_sha256=SHA, artifact_sha256=SHA, classes={1: [0, 1, 2], 2: [0, 1]},
    )


def test_a_matrix_cell_gets_the_gates_verdict_on_shared_classes_not_the_diagonal() -> None:
    inputs = _narrower_candidate()
    ev = evaluator(inputs)
    assert ev.metrics(1, 1).template_top1 == pytest.approx(4 / 6)  # the diagonal cell, over gen 1's classes
    assert ev.metrics(2, 1).template_top1 == pytest.approx(3 / 4)  # beats the diagonal...
    check, reason = compatibility_check(ev, 2, 1, GateConfig())
    # ...but not gen 1's self-test on the classes both learnt, which the message names, with the diagonal.
    assert check.threshold == pytest.approx(1.0) and not check.passed and check.classes == (0, 1)
    assert reason == ("gen 2 queries on gen 1 gallery: template top-1 75.0% <= self-test of gen 1 100.0% on classes "
                      "0,1 (on all its classes 0,1,2, the matrix's diagonal, gen 1's self-test is 66.7%)")
    gate_check = next(c for c in evaluate_candidate(inputs).checks if c.kind == "compatibility")
    assert (gate_check.value, gate_check.threshold, gate_check.passed) == (check.value, check.threshold, check.passed)


def test_the_matrix_cell_verdict_takes_the_margin(world: dict) -> None:
    ev = evaluator(_inputs(world, 2, [1], None))
    value = ev.metrics(2, 1).template_top1
    assert value > ev.metrics(1, 1).template_top1
    assert compatibility_check(ev, 2, 1, GateConfig())[0].passed
    margin = value - ev.metrics(1, 1).template_top1 + 0.01
    check, reason = compatibility_check(ev, 2, 1, GateConfig(margin=margin))
    assert not check.passed and f"margin {100 * margin:.1f} points" in (reason or "")


# --------------------------------------------------------------------------------------------------
# Saturation: both sides at 100% template top-1 (docs/design.md §3)
# --------------------------------------------------------------------------------------------------
#
# Two classes in the plane. gen 1's class-0 gallery holds an outlier (0.6, 0.8) next to class 1, and
# its class-1 query (0.5, 0.87) is nearer that outlier than any class-1 item, yet nearer the class-1
# template: template top-1 100%, mAP (1 + 7/12) / 2. gen 2 queries cleanly on the same gallery
# (template 100%, mAP 100%); gen 3 embeds exactly as gen 1 (a tie in every metric); gens 4 and 5 are
# clean and identical (100% in every metric).


def _saturated() -> GateInputs:
    labels = np.array([0, 1])
    g_labels = np.array([0, 0, 1, 1])
    outlier = _unit_rows([[1, 0], [0.6, 0.8], [0, 1], [0, 1]])
    clean_g = _unit_rows([[1, 0], [1, 0], [0, 1], [0, 1]])
    noisy_q, clean_q = _unit_rows([[1, 0], [0.5, 0.87]]), _unit_rows([[1, 0], [0, 1]])
    return GateInputs(
        query_labels=labels, gallery_labels=g_labels,
        query_embeddings={1: noisy_q, 2: clean_q, 3: noisy_q, 4: clean_q, 5: clean_q},
        gallery_embeddings={1: outlier, 2: outlier, 3: outlier, 4: clean_g, 5: clean_g},
        candidate=2, live=[1], production=1, registered_sha256=SHA, artifact_sha256=SHA,
    )


def test_both_sides_at_100_percent_template_top1_are_decided_on_map() -> None:
    from dataclasses import replace

    inputs = _saturated()
    ev = evaluator(inputs)
    assert ev.metrics(1, 1).template_top1 == ev.metrics(2, 1).template_top1 == 1.0  # the template cannot tell
    assert ev.metrics(1, 1).mean_ap == pytest.approx((1 + 7 / 12) / 2)
    v = evaluate_candidate(inputs, GateConfig(require_improvement=False))
    check = next(c for c in v.checks if c.kind == "compatibility")
    assert v.passed and check.metric == "mean_ap"  # mAP decided: 100.0 > 79.2
    assert (check.value, check.threshold) == (pytest.approx(1.0), pytest.approx((1 + 7 / 12) / 2))
    assert ("compatibility gen 2 on gen 1: both at 100.0% template top-1 on every probe class, which cannot tell "
            "them apart: mAP decides (100.0% vs 79.2%)") in v.notes
    tie = evaluate_candidate(replace(inputs, candidate=3), GateConfig(require_improvement=False))
    assert not tie.passed  # a tie in mAP too still fails, said in mAP
    assert tie.reasons == ("gen 3 queries on gen 1 gallery: mAP 79.2% <= self-test of gen 1 79.2% on every probe class",)
    # The improvement check: production gen 1 at 100% template top-1, the candidate too; mAP decides.
    better = evaluate_candidate(replace(inputs, candidate=2, live=[]))
    assert better.passed and next(c for c in better.checks if c.kind == "improvement").metric == "mean_ap"
    # The matrix colours the cell with the same rule.
    assert compatibility_check(ev, 2, 1, GateConfig())[0].passed and not compatibility_check(ev, 3, 1, GateConfig())[0].passed


def test_both_sides_perfect_in_every_metric_pass_and_say_the_probe_set_cannot_tell() -> None:
    from dataclasses import replace

    v = evaluate_candidate(replace(_saturated(), candidate=5, live=[4], production=4))
    assert v.passed, v.explain()
    assert [(c.kind, c.metric, c.passed) for c in v.checks[:2]] == [("compatibility", "mean_ap", True),
                                                                     ("improvement", "mean_ap", True)]
    assert any("perfect on the probe set, nothing can beat them" in n for n in v.notes)
    # A margin asks for headroom a perfect score cannot have: still a pass, and still said.
    assert evaluate_candidate(replace(_saturated(), candidate=5, live=[4], production=4), GateConfig(margin=0.01)).passed
