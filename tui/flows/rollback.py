"""Rolling production back from the dashboard: the gate's judgement first, then a confirmation.

``b`` asks the gate before anything else (:func:`upgrader.services.dashboard_model.preview_rollback`,
the judgement :func:`upgrader.services.promotion.rollback` makes, nothing stored). A target with a
standing (it held production through an unforced move, or passes the compatibility checks now) that
reads the newer gallery items gets an ordinary confirmation. Any other is refused: the modal says why,
production stays, and the only way on is a forced rollback, which needs a reason and is recorded as
forced. Either way the move itself is :func:`~upgrader.services.promotion.rollback`, which judges
again, so the dashboard can never move production past the gate on a stale preview.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.text import Text

from tui.modals import ConfirmModal, Confirmed
from tui.views.generations import GenerationsView, render_checks
from upgrader.compat import gate
from upgrader.core.errors import GateRefused
from upgrader.core.markup import styled
from upgrader.services import dashboard_model as dashboard
from upgrader.services.promotion import Promotion, rollback

if TYPE_CHECKING:
    from collections.abc import Callable

#: What the refusal modal says when "Force rollback" is pressed without a reason.
FORCE_REASON_MISSING = "A forced rollback needs a reason: type why production must move anyway (it is recorded)."


class RollbackFlow:
    """The rollback action of :class:`tui.app.DashboardApp` (a mixin of it)."""

    # Provided by the app (declared for readers and type checkers).
    gate_config: gate.GateConfig
    snapshot: dashboard.DashboardSnapshot | None
    notify: Callable[..., None]
    query_one: Callable[..., Any]
    push_screen: Callable[..., Any]
    run_service: Callable[..., None]
    action_refresh: Callable[[], None]
    _gen_name: Callable[[int | None], str]

    def action_rollback(self) -> None:
        """Roll production back: to the highlighted generation, or (production highlighted) to the previous holder."""
        snap = self.snapshot
        if snap is None or snap.production is None:
            self.notify("No production generation: there is nothing to roll back.", severity="warning")
            return
        selected = self.query_one(GenerationsView).selected_id
        target = selected if selected is not None and selected != snap.production.id else None
        self.notify("Asking the gate about the rollback…")
        self._judge_rollback(target)

    def _judge_rollback(self, target: int | None) -> None:
        config = self.gate_config
        self.run_service(lambda ws: dashboard.preview_rollback(ws, target, config), self._rollback_review)

    def _rollback_review(self, pre: dashboard.RollbackPreview) -> None:
        if pre.passed:
            self._offer_rollback(pre)
        else:
            self._offer_forced_rollback(pre)

    def _rollback_body(self, pre: dashboard.RollbackPreview, lines: Iterable[Text]) -> Group:
        names = {r.generation.id: r.generation.name for r in self.snapshot.rows} if self.snapshot else {}
        verdict = Text(" PASSED ", style="bold black on green") if pre.passed else Text(" REFUSED ", style="bold white on red")
        checks = Text.assemble("the gate's rollback checks now ", verdict)
        return Group(*lines, Text(""), checks, *render_checks(pre.report, names))

    def _ground_line(self, pre: dashboard.RollbackPreview) -> Text:
        if pre.ground.passed:
            return styled("[green]✓[/] {}.", pre.ground.line)
        return styled("[red]✗[/] {}.", pre.ground.line)

    def _offer_rollback(self, pre: dashboard.RollbackPreview) -> None:
        newer = ", ".join(self._gen_name(j) for j in pre.newer) or "none (no newer live generation)"
        lines = [
            styled("production: [b]{}[/b] → [b]{}[/b]", pre.production.name, pre.target.name),
            self._ground_line(pre),
            styled("It reads the gallery items written since by: {} (M(old, j) ≥ M(j, j) − margin {}).",
                   newer, f"{self.gate_config.margin:.3f}"),
            Text("The gate judges again when you confirm; the move is recorded in the alias history."),
        ]

        def confirmed(answer: Confirmed | None) -> None:
            if answer is not None:
                self._roll_back(pre, answer.reason, force=False)

        self.push_screen(
            ConfirmModal(f"Roll back to {pre.target.name}?", self._rollback_body(pre, lines), confirm_label="Roll back",
                         ask_reason="reason (recorded in the alias history)", variant="warning"),
            confirmed,
        )

    def _offer_forced_rollback(self, pre: dashboard.RollbackPreview) -> None:
        prod, target = pre.production.name, pre.target.name
        self.notify(f"Rollback to {target} refused by the gate: production stays on {prod}.",
                    title="Refused by the gate", severity="error")
        lines = [
            styled("[b red]Rollback of production to {} refused by the gate.[/]", target),
            styled("Production stays on [b]{}[/b]; nothing moved.", prod),
            self._ground_line(pre),
            Text(""),
            styled("To roll back anyway, force it with a reason: the move is recorded as [b]forced[/b] in the "
                   "alias history, with the gate report that refused it."),
        ]

        def confirmed(answer: Confirmed | None) -> None:
            if answer is not None:
                self._roll_back(pre, answer.reason, force=True)

        self.push_screen(
            ConfirmModal(f"Rollback refused: {target}", self._rollback_body(pre, lines), confirm_label="Force rollback",
                         ask_reason="reason for forcing (required; recorded in the alias history)",
                         reason_required=FORCE_REASON_MISSING, variant="error"),
            confirmed,
        )

    def _roll_back(self, pre: dashboard.RollbackPreview, reason: str, *, force: bool) -> None:
        target, config = pre.target.id, self.gate_config

        def refused_meanwhile(exc: BaseException) -> None:
            # the workspace changed since the preview (another terminal): show the refusal as it is now
            if isinstance(exc, GateRefused):
                self._judge_rollback(target)

        self.run_service(lambda ws: rollback(ws, target, reason=reason, force=force, config=config),
                         self._rolled_back, on_error=refused_meanwhile)

    def _rolled_back(self, p: Promotion) -> None:
        m = p.move
        how = "rolled back, forced past the gate" if m.forced else "rolled back"
        self.notify(f"production {how}: {self._gen_name(m.from_gen)} → {self._gen_name(m.to_gen)} (gate report {m.gate_report_id})",
                    title="Rolled back (forced)" if m.forced else "Rolled back",
                    severity="warning" if m.forced else "information")
        self.action_refresh()
