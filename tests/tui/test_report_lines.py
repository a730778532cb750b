"""How the dashboard and the CLI show a check decided in another metric than the primary one (both sides
at 100% template top-1: mAP decides), and the matrix view's averages worded once for both."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime

import numpy as np

from registry import Generation

from tests.compat.test_gate import _saturated
from tui.views.generations import render_checks
from upgrader.cli.gate_cmds import _checks_table, matrix_lines
from upgrader.compat.gate import GateConfig, evaluate_candidate
from upgrader.services.matrix import MatrixView, gate_average_compatibility


def test_a_check_decided_on_map_says_so_in_the_dashboard_and_the_cli() -> None:
    verdict = evaluate_candidate(_saturated(), GateConfig(require_improvement=False))
    body = verdict.to_dict()
    lines = [line.plain for line in render_checks(body, {1: "g1", 2: "g2"})]
    assert lines[0] == "   ✓ compatibility: gen g2 queries on gen g1 gallery 100.0 > 79.2 (mAP)"
    assert lines[1].strip().startswith("both at 100.0% template top-1 on every probe class, which cannot tell them")
    table = _checks_table(verdict, {1: "g1", 2: "g2"})
    assert list(table.columns[0].cells)[0] == "compatibility (mAP)"
    item_rows = [c for c in list(table.columns[0].cells)[1:]]
    assert all("(" not in str(c) for c in item_rows)  # the item-level rows name their metric in the caption


def _generation(gen_id: int, status: str = "verified") -> Generation:
    return Generation(
        id=gen_id, name=f"g{gen_id}", kind="initial", method="hoc", architecture="small_cnn", parent_id=None,
        num_classes=16, train_config={}, data_fingerprint="", onnx_path=f"artifacts/g{gen_id}/model.onnx",
        onnx_sha256="ab" * 32, onnx_metadata={}, checkpoint_path=None, status=status,
        created_at=datetime(2025, 1, 1), metrics={},
    )


def test_ac_counts_the_cells_the_gate_refuses_and_is_n_a_without_generations() -> None:
    assert math.isnan(gate_average_compatibility([]))
    assert gate_average_compatibility([[None]]) == 1.0
    # three generations, one of three lower cells refused: 1 - 2/(3*2) * 1
    assert gate_average_compatibility([[None] * 3, [True, None, None], [False, True, None]]) == 1 - 1 / 3
    empty = MatrixView([], np.zeros((0, 0)), "template_top1", math.nan, math.nan, None, [], [], selection="live")
    assert matrix_lines(empty)[0] == "AC n/a   AM n/a over no live generations (the gallery is empty)"
    one = replace(empty, generations=[_generation(1)], matrix=np.array([[0.932]]), average_compatibility=1.0,
                  average_multimodel_accuracy=0.932, passes=[[None]], selection="default")
    assert matrix_lines(one)[0] == ("AC 1.000   AM 93.2 % over generations 1 (every one not rejected); --live shows "
                                    "only those with gallery items")


def test_the_dashboards_report_view_shows_the_item_level_search_the_cli_prints() -> None:
    from types import SimpleNamespace

    from rich.console import Console

    from tui.report_lines import item_lines
    from tui.views.generations import render_report_line

    verdict = evaluate_candidate(_saturated(), GateConfig(require_improvement=False))
    body = verdict.to_dict()
    rep = SimpleNamespace(id=7, kind="promote", passed=True, report=body, created_at=datetime(2025, 1, 1),
                          artifact_sha256="ab" * 32)
    console = Console(width=100, record=True)
    console.print(render_report_line(rep, {1: "g1", 2: "g2"}, lambda dt: "2025-01-01"))
    shown = console.export_text()
    for line in item_lines(body):  # the same lines as `upgrader verify`, after the checks
        assert line.plain.strip() in shown
    assert shown.index("compatibility:") < shown.index("item-level search after the move")
    assert "calibrated" in shown and "re-index" in shown and "no regression" in shown
