"""The training panel: live progress (epoch, step, loss, accuracy) of the run started from the form."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import ProgressBar, Static


class TrainingPanel(Horizontal):
    """Above the footer while a run is going (status line, then the bar); hidden otherwise."""

    def compose(self) -> ComposeResult:
        yield Static("", id="train-status")
        yield ProgressBar(total=None, show_eta=False, id="train-bar")

    def start(self, name: str) -> None:
        """Show the panel for a new run."""
        self.display = True
        self.add_class("running")
        self.query_one("#train-status", Static).update(Text.assemble(("training ", "bold"), name, " · preparing data… (x cancels)"))
        self.query_one(ProgressBar).update(total=None, progress=0)

    def update_progress(self, name: str, p: Any) -> None:
        """One progress report (a ``TrainProgress``: epoch, steps done of the run's, loss, accuracy over the
        last steps: the figure the run reports at its end)."""
        self.query_one("#train-status", Static).update(Text.assemble(
            ("training ", "bold"), name,
            f" · epoch {p.epoch}/{p.epochs} · step {p.done}/{p.total} · ",
            ("loss ", "bold"), f"{p.loss:.3f} · ", ("acc ", "bold"), f"{100 * p.accuracy:.1f} %",
            (" · x cancels", "dim"),
        ))
        self.query_one(ProgressBar).update(total=p.total, progress=p.done)

    def finishing(self, name: str) -> None:
        """Training ended; export and registration are running."""
        self.query_one("#train-status", Static).update(Text.assemble(("training ", "bold"), name, " · exporting to ONNX and registering…"))

    def stop(self) -> None:
        """Hide the panel."""
        self.display = False
        self.remove_class("running")
