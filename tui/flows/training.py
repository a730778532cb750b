"""Training from the dashboard: the form, the plan to confirm, the run in a worker, cancellation.

The plan is checked by the torch-free services; torch loads only inside the worker, once a person
starts a run (``upgrader.training.pipeline``), never with the dashboard itself.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from tui.modals import ConfirmModal, Confirmed, TrainFormModal
from tui.views.training_panel import TrainingPanel
from upgrader.core.extras import requires_extra
from upgrader.services import dashboard_model as dashboard
from upgrader.services.workspace import open_workspace

if TYPE_CHECKING:
    from collections.abc import Callable


class TrainingFlow:
    """The fine-tune, replacement and cancel actions of :class:`tui.app.DashboardApp` (a mixin of it)."""

    # Provided by the app (declared for readers and type checkers).
    home: Path
    snapshot: dashboard.DashboardSnapshot | None
    _cancel: threading.Event | None
    _training: str | None
    _select_next: int | None
    notify: Callable[..., None]
    query_one: Callable[..., Any]
    push_screen: Callable[..., Any]
    run_service: Callable[..., None]
    run_worker: Callable[..., Any]
    call_from_thread: Callable[..., Any]
    refresh_bindings: Callable[[], None]
    report_error: Callable[[BaseException], None]
    action_refresh: Callable[[], None]

    def action_train(self, kind: str) -> None:
        """Open the training form (fine-tune or replacement)."""
        if self._training is not None:
            self.notify(f"{self._training} is still training; cancel it with x or wait.", severity="warning")
            return
        dataset = self.snapshot.dataset if self.snapshot else ""
        self.push_screen(TrainFormModal(kind, dataset, self._plan), self._review_training)

    def _plan(self, form: dashboard.TrainForm) -> dashboard.TrainingPlan:
        """Check the form on a connection of its own (the form calls this from a thread worker)."""
        with open_workspace(self.home) as ws:
            return dashboard.plan_training(ws, form)

    def _review_training(self, plan: dashboard.TrainingPlan | None) -> None:
        if plan is None:
            return

        def confirmed(answer: Confirmed | None) -> None:
            if answer is not None:
                self.start_training(plan)

        self.push_screen(
            ConfirmModal(f"Train {plan.name}?", Text("\n").join(plan.describe()), confirm_label="Start training"),
            confirmed,
        )

    def start_training(self, plan: dashboard.TrainingPlan) -> None:
        """Train in a thread worker; progress streams into the panel; x cancels."""
        cancel = threading.Event()
        self._cancel, self._training = cancel, plan.name
        panel = self.query_one(TrainingPanel)
        panel.start(plan.name)
        self.refresh_bindings()
        last = [0.0]

        def progress(p: Any) -> None:
            now = time.monotonic()
            final = p.done == p.total
            if final or now - last[0] >= 0.1:  # at most ~10 UI updates a second
                last[0] = now
                self.call_from_thread(panel.update_progress, plan.name, p)
                if final:
                    self.call_from_thread(panel.finishing, plan.name)

        def body() -> None:
            try:
                # torch loads here, once a person starts a run, never with the dashboard; an install
                # without the training extra says which extra to add, as the CLI does
                with requires_extra():
                    from upgrader.training.pipeline import train_and_register

                with open_workspace(self.home) as ws:
                    gen = train_and_register(ws, plan.request, progress=progress, cancel=cancel).generation
            except Exception as exc:
                self.call_from_thread(self.report_error, exc)
                gen = None
            self.call_from_thread(self._trained, gen)

        self.run_worker(body, thread=True, group="train", exclusive=True, exit_on_error=False)

    def _trained(self, gen) -> None:
        self._cancel, self._training = None, None
        self.query_one(TrainingPanel).stop()
        self.refresh_bindings()
        if gen is not None:
            self.notify(f"{gen.name} registered as a candidate; verify and promote it when ready.", title="Training done")
            self._select_next = gen.id
            self.action_refresh()

    def action_cancel_training(self) -> None:
        """Stop the running training after its current step; nothing is written."""
        if self._cancel is None:
            self.notify("No training is running.", severity="warning")
            return
        self._cancel.set()
        self.notify(f"Cancelling {self._training} after the current step…", severity="warning")
