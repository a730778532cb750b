"""The upgrader dashboard: a Textual app over the ``upgrader`` services.

Four views (Generations, Compatibility, Gallery, History) and the actions a person takes every day
(verify, promote, roll back, fine-tune, replace), each behind a confirmation modal that says exactly what
will happen. Every service call runs in a thread worker with its own workspace connection, so the UI
stays responsive, and every error a service raises becomes a notification. No SQL and no torch here:
the actions live in :mod:`tui.flows`, their keys and palette entries in :mod:`tui.actions`, and
training imports the training pipeline only inside the action that trains.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from textual.app import App, ComposeResult, SystemCommand
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Header, TabbedContent, TabPane

from registry.errors import RegistryError
from tui.actions import bindings, palette_commands
from tui.flows.gate import GateFlow
from tui.flows.rollback import RollbackFlow
from tui.flows.training import TrainingFlow
from tui.help import HelpModal
from tui.render import TimeFormat, local_time
from tui.views.compatibility import CompatibilityView
from tui.views.gallery import GalleryView
from tui.views.generations import GenerationsView
from tui.views.history import HistoryView
from tui.views.training_panel import TrainingPanel
from upgrader.compat import gate
from upgrader.core.errors import GateRefused, TrainingCancelled, UpgraderError
from upgrader.services import dashboard_model as dashboard
from upgrader.services.matrix import MatrixView
from upgrader.services.workspace import Workspace, open_workspace

T = TypeVar("T")

VIEWS: tuple[str, ...] = ("generations", "compatibility", "gallery", "history")
#: Actions still allowed while a modal is open (everything else belongs to the main screen).
MODAL_SAFE = frozenset({"quit", "command_palette", "toggle_theme", "cancel_training"})


class DashboardApp(GateFlow, RollbackFlow, TrainingFlow, App[None]):
    """``upgrader dashboard``: the lineage, the gate and the gallery of one workspace."""

    CSS_PATH = "app.tcss"
    TITLE = "upgrader"
    BINDINGS = bindings()

    def __init__(
        self,
        home: str | Path,
        *,
        time_format: TimeFormat = local_time,
        gate_config: gate.GateConfig | None = None,
    ) -> None:
        """Args:
        home: the workspace folder.
        time_format: how timestamps are shown (tests freeze it so snapshots are stable).
        gate_config: margin / metric / improvement rule for verify, promote and rollback.
        """
        super().__init__()
        self.home = Path(home)
        self.time_format = time_format
        self.gate_config = gate_config or gate.GateConfig()
        self.snapshot: dashboard.DashboardSnapshot | None = None
        self.matrix: MatrixView | None = None
        self.live_only = False
        self._matrix_stale = True
        self._cancel: threading.Event | None = None
        self._training: str | None = None
        self._select_next: int | None = None

    # ---- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="generations", id="views"):
            with TabPane("1 Generations", id="generations"):
                yield GenerationsView(self.time_format, id="generations-view")
            with TabPane("2 Compatibility", id="compatibility"):
                yield CompatibilityView(id="compatibility-view")
            with TabPane("3 Gallery", id="gallery"):
                yield GalleryView(id="gallery-view")
            with TabPane("4 History", id="history"):
                yield HistoryView(self.time_format, id="history-view")
        panel = TrainingPanel(id="training")
        panel.display = False
        yield panel
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = self.home.name
        self.query_one("#lineage").focus()
        self.action_refresh()

    # ---- running services in threads ----------------------------------------------------------

    def run_service(
        self,
        fn: Callable[[Workspace], T],
        on_done: Callable[[T], Any],
        *,
        group: str = "service",
        exclusive: bool = False,
        on_error: Callable[[BaseException], Any] | None = None,
    ) -> None:
        """Run ``fn(ws)`` in a thread worker on its own connection; deliver the result on the UI thread.

        Any exception becomes a notification (and ``on_error`` is told), never a crash.
        """

        def body() -> None:
            try:
                with open_workspace(self.home) as ws:
                    result = fn(ws)
            except Exception as exc:  # every failure is reported, the app keeps running
                self.call_from_thread(self.report_error, exc)
                if on_error is not None:
                    self.call_from_thread(on_error, exc)
                return
            self.call_from_thread(on_done, result)

        self.run_worker(body, thread=True, group=group, exclusive=exclusive, exit_on_error=False)

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Textual's notification, but literal by default: messages quote names, reasons and service
        errors, and a user's ``[/]x`` must show as typed, not be parsed as markup (and crash the toast)."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    def report_error(self, exc: BaseException) -> None:
        """Show a service error as a notification."""
        if isinstance(exc, GateRefused):
            self.notify(str(exc), title="Refused by the gate", severity="error", timeout=15)
        elif isinstance(exc, TrainingCancelled):
            self.notify("Training cancelled; nothing was written.", title="Cancelled", severity="warning")
        elif isinstance(exc, (UpgraderError, RegistryError)):
            self.notify(str(exc), title=type(exc).__name__, severity="error", timeout=12)
        else:
            self.notify(f"{type(exc).__name__}: {exc}", title="Unexpected error", severity="error", timeout=12)

    # ---- data ---------------------------------------------------------------------------------

    def action_refresh(self) -> None:
        """Re-read the workspace (picks up what the CLI changed in another terminal)."""
        self._matrix_stale = True
        self.run_service(dashboard.load_snapshot, self._apply_snapshot, group="refresh", exclusive=True)

    def _apply_snapshot(self, snap: dashboard.DashboardSnapshot) -> None:
        self.snapshot = snap
        prod = snap.production.name if snap.production else "none yet"
        self.sub_title = f"{Path(snap.home).name} · production: {prod} · {len(snap.rows)} generations"
        gens = self.query_one(GenerationsView)
        if self._select_next is not None:
            gens.select_after_show(self._select_next)
            self._select_next = None
        gens.show(snap)
        self.query_one(GalleryView).show(snap.gallery)
        self.query_one(HistoryView).show(snap.history)
        if gens.selected_id is not None:
            self._load_details(gens.selected_id)
        if self.query_one(TabbedContent).active == "compatibility":
            self._load_matrix()

    def _load_details(self, gen_id: int) -> None:
        view = self.query_one(GenerationsView)
        self.run_service(lambda ws: dashboard.generation_details(ws, gen_id), view.show_details, group="details", exclusive=True)

    def on_generations_view_selected(self, message: GenerationsView.Selected) -> None:
        self._load_details(message.gen_id)

    def _load_matrix(self) -> None:
        view = self.query_one(CompatibilityView)
        view.show_pending(self.live_only)
        live_only = self.live_only

        def done(matrix: MatrixView) -> None:
            self.matrix = matrix
            self._matrix_stale = False
            view.show(matrix, live_only)

        self.run_service(
            lambda ws: dashboard.matrix_view(ws, live_only=live_only, metric=self.gate_config.primary_metric,
                                         margin=self.gate_config.margin),
            done,
            group="matrix",
            exclusive=True,
            on_error=lambda exc: view.show_error(f"the matrix could not be computed: {exc}"),
        )

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "compatibility" and self._matrix_stale:
            self._load_matrix()
        self._focus_view(event.pane.id or "")
        self.refresh_bindings()

    # ---- navigation ---------------------------------------------------------------------------

    def action_show_view(self, view: str) -> None:
        """Switch to one of the four views."""
        self.query_one(TabbedContent).active = view
        self._focus_view(view)

    def _focus_view(self, view: str) -> None:
        """Give the keyboard to the view's main widget (arrow keys then move in it)."""
        target = {"generations": "#lineage", "compatibility": "#matrix", "gallery": "#gallery-view", "history": "#history-view"}.get(view)
        if target:
            self.query_one(target).focus()

    def action_toggle_live(self) -> None:
        """Compatibility view: live generations only, or all of them."""
        self.live_only = not self.live_only
        self._load_matrix()

    def action_help(self) -> None:
        """Show every key and what each view holds (``?`` or F1)."""
        if not isinstance(self.screen, HelpModal):
            self.push_screen(HelpModal())

    def action_toggle_theme(self) -> None:
        """Switch between the light and the dark theme."""
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hide what does not apply: main-screen actions under a modal, cancel with no run, l off the matrix."""
        if isinstance(self.screen, ModalScreen) and action not in MODAL_SAFE:
            return False
        if action == "cancel_training":
            return self._training is not None
        if action == "toggle_live":
            try:
                return self.query_one(TabbedContent).active == "compatibility"
            except Exception:
                return False
        return True

    # ---- command palette ----------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every dashboard action, in the command palette (ctrl+p)."""
        yield from super().get_system_commands(screen)
        yield from palette_commands(self)
