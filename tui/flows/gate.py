"""The gate's actions in the dashboard: verify, promote and roll back, each behind a confirmation.

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
from upgrader.core.errors import UpgraderError
from upgrader.services import dashboard_model as dashboard
from upgrader.services.promotion import (
    Promotion,
    Verification,
    newer_gallery_generations,
    promote,
    rollback,
    rollback_target,
    verify,
)
from upgrader.services.workspace import Workspace

if TYPE_CHECKING:
    from collections.abc import Callable


class GateFlow:
    """The verify, promote and rollback actions of :class:`tui.app.DashboardApp` (a mixin of it)."""

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
        newer = [self._gen_name(j) for j in newer_gallery_generations(snap.live if snap else [], target.id)]
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


def _generation_named(snap: dashboard.DashboardSnapshot, gen_id: int):
    """The generation with ``gen_id`` from the snapshot the person is looking at."""
    for row in snap.rows:
        if row.generation.id == gen_id:
            return row.generation
    raise UpgraderError(f"generation {gen_id} is gone; refresh (r)")
