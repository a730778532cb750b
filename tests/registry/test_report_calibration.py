"""The score calibration stored with a gate report, and which one serving applies (issue 15, item 2)."""

from __future__ import annotations

import numpy as np
import pytest

from registry import ConstraintViolation, Registry

CAL_1 = {"kind": "offsets", "offsets": {"1": {"1": 0.0, "2": -0.05}}, "scale": 1.0}
CAL_2 = {"kind": "offsets", "offsets": {"2": {"1": 0.12, "2": 0.0}}, "scale": 0.9}


def test_calibration_round_trips_with_the_report_and_defaults_to_none(ready: Registry, make_gen) -> None:
    g = make_gen("g1")
    with_cal = ready.add_gate_report(
        g.id, g.onnx_sha256, True, "promote", {"verdict": "pass"},
        calibration={"offsets": np.array([0.25, -0.5], np.float32), "n": np.int64(3), "bad": float("nan")},
    )
    without = ready.add_gate_report(g.id, g.onnx_sha256, True, "promote", {"verdict": "pass"})
    expected = {"offsets": [0.25, -0.5], "n": 3, "bad": None}  # numpy converted, NaN stored as null
    assert with_cal.calibration == expected
    assert ready.get_gate_report(with_cal.id).calibration == expected
    assert without.calibration is None and ready.get_gate_report(without.id).calibration is None
    assert [r.calibration for r in ready.gate_reports(g.id)] == [None, expected]
    assert ready.get_gate_report(with_cal.id).report == {"verdict": "pass"}  # the report is untouched


def test_a_calibration_that_is_not_a_dict_is_refused_and_nothing_is_stored(ready: Registry, make_gen) -> None:
    g = make_gen("g1")
    with pytest.raises(ConstraintViolation, match="a score calibration is a dict"):
        bad: object = [1.0, 2.0]
        ready.add_gate_report(g.id, g.onnx_sha256, True, "promote", {}, calibration=bad)  # type: ignore[arg-type]
    with pytest.raises(ConstraintViolation, match="score calibration"):
        ready.add_gate_report(g.id, g.onnx_sha256, True, "promote", {}, calibration={"f": object()})
    assert ready.gate_reports(g.id) == []


def test_serving_calibration_follows_the_newest_move(ready: Registry, make_gen) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    assert ready.serving_calibration() is None  # never set
    r1 = ready.add_gate_report(g1.id, g1.onnx_sha256, True, "promote", {}, calibration=CAL_1)
    ready.move_alias(g1.id, actor="t", reason="first", gate_report_id=r1.id)
    assert ready.serving_calibration() == CAL_1
    r2 = ready.add_gate_report(g2.id, g2.onnx_sha256, True, "promote", {}, calibration=CAL_2)
    ready.move_alias(g2.id, actor="t", reason="upgrade", gate_report_id=r2.id)
    assert ready.serving_calibration() == CAL_2  # the newest move wins
    # Back to g1 on a rollback report without calibration: g1's older promote report does not count.
    back = ready.add_gate_report(g1.id, g1.onnx_sha256, True, "rollback", {})
    ready.move_alias(g1.id, actor="t", reason="rollback", gate_report_id=back.id, kind="rollback")
    assert ready.serving_calibration() is None
    # Another alias has its own answer.
    assert ready.serving_calibration("staging") is None
    ready.move_alias(g2.id, actor="t", reason="stage", gate_report_id=r2.id, alias="staging")
    assert ready.serving_calibration("staging") == CAL_2
    assert ready.serving_calibration() is None


def test_a_forced_move_without_report_serves_no_calibration(ready: Registry, make_gen) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    r1 = ready.add_gate_report(g1.id, g1.onnx_sha256, True, "promote", {}, calibration=CAL_1)
    ready.move_alias(g1.id, actor="t", reason="first", gate_report_id=r1.id)
    ready.add_gate_report(g2.id, g2.onnx_sha256, True, "promote", {}, calibration=CAL_2)  # not cited
    ready.move_alias(g2.id, actor="t", reason="emergency", forced=True)
    assert ready.serving_calibration() is None


def test_a_report_about_another_generation_or_artifact_serves_no_calibration(ready: Registry, make_gen) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    old = ready.add_gate_report(g2.id, g2.onnx_sha256, True, "promote", {}, calibration=CAL_2)
    ready.update_artifact(g2.id, "/models/g2b.onnx", "f" * 64, {})  # re-exported: the report is stale
    ready.move_alias(g2.id, actor="t", reason="forced on a stale report", forced=True, gate_report_id=old.id)
    assert ready.serving_calibration() is None
    # A forced move citing a report about another generation.
    r1 = ready.add_gate_report(g1.id, g1.onnx_sha256, True, "promote", {}, calibration=CAL_1)
    ready.move_alias(g2.id, actor="t", reason="forced on g1's report", forced=True, gate_report_id=r1.id)
    assert ready.serving_calibration() is None
    # Control: a forced move citing a current report of the target serves its calibration.
    current = ready.add_gate_report(g2.id, "f" * 64, True, "promote", {}, calibration=CAL_2)
    ready.move_alias(g2.id, actor="t", reason="forced on a current report", forced=True, gate_report_id=current.id)
    assert ready.serving_calibration() == CAL_2
