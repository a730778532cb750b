"""Every dashboard action once: its key, its footer label and its command-palette entry.

The key bindings and the palette are both built from :data:`ACTIONS`, so an action cannot be
reachable from one and missing from the other, and its key is named the same way in both.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from textual.app import App, SystemCommand
from textual.binding import Binding


@dataclass(frozen=True)
class Action:
    """One thing a person can do in the dashboard."""

    key: str  # the key that runs it
    action: str  # Textual action string, e.g. "train('finetune')"
    label: str  # footer label
    title: str | None  # command-palette title (None: not in the palette)
    help: str = ""  # command-palette description; the key is appended
    footer: bool = True  # shown in the footer (the view keys 1-4 are not: the tabs show them)
    keys: str = ""  # Textual key names bound to it when ``key`` is not one ("?" is "question_mark")


ACTIONS: tuple[Action, ...] = (
    Action("1", "show_view('generations')", "Generations", "Show generations",
           "The lineage and the details of one generation", footer=False),
    Action("2", "show_view('compatibility')", "Compatibility", "Show compatibility matrix",
           "Heatmap of C[query gen][gallery gen] with AC and AM", footer=False),
    Action("3", "show_view('gallery')", "Gallery", "Show gallery composition",
           "Items per generation, share on old generations", footer=False),
    Action("4", "show_view('history')", "History", "Show alias history", "Every move of production", footer=False),
    Action("v", "verify", "Verify", "Verify selected generation", "Run the compatibility gate and store a report"),
    Action("p", "promote", "Promote", "Promote selected generation", "Gate report first, then move production"),
    Action("b", "rollback", "Rollback", "Roll back production", "To the selected or the previous generation"),
    Action("t", "train('finetune')", "Fine-tune", "Fine-tune production", "Train a fine-tune on new classes"),
    Action("n", "train('replacement')", "Replace", "Train a replacement", "A new architecture on the same interface"),
    # x, l, r and d stay off the footer so that it fits 80 columns: the training panel says "x cancels",
    # the matrix's summary says what l does, and ? and the palette list all four.
    Action("x", "cancel_training", "Cancel run", "Cancel training", "Stop the running training; nothing is written",
           footer=False),
    Action("l", "toggle_live", "Live/all", "Toggle live / all generations", "Scope of the compatibility matrix",
           footer=False),
    Action("r", "refresh", "Refresh", "Refresh", "Re-read the workspace, e.g. after CLI changes", footer=False),
    Action("d", "toggle_theme", "Light/dark", "Toggle light / dark theme", "Switch theme", footer=False),
    Action("?", "help", "Help", "Show help", "Every key and what it does (also F1)", keys="question_mark,f1"),
    Action("q", "quit", "Quit", None),  # the palette lists Quit among Textual's own commands
)


def bindings() -> list[Binding]:
    """The key bindings, in the order the footer shows them."""
    return [Binding(a.keys or a.key, a.action, a.label, show=a.footer, key_display=a.key) for a in ACTIONS]


def palette_commands(app: App[object]) -> Iterable[SystemCommand]:
    """The command-palette entries: each runs the same action as its key."""
    for a in ACTIONS:
        if a.title is not None:
            yield SystemCommand(a.title, f"{a.help} ({a.key})", functools.partial(app.run_action, a.action))
