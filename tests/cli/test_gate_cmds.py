"""verify, promote, rollback, matrix, register: the gate through the CLI on a real workspace."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest



def _reports(home: Path) -> int:
    with sqlite3.connect(home / "registry.db") as con:
        return con.execute("SELECT count(*) FROM gate_reports").fetchone()[0]


def _production(invoke, home: Path) -> str:
    return invoke("status", "--json", home=home).json()["production"]["name"]


def test_verify_stores_a_report_and_marks_the_generation(invoke, seeded: Path) -> None:
    res = invoke("verify", "g2", "--json", home=seeded)
    body = res.json()
    assert res.exit_code in (0, 3)
    assert body["candidate"] == 2 and body["kind"] == "promote"
    assert {c["kind"] for c in body["checks"]} >= {"compatibility", "improvement"}
    assert body["status"] == ("verified" if body["passed"] else "rejected")
    assert _reports(seeded) == 2  # the first promotion's report and this one


def test_the_seeded_fine_tune_is_refused_for_regressing_search_on_the_classes_served_now(invoke, seeded: Path) -> None:
    # g2 (three epochs of a tiny CNN on classes 4-5) passes the pairwise checks, but on classes 0-3 its
    # nearest-item search on the gallery as it stands is below g1's by point estimate, which decides.
    res = invoke("promote", "g2", "--reason", "adds classes 4-5", home=seeded)
    assert res.exit_code == 3
    assert "gen 2 regresses search on the gallery as it stands (classes 0-3)" in res.stderr
    assert _production(invoke, seeded) == "g1"
    body = invoke("verify", "g2", "--json", home=seeded).json()
    assert [c["kind"] for c in body["checks"] if not c["passed"]] == ["regression"]
    d = body["served"]["regression"]["difference"]
    assert d["value"] < 0
    assert ("the probe set cannot tell them apart" in res.stderr) == (d["low"] <= 0 <= d["high"])


def test_promote_moves_production_for_a_compatible_generation(invoke, seeded: Path) -> None:
    # --allow-regression: the seeded g2 regresses item-level search on classes 0-3 (test above).
    res = invoke("promote", "g2", "--reason", "adds classes 4-5", "--allow-regression", "--json", home=seeded)
    assert res.exit_code == 0, res.stderr
    assert res.json()["promoted"] is True
    assert _production(invoke, seeded) == "g2"
    moves = invoke("history", "--json", home=seeded).json()
    assert [m["to_gen"] for m in moves] == [1, 2]
    assert moves[-1]["reason"] == "adds classes 4-5" and moves[-1]["forced"] is False
    again = invoke("promote", "g2", home=seeded)
    assert again.exit_code == 2 and "production already" in again.stderr


def test_promote_refuses_an_incompatible_generation(invoke, seeded: Path) -> None:
    before = _reports(seeded)
    res = invoke("promote", "g3-er", home=seeded)
    assert res.exit_code == 3
    assert "g3-er" in res.stderr and "gen 1 gallery" in res.stderr  # names the failing pair
    assert _production(invoke, seeded) == "g1"
    assert len(invoke("history", "--json", home=seeded).json()) == 1
    assert _reports(seeded) == before + 1  # only the report was written


def test_force_needs_a_reason_and_is_recorded(invoke, seeded: Path) -> None:
    res = invoke("promote", "g3-er", "--force", home=seeded)
    assert res.exit_code == 2 and "--reason" in res.stderr
    assert _production(invoke, seeded) == "g1"
    forced = invoke("promote", "g3-er", "--force", "--reason", "emergency", "--json", home=seeded)
    assert forced.exit_code == 0, forced.stderr
    moves = invoke("history", "--json", home=seeded).json()
    assert moves[-1]["forced"] is True and moves[-1]["reason"] == "emergency"


def test_a_tampered_artifact_is_refused(invoke, seeded: Path) -> None:
    onnx = seeded / "artifacts" / "g2" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))
    res = invoke("promote", "g2", home=seeded)
    assert res.exit_code == 1
    assert "sha256" in res.stderr
    assert _production(invoke, seeded) == "g1"
    # verify cannot judge a file the registry does not know, and says how to get a known one
    judged = invoke("verify", "g2", home=seeded)
    assert judged.exit_code == 1 and "upgrader export" in judged.stderr
    # ...and the fix it names works: a re-export writes a recorded artifact the gate can judge.
    assert invoke("export", "g2", home=seeded).exit_code == 0
    assert invoke("verify", "g2", "--json", home=seeded).exit_code in (0, 3)


def test_rollback_checks_the_upper_triangle_and_force_overrides(invoke, seeded: Path) -> None:
    assert invoke("promote", "g3-er", "--force", "--reason", "try the baseline", home=seeded).exit_code == 0
    assert invoke("gallery", "add", "--classes", "4-6", "--per-class", "20", home=seeded).exit_code == 0
    refused = invoke("rollback", home=seeded)
    assert refused.exit_code == 3, refused.stderr
    assert "g1" in refused.stderr
    assert _production(invoke, seeded) == "g3-er"
    allowed = invoke("rollback", "g1", "--force", "--reason", "baseline was a mistake", "--json", home=seeded)
    assert allowed.exit_code == 0, allowed.stderr
    assert _production(invoke, seeded) == "g1"
    last = invoke("history", "--json", home=seeded).json()[-1]
    assert last["forced"] is True and last["to_gen"] == 1


def test_matrix_reports_ac_and_am(invoke, seeded: Path) -> None:
    res = invoke("matrix", "--gen", "g1", "--gen", "g3-er", "--json", home=seeded)
    assert res.exit_code == 0, res.stderr
    body = res.json()
    m = body["matrix"]
    assert len(m) == 2 and len(m[0]) == 2
    assert body["ac"] == (1.0 if m[1][0] > m[0][0] else 0.0)
    assert body["am"] == pytest.approx((m[0][0] + m[1][0] + m[1][1]) / 3)
    table = invoke("matrix", home=seeded)
    assert table.exit_code == 0 and "AC" in table.stdout


def test_register_refuses_an_artifact_with_another_k(invoke, seeded: Path, tmp_path: Path) -> None:
    from upgrader.training.export import export_onnx
    from upgrader.training.models import build_model

    path = tmp_path / "k8.onnx"
    export_onnx(build_model("small_cnn", num_classes=8, in_channels=1, image_size=28), path)
    res = invoke("register", str(path), "--name", "k8", home=seeded)
    assert res.exit_code == 1
    assert "K=8" in res.stderr and "K=16" in res.stderr
    assert not (seeded / "artifacts" / "k8").exists()
    assert "k8" not in invoke("generations", home=seeded).stdout


def test_verify_reports_item_level_search_after_the_move_and_takes_a_tolerance(invoke, seeded: Path) -> None:
    body = invoke("verify", "g2", "--json", home=seeded).json()
    served = body["served"]
    assert body["mixed_tolerance"] is None and "mixed" not in {c["kind"] for c in body["checks"]}
    # The gallery holds g1's items of classes 0-3; g2's new classes 4 and 5 would be written by g2.
    assert served["composition"] == {**{str(v): {"1": 20} for v in range(4)}, "4": {"2": 20}, "5": {"2": 20}}
    assert served["new_classes"] == [4, 5] and served["queries"] == 6 * 20
    for situation in ("calibrated", "raw", "reindex"):
        for metric in ("recall_at_1", "map"):
            iv = served[situation][metric]
            assert 0.0 <= iv["low"] <= iv["value"] <= iv["high"] <= 1.0
    gap = served["gap"]
    recall = {s: served[s]["recall_at_1"]["value"] for s in ("calibrated", "reindex")}
    assert gap["value"] == pytest.approx(recall["calibrated"] - recall["reindex"])
    reg = served["regression"]
    assert reg["production"] == 1 and reg["classes"] == [0, 1, 2, 3] and reg["production_now"]["queries"] == 4 * 20
    check = next(c for c in body["checks"] if c["kind"] == "regression")
    assert check["value"] == reg["candidate"]["recall_at_1"]["value"]
    assert check["threshold"] == reg["production_now"]["recall_at_1"]["value"]
    assert check["difference"] == reg["difference"] and body["allow_regression"] is False
    assert body["calibration"]["query_gen"] == 2 and set(body["calibration"]["maps"]) == {"1"}
    assert body["mixed"]["metric"] == "template_top1"  # the template estimate is still reported

    strict = invoke("verify", "g2", "--mixed-tolerance", "0", "--json", home=seeded)
    assert strict.exit_code in (0, 3)
    tol = next(c for c in strict.json()["checks"] if c["kind"] == "mixed")
    assert strict.json()["mixed_tolerance"] == 0.0 and tol["metric"] == "recall_at_1"
    assert tol["threshold"] == pytest.approx(strict.json()["served"]["reindex"]["recall_at_1"]["value"])
    assert tol["passed"] == (tol["value"] >= tol["threshold"])
    human = invoke("verify", "g2", home=seeded)
    assert "item-level search after the move: 120 probe queries of gen 2" in human.stdout
    assert "no regression (recall@1) on the gallery as it stands, classes 0-3:" in human.stdout
    assert "probe gallery: classes 0-3 by gen 1, classes 4,5 by gen 2" in human.stdout
    assert max(len(line) for line in human.stdout.splitlines()) <= 80
    assert invoke("verify", "g2", "--mixed-tolerance", "2", home=seeded).exit_code == 2


def test_allow_regression_waives_the_rule_and_is_recorded(invoke, seeded: Path) -> None:
    res = invoke("verify", "g2", "--allow-regression", "--json", home=seeded)
    body = res.json()
    assert body["allow_regression"] is True and "regression" not in {c["kind"] for c in body["checks"]}
    assert any(n.startswith("no-regression rule waived: gen 2 recall@1") for n in body["notes"])
    assert _stored_report(seeded, body["report_id"])["allow_regression"] is True
    human = invoke("verify", "g2", "--allow-regression", home=seeded)
    assert "no regression (recall@1) on the gallery as it stands, classes 0-3: waived" in human.stdout


def test_promote_stores_the_calibration_that_serving_then_applies(invoke, seeded: Path) -> None:
    from upgrader.services.workspace import open_workspace

    res = invoke("promote", "g2", "--reason", "adds classes 4-5", "--allow-regression", "--json", home=seeded)
    assert res.exit_code == 0, res.stderr
    body = res.json()
    assert body["calibration"]["query_gen"] == 2 and body["gate"]["calibration"] == body["calibration"]
    assert body["gate"]["served"]["candidate"] == 2
    with open_workspace(seeded) as ws:
        assert ws.registry.get_gate_report(body["report_id"]).calibration == body["calibration"]
        assert ws.registry.serving_calibration() == body["calibration"]


def _with_classes_record(src: Path, dest: Path, record: str) -> Path:
    import onnx

    proto = onnx.load(str(src))
    for entry in proto.metadata_props:
        if entry.key == "classes":
            entry.value = record
    onnx.save(proto, str(dest))
    return dest


def test_register_keeps_the_classes_an_exported_artifact_learnt(invoke, seeded: Path, tmp_path: Path) -> None:
    # g2 learnt classes 0-5; registered again (as if from another workspace) the gate must still score
    # it on those classes, not on every probe class.
    g2_onnx = seeded / "artifacts" / "g2" / "model.onnx"
    body = invoke("register", str(g2_onnx), "--name", "g2-again", "--json", home=seeded).json()
    assert body["train_config"]["vertices"] == [0, 1, 2, 3, 4, 5]
    assert body["train_config"]["classes"][:2] == ["T-shirt/top", "Trouser"]
    verdict = invoke("verify", "g2-again", "--json", home=seeded).json()
    assert verdict["mixed"]["owners"] == {"0": 1, "1": 1, "2": 1, "3": 1, "4": 4, "5": 4}  # g2-again is id 4
    narrowed = invoke("register", str(g2_onnx), "--name", "g2-narrow", "--classes", "0-3", "--json", home=seeded)
    assert narrowed.json()["train_config"]["vertices"] == [0, 1, 2, 3]


def test_register_refuses_unknown_classes_and_a_vertex_clash(invoke, seeded: Path, tmp_path: Path) -> None:
    g2_onnx = seeded / "artifacts" / "g2" / "model.onnx"
    res = invoke("register", str(g2_onnx), "--name", "bad", "--classes", "Teapot", home=seeded)
    assert res.exit_code == 2 and "unknown class 'Teapot'" in res.stderr
    clash = _with_classes_record(g2_onnx, tmp_path / "clash.onnx", '{"Trouser": 7}')
    res = invoke("register", str(clash), "--name", "clash", home=seeded)
    assert res.exit_code == 1 and "vertex 7" in res.stderr and "vertex 1" in res.stderr
    for name in ("bad", "clash"):
        assert not (seeded / "artifacts" / name).exists()


def test_matrix_cells_show_the_gates_verdict_with_the_margin(invoke, seeded: Path) -> None:
    assert "--margin" in invoke("matrix", "--help").stdout
    body = invoke("matrix", "--gen", "g1", "--gen", "g2", "--json", home=seeded).json()
    m = body["matrix"]
    gap = m[1][0] - m[0][0]
    assert gap > 0 and body["margin"] == 0.0 and body["passes"] == [[None, None], [True, None]]
    margin = round(gap + 0.01, 4)
    strict = invoke("matrix", "--gen", "g1", "--gen", "g2", "--margin", str(margin), "--json", home=seeded)
    assert strict.exit_code == 0, strict.stderr
    assert strict.json()["matrix"] == m  # the numbers stay; the verdict on them changes
    assert strict.json()["margin"] == margin and strict.json()["passes"][1][0] is False
    # The same margin refuses the promotion the cell describes.
    assert invoke("verify", "g2", "--margin", str(margin), home=seeded).exit_code == 3
    assert invoke("matrix", "--margin", "-0.1", home=seeded).exit_code == 2


def test_the_matrix_table_colours_a_cell_by_the_gates_verdict(seeded: Path) -> None:
    from upgrader.cli.gate_cmds import render_matrix
    from upgrader.services.matrix import compatibility_matrix
    from upgrader.services.workspace import open_workspace

    ws = open_workspace(seeded)
    try:
        plain = compatibility_matrix(ws, ["g1", "g2"])
        gap = float(plain.matrix[1, 0] - plain.matrix[0, 0])
        strict = compatibility_matrix(ws, ["g1", "g2"], margin=gap + 0.01)
    finally:
        ws.close()
    # Column 1 is gallery gen g1; row 1 is query gen g2. Before, any M(2,1) > M(1,1) was green.
    assert list(render_matrix(plain).columns[1].cells)[1].spans[0].style == "green"
    assert list(render_matrix(strict).columns[1].cells)[1].spans[0].style == "red"


def test_a_forced_move_without_a_reason_is_refused_in_domain_words_below_the_cli(seeded: Path) -> None:
    from upgrader.core.errors import InvalidRequest
    from upgrader.services.promotion import promote, rollback
    from upgrader.services.workspace import open_workspace

    ws = open_workspace(seeded)
    try:
        for move in (lambda: promote(ws, "g3-er", force=True), lambda: rollback(ws, "g2", force=True, reason=" ")):
            with pytest.raises(InvalidRequest) as caught:
                move()
            assert "--" not in str(caught.value) and "a forced move needs a reason" in str(caught.value)
    finally:
        ws.close()


def test_rollback_force_without_a_reason_is_a_usage_error_worded_with_the_flags(invoke, seeded: Path) -> None:
    res = invoke("rollback", "g2", "--force", home=seeded)
    assert res.exit_code == 2 and "--force needs --reason" in res.stderr


def _stored_report(home: Path, report_id: int) -> dict:
    from upgrader.services.workspace import open_workspace

    with open_workspace(home) as ws:
        return ws.registry.get_gate_report(report_id).report


def test_rollback_to_a_generation_the_gate_rejected_needs_force_and_is_recorded_forced(invoke, seeded: Path) -> None:
    # g3-er is the baseline-er of the demo: an `er` replacement the gate rejects.
    assert invoke("verify", "g3-er", home=seeded).exit_code == 3
    refused = invoke("rollback", "g3-er", "--reason", "x", home=seeded)
    assert refused.exit_code == 3, refused.stderr
    assert "never held production through an unforced move" in refused.stderr and "gen 1 gallery" in refused.stderr
    assert _production(invoke, seeded) == "g1" and len(invoke("history", "--json", home=seeded).json()) == 1

    forced = invoke("rollback", "g3-er", "--force", "--reason", "x", "--json", home=seeded)
    assert forced.exit_code == 0, forced.stderr
    body = forced.json()
    assert body["forced"] is True and body["ground"]["kind"] == "none"
    last = invoke("history", "--json", home=seeded).json()[-1]
    assert last["forced"] is True and last["to_gen"] == 3 and last["reason"] == "x"
    report = _stored_report(seeded, body["report_id"])
    assert report["checks"][0]["kind"] == "ground" and len(report["checks"]) > 1  # never "passed with zero checks"


def test_rollback_to_the_previous_production_stands_on_its_unforced_move(invoke, seeded: Path) -> None:
    assert invoke("promote", "g2", "--reason", "adds classes 4-5", "--allow-regression", home=seeded).exit_code == 0
    res = invoke("rollback", "--reason", "latency", "--json", home=seeded)
    assert res.exit_code == 0, res.stderr
    body = res.json()
    assert body["forced"] is False and body["ground"]["kind"] == "held-production" and body["ground"]["move_id"] == 1
    assert _production(invoke, seeded) == "g1"
    # g1 serves again with its own calibration, stored with the rollback report.
    assert body["calibration"]["query_gen"] == 1 and body["gate"]["calibration"] == body["calibration"]
    from upgrader.services.workspace import open_workspace

    with open_workspace(seeded) as ws:
        assert ws.registry.serving_calibration() == body["calibration"]
    report = _stored_report(seeded, body["report_id"])
    assert report["kind"] == "rollback" and report["passed"] is True
    assert report["checks"][0] == {**report["checks"][0], "kind": "ground", "passed": True, "ground": "held-production"}
    assert "held production from" in report["ground"]["line"] and "via move 1" in report["ground"]["line"]
    human = invoke("promote", "g2", "--reason", "again", "--allow-regression", home=seeded)
    assert human.exit_code == 0, human.stderr
    again = invoke("rollback", "--reason", "latency", home=seeded)
    assert again.exit_code == 0 and "held production from" in again.stdout


def test_a_force_never_overrides_a_failed_artifact_checksum(invoke, seeded: Path) -> None:
    onnx = seeded / "artifacts" / "g3-er" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    for args in (("promote", "g3-er"), ("rollback", "g3-er")):
        res = invoke(*args, "--force", "--reason", "emergency", home=seeded)
        assert res.exit_code == 1, (args, res.stderr)
        assert "sha256" in res.stderr and "`upgrader export GEN` re-exports it" in res.stderr
    assert _production(invoke, seeded) == "g1" and len(invoke("history", "--json", home=seeded).json()) == 1


def test_every_stored_gate_report_records_the_version_that_produced_it(invoke, seeded: Path) -> None:
    from upgrader.core.version import VERSION
    from upgrader.services.workspace import open_workspace

    assert invoke("verify", "g2", home=seeded).exit_code in (0, 3)
    with open_workspace(seeded) as ws:
        reports = ws.registry.gate_reports("g2")
    assert reports and reports[0].report["upgrader_version"] == VERSION
