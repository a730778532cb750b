"""The gate's calibration and item-level numbers through the Python API, on SQLite and PostgreSQL.

Every verify, promotion and rollback stores the score calibration serving applies once its generation
serves, and ``Registry.serving_calibration()`` hands it out after the move. A stored report is reused
only while it describes the present: the same no-regression setting, a calibration stored with it,
and a gallery that composes the same probe gallery after the move.
"""

from __future__ import annotations

from upgrader.compat.gate import GateConfig, evaluate_candidate
from upgrader.services.promotion import _inputs, promote, rollback, verify


def test_promote_stores_the_calibration_and_serving_gets_it_after_the_move(synthetic, gallery_of) -> None:
    ws, reg = synthetic.ws, synthetic.ws.registry
    first = promote(ws, "g1", reason="first")
    assert first.report is not None and first.report.calibration == {"query_gen": 1, "maps": {}}
    assert reg.serving_calibration() == first.report.calibration  # nothing else to map yet
    gallery_of(synthetic, first.move.to_gen, "g1", "g1")

    done = promote(ws, "g2", reason="better")
    report = done.report
    assert report is not None and report.passed and not done.reused_report
    g2 = reg.get_generation("g2").id
    cal = report.calibration
    assert cal is not None and cal["query_gen"] == g2 and set(cal["maps"]) == {str(first.move.to_gen)}
    assert report.report["calibration"] == cal  # --json shows what was stored
    assert reg.serving_calibration() == cal
    served = report.report["served"]
    assert served["candidate"] == g2 and served["regression"]["production"] == first.move.to_gen
    assert report.report["allow_regression"] is False
    assert any(c["kind"] == "regression" and c["passed"] for c in report.report["checks"])


def test_a_rollback_stores_the_targets_calibration_for_serving(synthetic, gallery_of) -> None:
    ws, reg = synthetic.ws, synthetic.ws.registry
    first = promote(ws, "g1", reason="first")
    gallery_of(synthetic, first.move.to_gen, "g1", "g1")
    promote(ws, "g2", reason="better")
    gallery_of(synthetic, reg.get_generation("g2").id, "g2", "g2")
    # g1's noisy queries do not read g2's items well enough for the rule: a forced move, still cited
    # by the move with the calibration of its report.
    back = rollback(ws, reason="latency", force=True)
    assert back.forced and back.report is not None and back.report.kind == "rollback"
    cal = back.report.calibration
    assert cal is not None and cal["query_gen"] == first.move.to_gen
    assert set(cal["maps"]) == {str(reg.get_generation("g2").id)}  # g1's queries on g2's items
    assert reg.serving_calibration() == cal


def test_reuse_respects_the_no_regression_setting(synthetic, gallery_of) -> None:
    ws, reg = synthetic.ws, synthetic.ws.registry
    first = promote(ws, "g1", reason="first")
    gallery_of(synthetic, first.move.to_gen, "g1", "g1")
    checked = verify(ws, "g2")
    assert checked.verdict.passed
    waived = promote(ws, "g2", reason="x", config=GateConfig(allow_regression=True))
    assert not waived.reused_report and waived.report is not None and waived.report.id != checked.report.id
    assert waived.report.report["allow_regression"] is True
    assert not any(c["kind"] == "regression" for c in waived.report.report["checks"])
    assert any(n.startswith("no-regression rule waived") for n in waived.report.report["notes"])

    # The same setting twice: the report is reused, and its calibration serves.
    back = rollback(ws, reason="again")
    assert reg.get_alias() == first.move.to_gen
    again = verify(ws, "g2", GateConfig(allow_regression=True))
    moved = promote(ws, "g2", reason="y", config=GateConfig(allow_regression=True))
    assert moved.reused_report and moved.report is not None and moved.report.id == again.report.id
    assert again.report.calibration is not None and reg.serving_calibration() == again.report.calibration
    assert back.report is not None and back.report.calibration is not None


def test_reuse_needs_a_stored_calibration(synthetic, gallery_of) -> None:
    ws, reg = synthetic.ws, synthetic.ws.registry
    first = promote(ws, "g1", reason="first")
    gallery_of(synthetic, first.move.to_gen, "g1", "g1")
    gen = reg.get_generation("g2")
    verdict = evaluate_candidate(_inputs(ws, gen, []))
    assert verdict.passed
    bare = reg.add_gate_report(gen.id, gen.onnx_sha256, True, "promote", verdict.to_dict())  # no calibration
    done = promote(ws, "g2", reason="x")
    assert not done.reused_report and done.report is not None and done.report.id != bare.id
    assert done.report.calibration is not None and reg.serving_calibration() == done.report.calibration


def test_reuse_needs_the_same_probe_gallery_composition(synthetic, gallery_of) -> None:
    ws, reg = synthetic.ws, synthetic.ws.registry
    first = promote(ws, "g1", reason="first")
    gallery_of(synthetic, first.move.to_gen, "g1", "g1")
    checked = verify(ws, "g2")
    assert checked.verdict.passed
    # More items in the same proportions compose the same probe gallery: the report still holds.
    gallery_of(synthetic, first.move.to_gen, "g1", "more")
    composition = checked.report.report["served"]["composition"]
    # Class "a" loses its items (g1 stays live): after the move g2 would write it, so the numbers change.
    assert reg.delete_gallery_items([f"{p}-{i}" for p in ("g1", "more") for i in range(3)]) == 6
    done = promote(ws, "g2", reason="x")
    assert not done.reused_report and done.report is not None and done.report.id != checked.report.id
    after = done.report.report["served"]
    assert after["composition"] != composition and after["new_classes"] == [0]


def test_an_unchanged_gallery_reuses_the_report(synthetic, gallery_of) -> None:
    ws = synthetic.ws
    first = promote(ws, "g1", reason="first")
    gallery_of(synthetic, first.move.to_gen, "g1", "g1")
    checked = verify(ws, "g2")
    gallery_of(synthetic, first.move.to_gen, "g1", "more")  # same proportions: same composition
    done = promote(ws, "g2", reason="x")
    assert done.reused_report and done.report is not None and done.report.id == checked.report.id
