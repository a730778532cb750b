"""What the dashboard tests share besides fixtures: driving the Pilot until a condition holds, and
reading what widgets show. (A module of its own, not conftest: test modules import it by name.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from rich.console import Console
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import DataTable, Static
from textual.worker import WorkerCancelled

FROZEN = "2025-01-01 12:00"


def frozen_time(_: datetime) -> str:
    """Every timestamp as one fixed string, so screens do not depend on when the workspace was built."""
    return FROZEN


# A bound for a hung app, not an expected duration: the helpers below return as soon as their
# condition holds, and fail loudly (never return quietly) when it does not within this time.
HANG_SECONDS = 120.0


async def settle(pilot: Pilot) -> None:
    """Wait until every worker (and what it scheduled on the UI thread) is done and the app is quiet."""
    app = pilot.app
    quiet = 0
    deadline = time.monotonic() + HANG_SECONDS
    while quiet < 3:
        if time.monotonic() > deadline:
            raise AssertionError(f"the app never settled: workers {[w.name for w in app.workers]}")
        try:
            await app.workers.wait_for_complete()
        except WorkerCancelled:
            pass  # an exclusive worker superseded by a newer one (a refresh after a refresh): not an error
        await pilot.pause(0.02)
        busy = any(not w.is_finished for w in app.workers)
        quiet = 0 if busy else quiet + 1


async def wait_until(pilot: Pilot, condition: Callable[[], object], what: str) -> None:
    """Let the app run until ``condition()`` is true; fail naming ``what`` if it never becomes so."""
    deadline = time.monotonic() + HANG_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


def text_of(widget: Widget) -> str:
    """What a Static shows, as plain text."""
    assert isinstance(widget, Static)
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    console.print(widget.content)
    return console.export_text()


def rows_of(table: DataTable) -> list[list[str]]:
    """A DataTable's cells as plain strings, in display order."""
    return [[getattr(c, "plain", str(c)) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def select_generation(pilot: Pilot, name: str) -> None:
    """Move the lineage cursor to the row of ``name``."""
    table = pilot.app.query_one("#lineage", DataTable)
    for i, row in enumerate(rows_of(table)):
        if row[1].endswith(name):
            table.move_cursor(row=i)
            await settle(pilot)
            return
    raise AssertionError(f"{name} not in the lineage table")
