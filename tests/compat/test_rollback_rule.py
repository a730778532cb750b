"""The rollback rule through the Python API (services.promotion), on SQLite and PostgreSQL.

A rollback target must have held production through an unforced move, or pass the gate's
compatibility checks now; the upper-triangle check applies on top; anything else needs force with a
reason and is recorded as forced. A force never overrides a failed artifact checksum.
"""

from __future__ import annotations

import pytest

from upgrader.core.errors import ArtifactError, GateRefused
from upgrader.services.promotion import promote, rollback


def _ground_check(sw, report_id: int) -> dict:
    body = sw.ws.registry.get_gate_report(report_id).report
    first = body["checks"][0]
    assert first["kind"] == "ground" and first["line"] == body["ground"]["line"]
    return body["ground"]


def test_a_generation_the_gate_refuses_cannot_be_rolled_back_to_without_force(synthetic, gallery_of) -> None:
    reg = synthetic.ws.registry
    promote(synthetic.ws, "g1", reason="first")
    gallery_of(synthetic, reg.get_generation("g1").id, "g1", "g1")
    with pytest.raises(GateRefused) as refused:
        rollback(synthetic.ws, "bad", reason="x")
    assert "never held production" in str(refused.value) and "gen 1 gallery" in str(refused.value)
    assert reg.get_generation(reg.get_alias()).name == "g1" and len(reg.alias_history()) == 1
    report = reg.get_gate_report(refused.value.report_id)
    assert report.kind == "rollback" and not report.passed
    assert _ground_check(synthetic, report.id)["kind"] == "none"
    assert any(c["kind"] == "compatibility" and not c["passed"] for c in report.report["checks"])

    done = rollback(synthetic.ws, "bad", reason="incident drill", force=True)
    assert done.forced and done.move.forced and reg.alias_history()[-1].reason == "incident drill"
    assert reg.get_generation(reg.get_alias()).name == "bad"


def test_a_former_production_rolls_back_on_that_ground_with_its_checks_recorded(synthetic, gallery_of) -> None:
    reg = synthetic.ws.registry
    first = promote(synthetic.ws, "g1", reason="first")
    gallery_of(synthetic, first.move.to_gen, "g1", "g1")
    promote(synthetic.ws, "g2", reason="better")
    done = rollback(synthetic.ws, reason="latency")
    assert not done.forced and done.ground is not None and done.ground.kind == "held-production"
    assert done.ground.move == first.move and f"move {first.move.id}" in done.ground.line
    assert reg.get_generation(reg.get_alias()).name == "g1"
    assert done.report is not None and done.report.passed and done.report.kind == "rollback"
    ground = _ground_check(synthetic, done.report.id)
    assert ground == {"kind": "held-production", "passed": True, "line": done.ground.line,
                      "move_id": first.move.id, "at": first.move.at.isoformat()}


def test_a_generation_that_served_only_by_force_must_pass_the_gate_now(synthetic, gallery_of) -> None:
    reg = synthetic.ws.registry
    promote(synthetic.ws, "g1", reason="first")
    gallery_of(synthetic, reg.get_generation("g1").id, "g1", "g1")
    promote(synthetic.ws, "bad", reason="try it", force=True)
    from upgrader.services.promotion import held_production_move

    assert held_production_move(synthetic.ws, reg.get_generation("bad")) is None
    back = rollback(synthetic.ws, "g1", reason="bad idea")
    assert back.ground is not None and back.ground.kind == "held-production" and not back.forced
    with pytest.raises(GateRefused, match="never held production through an unforced move"):
        rollback(synthetic.ws, "bad", reason="again")
    assert reg.get_generation(reg.get_alias()).name == "g1"


def test_a_never_served_generation_that_passes_the_compatibility_checks_now_may_serve(synthetic, gallery_of) -> None:
    reg = synthetic.ws.registry
    promote(synthetic.ws, "g1", reason="first")
    gallery_of(synthetic, reg.get_generation("g1").id, "g1", "g1")
    done = rollback(synthetic.ws, "g2", reason="skip ahead")
    assert done.ground is not None and done.ground.kind == "compatible-now" and not done.forced
    kinds = [c["kind"] for c in done.report.report["checks"]]
    assert kinds[0] == "ground" and "compatibility" in kinds and "improvement" not in kinds


def test_force_never_overrides_a_failed_artifact_checksum(synthetic) -> None:
    reg = synthetic.ws.registry
    promote(synthetic.ws, "g1", reason="first")
    synthetic.artifact("bad").write_bytes(b"swapped after registration")
    for move in (lambda: promote(synthetic.ws, "bad", force=True, reason="x"),
                 lambda: rollback(synthetic.ws, "bad", force=True, reason="x")):
        with pytest.raises(ArtifactError, match="sha256"):
            move()
    assert reg.get_generation(reg.get_alias()).name == "g1" and len(reg.alias_history()) == 1
