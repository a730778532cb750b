"""SVG snapshots of every view at 100x30 (and the main view at 80x24) on the deterministic workspace.

Times are frozen through the app's ``time_format``; everything else on screen (ids, names, sha256,
self-tests, matrix values, gallery counts, actor) is the same on every build of the workspace.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pilot import frozen_time, settle

from tui.app import DashboardApp


@pytest.fixture(autouse=True)
def no_toasts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Toasts come and go on wall-clock time, so whether one is still up when the picture is taken
    depends on the machine's load (the refusal modal's picture differed under load). The views are
    what these pictures compare; the toasts' texts are checked by the Pilot tests."""
    monkeypatch.setattr(DashboardApp, "notify", lambda self, *args, **kwargs: None)


def _view(keys: tuple[str, ...]):
    async def run_before(pilot) -> None:
        await settle(pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot)

    return run_before


def test_generations_view(snap_compare, snapshot_ws: Path) -> None:
    assert snap_compare(DashboardApp(snapshot_ws, time_format=frozen_time), terminal_size=(100, 30), run_before=_view(()))


def test_generations_view_80x24(snap_compare, snapshot_ws: Path) -> None:
    assert snap_compare(DashboardApp(snapshot_ws, time_format=frozen_time), terminal_size=(80, 24), run_before=_view(("down",)))


def test_compatibility_view(snap_compare, snapshot_ws: Path) -> None:
    assert snap_compare(DashboardApp(snapshot_ws, time_format=frozen_time), terminal_size=(100, 30), run_before=_view(("2",)))


def test_gallery_view_light_theme(snap_compare, snapshot_ws: Path) -> None:
    assert snap_compare(DashboardApp(snapshot_ws, time_format=frozen_time), terminal_size=(100, 30), run_before=_view(("3", "d")))


def test_history_view(snap_compare, snapshot_ws: Path) -> None:
    assert snap_compare(DashboardApp(snapshot_ws, time_format=frozen_time), terminal_size=(100, 30), run_before=_view(("4",)))


def test_promotion_refused_modal(snap_compare, snapshot_ws: Path) -> None:
    assert snap_compare(DashboardApp(snapshot_ws, time_format=frozen_time), terminal_size=(100, 30), run_before=_view(("down", "p")))
