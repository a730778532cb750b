"""The gate's actions in the dashboard: verify and promote, each behind a confirmation (roll back:
:mod:`tui.flows.rollback`).

Every step runs the real services (:mod:`upgrader.services.promotion`) in a thread worker; the
confirmation says what will happen, a refusal explains itself and leaves production where it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.text import Text

from tui.modals import ConfirmModal, Confirmed
from tui.render import TimeFormat
from tui.views.generations import GenerationsView, render_report_line
from upgrader.compat import gate
from upgrader.core.markup import literal, styled
from upgrader.services import dashboard_model as dashboard
from upgrader.services.promotion import Promotion, Verification, promote, verify

if TYPE_CHECKING:
    from collections.abc import Callable


class GateFlow:
    """The verify and promote actions of :class:`tui.app.DashboardApp` (a mixin of it)."""

    # Provided by the app (declared for readers and type checkers).
    home: Path
    time_format: TimeFormat
    gate_config: gate.GateConfig
    snapshot: dashboard.DashboardSnapshot | None
    notify: Callable[..., None]
    query_one: Callable[..., Any]
    push_screen: Callable[..., Any]
    run_service: Callable[..., None]
    action_refresh: Callable[[], None]

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

    def _verdict_body(self, v: Verification, lines: Iterable[Text]) -> Group:
        names = {r.generation.id: r.generation.name for r in self.snapshot.rows} if self.snapshot else {}
        return Group(*lines, Text(""), render_report_line(v.report, names, self.time_format))

    # ---- verify -------------------------------------------------------------------------------

    def action_verify(self) -> None:
        """Run the gate for the highlighted generation (after confirmation)."""
        gen_id = self._selected()
        if gen_id is None:
            return
        name = self._gen_name(gen_id)
        body = Text("\n").join([
            styled("Run the compatibility gate for [b]{}[/b] ({}).", name, self._gate_scope()),
            Text("Each live generation j: M(new queries, j's gallery) must beat j's self-test M(j, j)."),
            Text("Improvement: its self-test must beat production's (unless waived)."),
            styled("Stores a gate report and marks {} [b]verified[/b] or [b]rejected[/b].", name),
            Text("Production does not move."),
        ])

        def confirmed(answer: Confirmed | None) -> None:
            if answer is None:
                return
            self.notify(f"Running the gate for {name}…")
            self.run_service(lambda ws: verify(ws, gen_id, self.gate_config), self._verified)

        self.push_screen(ConfirmModal(f"Verify {name}?", body, confirm_label="Verify"), confirmed)

    def _verified(self, v: Verification) -> None:
        g = v.generation
        verdict = "passed" if v.verdict.passed else "refused"
        self.notify(f"Gate {verdict} for {g.name}: now {g.status} (report {v.report.id}).",
                    severity="information" if v.verdict.passed else "warning")
        self.push_screen(ConfirmModal(f"Gate {verdict}: {g.name}", self._verdict_body(v, [literal(v.verdict.explain())]), can_confirm=False))
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
                styled("[b red]Promotion of {} refused by the compatibility gate.[/]", g.name),
                styled("Production stays on [b]{}[/b]; nothing moved. The refusal is stored as gate report {}.",
                       prod, v.report.id),
                Text(""),
                literal(v.verdict.explain()),
            ]
            self.notify(f"Promotion of {g.name} refused: production stays on {prod}.", title="Refused by the gate", severity="error")
            self.push_screen(ConfirmModal(f"Promotion refused: {g.name}", self._verdict_body(v, lines), can_confirm=False))
            return
        lines = [
            styled("The gate [b green]passed[/] for {} (report {}).", g.name, v.report.id),
            styled("production: [b]{}[/b] → [b]{}[/b]", prod, g.name),
            styled("{} becomes verified; serving picks up {} without a restart; the gallery is not re-embedded.",
                   prod, g.name),
            Text("The alias history records who, when, this report, and the reason below."),
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
