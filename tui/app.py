"""The upgrader dashboard: a Textual app over the ``upgrader`` services.

Four views (Generations, Compatibility, Gallery, History) and the actions a person takes every day
(verify, promote, roll back, fine-tune, replace), each behind a confirmation modal that says exactly what
will happen. Every service call runs in a thread worker with its own workspace connection, so the UI
stays responsive, and every error a service raises becomes a notification. No SQL and no torch here:
training is started through :mod:`upgrader.services.dashboard_model`, which loads the training side only then.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Group
from rich.text import Text
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Header, TabbedContent, TabPane

from registry.errors import RegistryError
from upgrader.services import dashboard_model as dashboard
from upgrader.compat import gate
from upgrader.core.errors import GateRefused, TrainingCancelled, UpgraderError
from upgrader.services.matrix import MatrixView
from upgrader.services.promotion import Promotion, Verification, promote, rollback, rollback_target, verify
from upgrader.services.workspace import Workspace, open_workspace

from tui.compatibility import CompatibilityView
from tui.gallery import GalleryView
from tui.generations import GenerationsView, render_report_line
from tui.history import HistoryView
from tui.modals import ConfirmModal, Confirmed, TrainFormModal
from tui.render import TimeFormat, local_time
from tui.training import TrainingPanel

T = TypeVar("T")

VIEWS: tuple[str, ...] = ("generations", "compatibility", "gallery", "history")
#: Actions still allowed while a modal is open (everything else belongs to the main screen).
MODAL_SAFE = frozenset({"quit", "command_palette", "toggle_theme", "cancel_training"})


class DashboardApp(App[None]):
    """``upgrader dashboard``: the lineage, the gate and the gallery of one workspace."""

    CSS_PATH = "app.tcss"
    TITLE = "upgrader"
    BINDINGS = [
        Binding("1", "show_view('generations')", "Generations", show=False),
        Binding("2", "show_view('compatibility')", "Compatibility", show=False),
        Binding("3", "show_view('gallery')", "Gallery", show=False),
        Binding("4", "show_view('history')", "History", show=False),
        Binding("v", "verify", "Verify"),
        Binding("p", "promote", "Promote"),
        Binding("b", "rollback", "Rollback"),
        Binding("t", "train('finetune')", "Fine-tune"),
        Binding("n", "train('replacement')", "Replace"),
        Binding("x", "cancel_training", "Cancel run"),
        Binding("l", "toggle_live", "Live/all"),
        Binding("r", "refresh", "Refresh"),
        Binding("d", "toggle_theme", "Light/dark"),
        Binding("q", "quit", "Quit"),
    ]

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
        yield Footer()

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
            lambda ws: dashboard.matrix_view(ws, live_only=live_only, metric=self.gate_config.primary_metric),
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

    # ---- helpers for actions ------------------------------------------------------------------

    def _gen_name(self, gen_id: int | None) -> str:
        return self.snapshot.name_of(gen_id) if self.snapshot else str(gen_id)

    def _selected(self) -> int | None:
        gen_id = self.query_one(GenerationsView).selected_id
        if gen_id is None:
            self.notify("Select a generation in the Generations view first.", severity="warning")
        return gen_id

    def _gate_scope(self) -> str:
        snap = self.snapshot
        live = ", ".join(self._gen_name(g) for g in snap.live) if snap and snap.live else "none"
        prod = snap.production.name if snap and snap.production else "none"
        return f"live generations: {live}; production: {prod}; margin {self.gate_config.margin:.3f}"

    def _verdict_body(self, v: Verification, lines: Iterable[str]) -> Group:
        names = {r.generation.id: r.generation.name for r in self.snapshot.rows} if self.snapshot else {}
        return Group(*(Text.from_markup(line) for line in lines), Text(""), render_report_line(v.report, names, self.time_format))

    # ---- verify -------------------------------------------------------------------------------

    def action_verify(self) -> None:
        """Run the gate for the highlighted generation (after confirmation)."""
        gen_id = self._selected()
        if gen_id is None:
            return
        name = self._gen_name(gen_id)
        body = "\n".join([
            f"Run the compatibility gate for [b]{name}[/b] ({self._gate_scope()}).",
            "Each live generation j: M(new queries, j's gallery) must beat j's self-test M(j, j).",
            "Improvement: its self-test must beat production's (unless waived).",
            f"Stores a gate report and marks {name} [b]verified[/b] or [b]rejected[/b].",
            "Production does not move.",
        ])

        def confirmed(answer: Confirmed | None) -> None:
            if answer is None:
                return
            self.notify(f"Running the gate for {name}…")
            self.run_service(lambda ws: verify(ws, gen_id, self.gate_config), self._verified)

        self.push_screen(ConfirmModal(f"Verify {name}?", Text.from_markup(body), confirm_label="Verify"), confirmed)

    def _verified(self, v: Verification) -> None:
        g = v.generation
        verdict = "passed" if v.verdict.passed else "refused"
        self.notify(f"Gate {verdict} for {g.name}: now {g.status} (report {v.report.id}).",
                    severity="information" if v.verdict.passed else "warning")
        self.push_screen(ConfirmModal(f"Gate {verdict}: {g.name}", self._verdict_body(v, [v.verdict.explain()]), can_confirm=False))
        self.action_refresh()

    # ---- promote ------------------------------------------------------------------------------

    def action_promote(self) -> None:
        """Run the gate for the highlighted generation, show its report, then promote on confirmation."""
        gen_id = self._selected()
        if gen_id is None:
            return
        if self.snapshot and self.snapshot.production and self.snapshot.production.id == gen_id:
            self.notify(f"{self._gen_name(gen_id)} is production already.", severity="warning")
            return
        self.notify(f"Running the gate for {self._gen_name(gen_id)} before promotion…")
        self.run_service(lambda ws: verify(ws, gen_id, self.gate_config), self._promote_review)

    def _promote_review(self, v: Verification) -> None:
        g = v.generation
        prod = self.snapshot.production.name if self.snapshot and self.snapshot.production else "none"
        self.action_refresh()
        if not v.verdict.passed:
            lines = [
                f"[b red]Promotion of {g.name} refused by the compatibility gate.[/]",
                f"Production stays on [b]{prod}[/b]; nothing moved. The refusal is stored as gate report {v.report.id}.",
                "",
                v.verdict.explain(),
            ]
            self.notify(f"Promotion of {g.name} refused: production stays on {prod}.", title="Refused by the gate", severity="error")
            self.push_screen(ConfirmModal(f"Promotion refused: {g.name}", self._verdict_body(v, lines), can_confirm=False))
            return
        lines = [
            f"The gate [b green]passed[/] for {g.name} (report {v.report.id}).",
            f"production: [b]{prod}[/b] → [b]{g.name}[/b]",
            f"{prod} becomes verified; serving picks up {g.name} without a restart; the gallery is not re-embedded.",
            "The alias history records who, when, this report, and the reason below.",
        ]

        def confirmed(answer: Confirmed | None) -> None:
            if answer is None:
                return
            self.run_service(
                lambda ws: promote(ws, g.id, reason=answer.reason, config=self.gate_config), self._promoted
            )

        self.push_screen(
            ConfirmModal(f"Promote {g.name}?", self._verdict_body(v, lines), confirm_label="Promote",
                         ask_reason="reason (recorded in the alias history)", variant="success"),
            confirmed,
        )

    def _promoted(self, p: Promotion) -> None:
        m = p.move
        self.notify(f"production: {self._gen_name(m.from_gen)} → {self._gen_name(m.to_gen)} (gate report {m.gate_report_id})",
                    title="Promoted")
        self.action_refresh()

    # ---- rollback -----------------------------------------------------------------------------

    def action_rollback(self) -> None:
        """Roll production back: to the highlighted generation, or (production highlighted) to the previous holder."""
        snap = self.snapshot
        if snap is None or snap.production is None:
            self.notify("No production generation: there is nothing to roll back.", severity="warning")
            return
        selected = self.query_one(GenerationsView).selected_id
        prod = snap.production

        def pick(ws: Workspace):
            if selected is not None and selected != prod.id:
                return _generation_named(snap, selected)
            return rollback_target(ws)

        self.run_service(pick, lambda target: self._rollback_review(prod, target))

    def _rollback_review(self, prod, target) -> None:
        snap = self.snapshot
        newer = [self._gen_name(j) for j in (snap.live if snap else []) if j > target.id]
        lines = [
            f"production: [b]{prod.name}[/b] → [b]{target.name}[/b]",
            f"The gate checks that {target.name} can read the gallery items written since: "
            + (", ".join(newer) if newer else "none (no newer live generation)")
            + f" (M(old, j) ≥ M(j, j) − margin {self.gate_config.margin:.3f}).",
            "A refusal leaves production unchanged. The move is recorded in the alias history.",
        ]

        def confirmed(answer: Confirmed | None) -> None:
            if answer is None:
                return
            self.run_service(
                lambda ws: rollback(ws, target.id, reason=answer.reason, config=self.gate_config), self._rolled_back
            )

        self.push_screen(
            ConfirmModal(f"Roll back to {target.name}?", Text.from_markup("\n".join(lines)), confirm_label="Roll back",
                         ask_reason="reason (recorded in the alias history)", variant="warning"),
            confirmed,
        )

    def _rolled_back(self, p: Promotion) -> None:
        m = p.move
        self.notify(f"production rolled back: {self._gen_name(m.from_gen)} → {self._gen_name(m.to_gen)}", title="Rolled back")
        self.action_refresh()

    # ---- training -----------------------------------------------------------------------------

    def action_train(self, kind: str) -> None:
        """Open the training form (fine-tune or replacement)."""
        if self._training is not None:
            self.notify(f"{self._training} is still training; cancel it with x or wait.", severity="warning")
            return
        dataset = self.snapshot.dataset if self.snapshot else ""
        self.push_screen(TrainFormModal(kind, dataset), self._plan_training)

    def _plan_training(self, form: dashboard.TrainForm | None) -> None:
        if form is None:
            return
        self.notify("Checking the request…")
        self.run_service(lambda ws: dashboard.plan_training(ws, form), self._review_training)

    def _review_training(self, plan: dashboard.TrainingPlan) -> None:
        def confirmed(answer: Confirmed | None) -> None:
            if answer is not None:
                self.start_training(plan)

        self.push_screen(
            ConfirmModal(f"Train {plan.name}?", Text.from_markup("\n".join(plan.describe())), confirm_label="Start training"),
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
            final = p.epoch == p.epochs and p.step == p.steps
            if final or now - last[0] >= 0.1:  # at most ~10 UI updates a second
                last[0] = now
                self.call_from_thread(panel.update_progress, plan.name, p)
                if final:
                    self.call_from_thread(panel.finishing, plan.name)

        def body() -> None:
            try:
                # torch loads here, once a person starts a run, never with the dashboard
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

    # ---- command palette ----------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every dashboard action, in the command palette (ctrl+p)."""
        yield from super().get_system_commands(screen)
        yield SystemCommand("Show generations", "The lineage and the details of one generation (1)", lambda: self.action_show_view("generations"))
        yield SystemCommand("Show compatibility matrix", "Heatmap of C[query gen][gallery gen] with AC and AM (2)", lambda: self.action_show_view("compatibility"))
        yield SystemCommand("Show gallery composition", "Items per generation, share on old generations (3)", lambda: self.action_show_view("gallery"))
        yield SystemCommand("Show alias history", "Every move of production (4)", lambda: self.action_show_view("history"))
        yield SystemCommand("Verify selected generation", "Run the compatibility gate and store a report (v)", self.action_verify)
        yield SystemCommand("Promote selected generation", "Gate report first, then move production (p)", self.action_promote)
        yield SystemCommand("Roll back production", "To the selected or the previous generation (b)", self.action_rollback)
        yield SystemCommand("Fine-tune production", "Train a fine-tune on new classes (t)", lambda: self.action_train("finetune"))
        yield SystemCommand("Train a replacement", "A new architecture on the same interface (n)", lambda: self.action_train("replacement"))
        yield SystemCommand("Cancel training", "Stop the running training; nothing is written (x)", self.action_cancel_training)
        yield SystemCommand("Refresh", "Re-read the workspace, e.g. after CLI changes (r)", self.action_refresh)
        yield SystemCommand("Toggle live / all generations", "Scope of the compatibility matrix (l)", self.action_toggle_live)
        yield SystemCommand("Toggle light / dark theme", "Switch theme (d)", self.action_toggle_theme)


def _generation_named(snap: dashboard.DashboardSnapshot, gen_id: int):
    """The generation with ``gen_id`` from the snapshot the person is looking at."""
    for row in snap.rows:
        if row.generation.id == gen_id:
            return row.generation
    raise UpgraderError(f"generation {gen_id} is gone; refresh (r)")
