"""The help screen (``?`` or F1): every key and what it does, and what each view shows.

The keys come from :data:`tui.actions.ACTIONS`, so the help cannot name a key that does nothing or
miss one that does; the views' lines are kept here as data.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from tui.actions import ACTIONS

#: What each view shows, one line each (the keys 1-4 switch to them).
VIEWS_HELP: tuple[tuple[str, str], ...] = (
    ("1 Generations", "the lineage (★ production); the highlighted one's config, artifact and gate reports below"),
    ("2 Compatibility", "C[query gen][gallery gen] with ✓/✗ per pair, AC and AM over the generations named above it"),
    ("3 Gallery", "items per generation, and the share still on old generations"),
    ("4 History", "every move of production: from → to, forced, reason, when, by whom, the gate report"),
)
TIPS = ("← → scroll a wide table; ↑ ↓ move the highlight; ctrl+p searches every action; "
        "escape closes this screen and any dialog")


def help_text() -> Table:
    """The keys, then the views, as one table."""
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True, style="bold")
    table.add_column()
    for a in ACTIONS:
        what = a.help or a.label
        table.add_row(a.key + (" / F1" if a.action == "help" else ""), Text(f"{a.title or a.label}: {what}"))
    table.add_row("", "")
    for view, line in VIEWS_HELP:
        table.add_row(view, Text(line))
    table.add_row("", "")
    table.add_row("", Text(TIPS, style="dim"))
    return table


class HelpModal(ModalScreen[None]):
    """Every key of the dashboard; ``?``, F1 or escape closes it."""

    BINDINGS = [Binding("escape,question_mark,f1", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help", classes="dialog"):
            yield Label("upgrader dashboard: keys", id="dialog-title")
            with VerticalScroll(id="dialog-body"):
                yield Static(help_text(), id="help-text")
            with Vertical(id="dialog-buttons"):
                yield Button("Close", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#cancel").focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
