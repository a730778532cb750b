"""The Compatibility heatmap marks each lower-triangle cell with the gate's own verdict for that pair."""

from __future__ import annotations

from datetime import datetime

import numpy as np
from textual.app import App, ComposeResult
from textual.widgets import DataTable

from registry import Generation

from tui.views.compatibility import CompatibilityView
from upgrader.services.matrix import MatrixView


def _generation(gen_id: int) -> Generation:
    return Generation(
        id=gen_id, name=f"g{gen_id}", kind="initial" if gen_id == 1 else "finetune", method="hoc",
        architecture="small_cnn", parent_id=None if gen_id == 1 else gen_id - 1, num_classes=16, train_config={},
        data_fingerprint="", onnx_path=f"artifacts/g{gen_id}/model.onnx", onnx_sha256="ab" * 32, onnx_metadata={},
        checkpoint_path=None, status="production" if gen_id == 1 else "verified", created_at=datetime(2025, 1, 1),
        metrics={},
    )


def _view(passes_2_on_1: bool) -> MatrixView:
    """g2's queries beat g1's self-test on g1's gallery (0.82 > 0.80), by less than a 0.05 margin."""
    matrix = np.array([[0.80, 0.40], [0.82, 0.85]])
    return MatrixView(
        generations=[_generation(1), _generation(2)], matrix=matrix, metric="template_top1",
        average_compatibility=1.0, average_multimodel_accuracy=float(matrix[np.tril_indices(2)].mean()),
        production=1, live=[1], passes=[[None, None], [passes_2_on_1, None]], margin=0.05,
    )


class _Host(App[None]):
    def compose(self) -> ComposeResult:
        yield CompatibilityView()


async def _marks(view: MatrixView) -> dict[tuple[str, str], str]:
    """The mark (last non-blank character) of every cell, by (row key, column key)."""
    app = _Host()
    async with app.run_test() as pilot:
        app.query_one(CompatibilityView).show(view, live_only=False)
        await pilot.pause()
        table = app.query_one(DataTable)
        return {
            (r, c): table.get_cell(r, c).plain.strip()[-1] for r in ("1", "2") for c in ("1", "2")
        }


async def test_a_cell_the_gate_refuses_with_the_margin_shows_a_cross() -> None:
    # The bare rule M(2,1) > M(1,1) holds (0.82 > 0.80); the gate's verdict with margin 0.05 does not.
    marks = await _marks(_view(passes_2_on_1=False))
    assert marks[("2", "1")] == "✗"
    assert marks[("1", "1")] == "◆" and marks[("2", "2")] == "◆"
    assert marks[("1", "2")] == "↑"


async def test_a_cell_the_gate_accepts_shows_a_tick() -> None:
    marks = await _marks(_view(passes_2_on_1=True))
    assert marks[("2", "1")] == "✓"
