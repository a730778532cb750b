"""Rolling back from the dashboard goes through the gate's rollback rule (issue 14, item 1).

A target that never held production through an unforced move and fails the compatibility checks now
(g3-replacement, an `er` replacement the gate rejected) is refused with the report's reasons, and
production does not move; only a forced rollback with a reason moves it, recorded as forced. A target
that held production unforced and reads the newer items rolls back without force.
"""

from __future__ import annotations

from pathlib import Path

from pilot import frozen_time, rows_of, select_generation, settle, text_of
from textual.widgets import DataTable, Input

from tui.app import DashboardApp
from tui.flows.rollback import FORCE_REASON_MISSING
from tui.modals import ConfirmModal
from upgrader.services.dashboard_model import alias_history
from upgrader.services.workspace import open_workspace


def last_move(home: Path):  # type: ignore[no-untyped-def]
    """The newest move of production as the services see it (not as the dashboard shows it)."""
    with open_workspace(home) as ws:
        return alias_history(ws)[-1]


def notes(app: DashboardApp) -> list[tuple[str, str]]:
    return [(n.severity, n.message) for n in app._notifications]


def modal(app: DashboardApp) -> tuple[str, str]:
    """(title, body) of the open confirmation modal."""
    assert isinstance(app.screen, ConfirmModal), (type(app.screen), notes(app))
    return text_of(app.screen.query_one("#dialog-title")).strip(), text_of(app.screen.query_one("#dialog-text"))


async def test_rollback_to_a_refused_generation_is_refused_unless_forced_with_a_reason(snapshot_ws: Path) -> None:
    before = last_move(snapshot_ws).move
    app = DashboardApp(snapshot_ws, time_format=frozen_time)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await select_generation(pilot, "g3-replacement")
        await pilot.press("b")
        await settle(pilot)
        title, body = modal(app)
        assert title == "Rollback refused: g3-replacement"
        assert "Rollback of production to g3-replacement refused by the gate." in body
        assert "Production stays on g2-finetune; nothing moved." in body
        assert "✗ g3-replacement never held production through an unforced move and fails" in body
        assert "✗ compatibility: gen g3-replacement queries on gen g1-initial gallery" in body  # the reasons ...
        assert "REFUSED" in body and "recorded as forced" in body  # ... and the way on
        assert app.screen.query_one("#confirm").label.plain == "Force rollback"
        assert ("error", "Rollback to g3-replacement refused by the gate: production stays on g2-finetune.") in notes(app)

        await pilot.press("escape")  # cancel: nothing moves
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmModal) and last_move(snapshot_ws).move.id == before.id

        await pilot.press("b")
        await settle(pilot)
        await pilot.press("enter")  # "Force rollback" with no reason: the modal stays and says why
        await settle(pilot)
        assert isinstance(app.screen, ConfirmModal)
        assert FORCE_REASON_MISSING in text_of(app.screen.query_one("#dialog-error"))
        assert last_move(snapshot_ws).move.id == before.id

        app.screen.query_one("#reason", Input).value = "g2 serves garbage since the outage"
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.production.name == "g3-replacement"
        assert any(s == "warning" and m.startswith("production rolled back, forced past the gate: g2-finetune → g3-replacement")
                   for s, m in notes(app))
        await pilot.press("4")
        await settle(pilot)
        newest = rows_of(app.query_one("#history-view", DataTable))[0]
        assert newest[1] == "g2-finetune\n→ g3-replacement" and newest[2].strip() == "FORCED"
        assert newest[3] == "g2 serves garbage since the outage"
    entry = last_move(snapshot_ws)
    assert entry.to_name == "g3-replacement" and entry.move.forced
    with open_workspace(snapshot_ws) as ws:  # the forced move points at the report that refused it
        report = ws.registry.get_gate_report(entry.move.gate_report_id)
    assert report.kind == "rollback" and not report.passed


async def test_a_rollback_with_a_standing_is_not_forced(fresh_ws: Path) -> None:
    app = DashboardApp(fresh_ws, time_format=frozen_time)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await select_generation(pilot, "g2-finetune")
        await pilot.press("p")  # through the gate: g1 held production, now g2 does, both unforced
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.production.name == "g2-finetune", notes(app)
        await pilot.press("b")  # production highlighted: back to the previous holder
        await settle(pilot)
        title, body = modal(app)
        assert title == "Roll back to g1-initial?" and "production: g2-finetune → g1-initial" in body
        assert "✓ g1-initial held production from" in body and "PASSED" in body
        app.screen.query_one("#reason", Input).value = "g2 is slower"
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.production.name == "g1-initial"
    entry = last_move(fresh_ws)
    assert entry.to_name == "g1-initial" and not entry.move.forced and entry.move.reason == "g2 is slower"
