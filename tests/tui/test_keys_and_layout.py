"""Help on ? and F1, the training form's checks before "Start training", and the layout at 80x24:
the footer whole, the History view's forced and reason on screen, every column reachable (issue 16)."""

from __future__ import annotations

import contextlib
import io
import sqlite3
from pathlib import Path

import pytest
from rich.console import Console
from pilot import frozen_time, settle, text_of, wait_until
from textual.widgets import DataTable, Input
from textual.widgets._footer import FooterKey

from tui.actions import ACTIONS
from tui.app import DashboardApp
from tui.help import HelpModal
from tui.modals import ConfirmModal, TrainFormModal

#: The names ``upgrader train`` gives by default: what a History row holds in real use.
LONG_NAMES = {"g1-initial": "g1-initial-small_cnn-hoc", "g2-finetune": "g2-finetune-small_cnn-hoc",
              "g3-replacement": "g3-replacement-resnet_narrow-hoc"}


@pytest.fixture
def long_named_ws(snapshot_ws: Path) -> Path:
    """The snapshot workspace with the generation names training gives (renamed in the database)."""
    with contextlib.closing(sqlite3.connect(snapshot_ws / "registry.db")) as db, db:
        for old, new in LONG_NAMES.items():
            db.execute("UPDATE generations SET name = ? WHERE name = ?", (new, old))
    return snapshot_ws


@pytest.mark.parametrize("key", ["question_mark", "f1"])
async def test_question_mark_and_f1_open_the_help_with_every_key(snapshot_ws: Path, key: str) -> None:
    app = DashboardApp(snapshot_ws, time_format=frozen_time)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(key)
        await wait_until(pilot, lambda: isinstance(app.screen, HelpModal), "the help screen")
        shown = text_of(app.screen.query_one("#help-text"))
        for action in ACTIONS:
            assert f"{action.key}" in shown and (action.title or action.label) in shown, action
        assert "4 History" in shown and "ctrl+p" in shown
        await pilot.press(key)  # the same key closes it
        await wait_until(pilot, lambda: not isinstance(app.screen, HelpModal), "the help screen to close")
        assert app.query_one("#views").active == "generations"


@pytest.mark.parametrize("view", ["1", "2", "4"])
async def test_the_footer_fits_80_columns(snapshot_ws: Path, view: str) -> None:
    app = DashboardApp(snapshot_ws, time_format=frozen_time)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(view)
        await settle(pilot)
        keys = sorted((k for k in app.screen.query(FooterKey) if k.display), key=lambda k: k.region.x)
        assert {k.key_display for k in keys} >= {"v", "p", "b", "t", "n", "?", "q", "^p"}
        for k, after in zip(keys, keys[1:] + [None]):  # none cut, at the edge or by the next ("q Qui▏")
            assert k.region.right <= (after.region.x if after else 80), (k.description, k.region, after and after.region)
            assert k.region.width >= len(k.key_display) + 1 + len(k.description), k.description


async def test_the_history_view_at_80x24_shows_forced_and_reason_and_scrolls_to_the_rest(long_named_ws: Path) -> None:
    app = DashboardApp(long_named_ws, time_format=frozen_time)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("4")
        await settle(pilot)
        table = app.query_one("#history-view", DataTable)
        spans, x = {}, 0
        for column in table.ordered_columns:
            width = column.get_render_width(table)
            spans[column.label.plain] = (x, x + width)
            x += width
        visible = table.scrollable_content_region.width
        assert spans["forced"][1] <= visible and spans["reason"][1] <= visible, (spans, visible)
        assert table.get_row_at(0)[1].plain == f"{LONG_NAMES['g1-initial']}\n→ {LONG_NAMES['g2-finetune']}"
        for _ in range(table.max_scroll_x + 5):  # → scrolls until the last column is on screen: all reachable
            await pilot.press("right")
        await settle(pilot)
        assert table.scroll_x == table.max_scroll_x > 0
        assert spans["report"][1] - table.scroll_x <= visible


async def _open_form(pilot, key: str, classes: str, arch: str) -> TrainFormModal:  # type: ignore[no-untyped-def]
    app = pilot.app
    await pilot.press(key)
    await wait_until(pilot, lambda: isinstance(app.screen, TrainFormModal), "the training form")
    form = app.screen
    form.query_one("#classes", Input).value = classes
    form.query_one("#arch", Input).value = arch
    await pilot.click("#confirm")  # the form is checked in a worker: wait for its answer
    def answered() -> bool:
        said = text_of(form.query_one("#form-error")).strip()
        return app.screen is not form or bool(said) and not said.startswith("checking")

    await wait_until(pilot, answered, "the form's check")
    await settle(pilot)
    return form


@pytest.mark.parametrize("key, classes, arch, said", [
    ("n", "Teapot", "small_cnn", "unknown class 'Teapot'"),
    ("n", "3-1", "small_cnn", "class range '3-1' is reversed"),
    ("t", "0-1", "resnet_narrow", "fine-tuning keeps the architecture (small_cnn)"),
])
async def test_the_training_form_refuses_what_cannot_train_before_the_review(
    fresh_ws: Path, key: str, classes: str, arch: str, said: str
) -> None:
    app = DashboardApp(fresh_ws, time_format=frozen_time)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        form = await _open_form(pilot, key, classes, arch)
        assert app.screen is form and not isinstance(app.screen, ConfirmModal)  # never as far as "Start training"
        assert said in text_of(form.query_one("#form-error")), text_of(form.query_one("#form-error"))
        form.query_one("#classes", Input).value = "0-1"
        form.query_one("#arch", Input).value = "small_cnn" if key == "n" else ""
        await pilot.click("#confirm")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal), "the review")  # fixed, it goes on
        assert "200 optimiser steps (100 for each of 2 classes, new and rehearsed)" in " ".join(
            text_of(app.screen.query_one("#dialog-text")).split())


async def test_the_generations_view_at_80x24_keeps_names_and_hashes_whole(long_named_ws: Path) -> None:
    app = DashboardApp(long_named_ws, time_format=frozen_time)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        panel = app.query_one("#details")
        shown = Console(width=panel.content_region.width, record=True, file=io.StringIO())
        shown.print(panel.content)  # as wide as the panel is at 80 columns
        details = shown.export_text()
        sha = app.snapshot.production.onnx_sha256
        assert sha in details.replace("\n", "").replace(" ", "") and "…" not in details  # folded, not cut
        table = app.query_one("#lineage", DataTable)
        assert any(row.plain.endswith(LONG_NAMES["g3-replacement"]) for row in table.get_column("name"))
        for _ in range(table.max_scroll_x + 5):  # → scrolls the lineage to its last column
            await pilot.press("right")
        await settle(pilot)
        assert table.scroll_x == table.max_scroll_x > 0


async def test_the_matrix_and_the_gallery_chart_show_whole_names_at_80x24(long_named_ws: Path) -> None:
    app = DashboardApp(long_named_ws, time_format=frozen_time)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        labels = [row[0].plain for row in (app.query_one("#matrix", DataTable).get_row_at(i) for i in range(2))]
        assert labels[0].startswith(f"1 {LONG_NAMES['g1-initial']}") and LONG_NAMES["g2-finetune"] in labels[1]
        await pilot.press("3")
        await settle(pilot)
        chart = app.query_one("#gallery-chart")
        shown = Console(width=chart.content_region.width, record=True, file=io.StringIO())
        shown.print(chart.content)
        lines = shown.export_text().splitlines()
        for name in (LONG_NAMES["g1-initial"], LONG_NAMES["g2-finetune"]):
            assert any(name in line and "%" in line for line in lines), lines  # name, bar and share on one line

