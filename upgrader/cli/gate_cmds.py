"""`verify`, `promote`, `rollback`, `matrix`: the compatibility gate from the command line."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from registry import AliasMove

from upgrader.cli.common import HomeOption, JsonOption, console, handle_errors, print_json, styled, usage_error, workspace
from upgrader.compat.gate import GateConfig
from upgrader.compat.metrics import DEFAULT_PRIMARY_METRIC
from upgrader.compat.verdict import GateVerdict
from upgrader.core.errors import GateRefused
from upgrader.core.formatting import pct
from upgrader.services.matrix import MatrixView, compatibility_matrix
from upgrader.services.promotion import promote as promote_service
from upgrader.services.promotion import rollback as rollback_service
from upgrader.services.promotion import verify as verify_service

Margin = Annotated[float, typer.Option(help="Required margin over the old self-test (metric units, 0..1).")]
Metric = Annotated[str, typer.Option(help="Primary metric: template_top1, recall_at_1 or mean_ap.")]
Generation = Annotated[str, typer.Argument(help="Generation id or name.")]
Reason = Annotated[str, typer.Option(help="Why; recorded in the alias history.")]
Actor = Annotated[str | None, typer.Option(help="Who moves production (default: your login name).")]
MixedTolerance = Annotated[float | None, typer.Option(
    help="Also require the mixed-gallery estimate within this much (0..1) of a re-index; default: report only.")]


ForcePromote = Annotated[bool, typer.Option("--force", help="Promote even if the gate refuses (needs --reason).")]
ForceRollback = Annotated[bool, typer.Option("--force", help="Roll back even if the gate refuses (needs --reason).")]


def _move_line(move: AliasMove, names: dict[int, str]) -> Text:
    """'FORCED from -> to' as the promote and rollback commands print it."""
    before = names.get(move.from_gen, "-") if move.from_gen else "-"
    return styled(("[bold red]FORCED[/] " if move.forced else "") + "{} -> [bold]{}[/]", before, names[move.to_gen])


def register(app: typer.Typer) -> None:
    """Attach this module's commands."""
    app.command("verify")(verify)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("matrix")(matrix)


def _config(
    margin: float, metric: str, waive_improvement: bool = False, mixed_tolerance: float | None = None
) -> GateConfig:
    try:
        return GateConfig(margin=margin, primary_metric=metric, require_improvement=not waive_improvement,
                          mixed_tolerance=mixed_tolerance)
    except ValueError as exc:  # an out-of-range flag is a usage error (exit 2), not a crash
        raise typer.BadParameter(str(exc)) from None


def _mixed_line(mixed: dict[str, Any] | None) -> Text | None:
    """The mixed-gallery estimate of a report dict as one printed line (None when the gate made none)."""
    if not mixed:
        return None
    diff = 100 * (mixed["mixed"] - mixed["reindex"])
    colour = "green" if diff >= 0 else "yellow"
    return styled(f"mixed gallery estimate (template top-1): {{}}% vs {{}}% after a re-index, [{colour}]{{}} points[/] "
                  "over {} classes", pct(mixed["mixed"]), pct(mixed["reindex"]), f"{diff:+.1f}", mixed["classes"])


def _force_needs_reason(force: bool, reason: str) -> None:
    """The CLI's own check of its flags, worded with them, before any work (exit 2)."""
    if force and not reason.strip():
        usage_error("--force needs --reason TEXT: the override is recorded in the alias history")


def _checks_table(verdict: GateVerdict, names: dict[int, str]) -> Table:
    t = Table(title=styled("gate ({}) for {}: " + ("[green]PASSED[/]" if verdict.passed else "[red]REFUSED[/]"),
                           verdict.kind, names.get(verdict.candidate, verdict.candidate)))
    for col in ("check", "queries", "gallery", verdict.primary_metric, "threshold", "result"):
        t.add_column(col)
    for c in verdict.checks:
        # The mixed estimate is always template top-1, whatever the column's metric.
        kind = "mixed (template top-1)" if c.kind == "mixed" and verdict.primary_metric != "template_top1" else c.kind
        gallery_cell = "mixed" if c.kind == "mixed" else names.get(c.gallery_gen, str(c.gallery_gen))
        t.add_row(kind, names.get(c.query_gen, str(c.query_gen)), gallery_cell,
                  pct(c.value), f"{c.comparison} {pct(c.threshold)}", styled("[green]ok[/]" if c.passed else "[red]FAIL[/]"))
    return t


@handle_errors
def verify(
    generation: Generation,
    home: HomeOption = None,
    margin: Margin = 0.0,
    metric: Metric = DEFAULT_PRIMARY_METRIC,
    waive_improvement: Annotated[bool, typer.Option(help="Do not require beating production's self-test.")] = False,
    mixed_tolerance: MixedTolerance = None,
    json_out: JsonOption = False,
) -> None:
    """Run the compatibility gate for a generation and store the report (verified or rejected).

    Example: upgrader verify g2-finetune-small_cnn-hoc --margin 0.01
    """
    with workspace(home) as ws:
        run = verify_service(ws, generation, _config(margin, metric, waive_improvement, mixed_tolerance))
        names = {g.id: g.name for g in ws.registry.list_generations()}
    if json_out:
        print_json({"report_id": run.report.id, "status": run.generation.status, **run.verdict.to_dict()})
    else:
        console.print(_checks_table(run.verdict, names))
        if run.verdict.mixed is not None:
            console.print(_mixed_line(run.verdict.mixed.to_dict()))
            console.print(styled("  [dim]{}[/]", run.verdict.mixed.ownership()))
        for line in run.verdict.reasons:
            console.print(styled("  [red]-[/] {}", line))
        console.print(styled("report {}: {} is now [bold]{}[/]", run.report.id, run.generation.name, run.generation.status))
    if not run.verdict.passed:
        raise typer.Exit(3)


@handle_errors
def promote(
    generation: Generation,
    home: HomeOption = None,
    force: ForcePromote = False,
    reason: Reason = "",
    actor: Actor = None,
    margin: Margin = 0.0,
    metric: Metric = DEFAULT_PRIMARY_METRIC,
    waive_improvement: Annotated[bool, typer.Option(help="Do not require beating production's self-test.")] = False,
    mixed_tolerance: MixedTolerance = None,
    json_out: JsonOption = False,
) -> None:
    """Move production to a generation once the gate passes for its exact artifact.

    Exit code 3 (and production unchanged) when the gate refuses.
    Example: upgrader promote g2-finetune-small_cnn-hoc --reason "adds sandals and shirts"
    """
    _force_needs_reason(force, reason)
    with workspace(home) as ws:
        try:
            done = promote_service(ws, generation, actor=actor, reason=reason, force=force,
                                   config=_config(margin, metric, waive_improvement, mixed_tolerance))
        except GateRefused as exc:
            if json_out:
                print_json({"promoted": False, "report_id": exc.report_id, "error": str(exc)})
            raise
        names = {g.id: g.name for g in ws.registry.list_generations()}
    if json_out:
        print_json({"promoted": True, **{k: v for k, v in vars(done).items() if k != "report"},
                    "report_id": done.report.id if done.report else None})
        return
    m = done.move
    console.print(Text("production: ") + _move_line(m, names)
                  + Text(f" (gate report {m.gate_report_id}{', reused' if done.reused_report else ''}; by {m.actor}: {m.reason})"))
    line = _mixed_line(done.report.report.get("mixed")) if done.report else None
    if line:
        console.print(line)


@handle_errors
def rollback(
    generation: Annotated[str | None, typer.Argument(help="Generation to roll back to (default: the previous production).")] = None,
    home: HomeOption = None,
    force: ForceRollback = False,
    reason: Reason = "",
    actor: Actor = None,
    margin: Margin = 0.0,
    metric: Metric = DEFAULT_PRIMARY_METRIC,
    json_out: JsonOption = False,
) -> None:
    """Move production back to an older generation, if it has a standing and reads the items written since.

    The target must have held production before through an unforced move, or pass the gate's
    compatibility checks now (no improvement needed); either way it must read the gallery items written
    after it. Exit code 3 (and production unchanged) otherwise; --force --reason overrides the gate
    (recorded as forced), never a failed artifact checksum.
    Example: upgrader rollback --reason "latency regression"
    """
    _force_needs_reason(force, reason)
    with workspace(home) as ws:
        try:
            done = rollback_service(ws, generation, actor=actor, reason=reason, force=force, config=_config(margin, metric))
        except GateRefused as exc:
            if json_out:
                print_json({"rolled_back": False, "report_id": exc.report_id, "error": str(exc)})
            raise
        names = {g.id: g.name for g in ws.registry.list_generations()}
    if json_out:
        print_json({"rolled_back": True, "move": done.move, "forced": done.forced,
                    "report_id": done.report.id if done.report else None,
                    "ground": done.ground.to_dict() if done.ground else None})
        return
    m = done.move
    console.print(Text("production rolled back: ") + _move_line(m, names) + Text(f" (report {m.gate_report_id})"))
    if done.ground is not None:
        console.print(styled("  [dim]{}[/]", done.ground.line))


@handle_errors
def matrix(
    home: HomeOption = None,
    live: Annotated[bool, typer.Option("--live", help="Only generations with items in the gallery.")] = False,
    generations: Annotated[list[str] | None, typer.Option("--gen", help="Generations to include (repeat).")] = None,
    metric: Metric = DEFAULT_PRIMARY_METRIC,
    margin: Margin = 0.0,
    json_out: JsonOption = False,
) -> None:
    """Print the compatibility matrix C[query gen][gallery gen] with AC and AM.

    A lower-triangle cell is green when the gate would accept that pair with this margin, red when not.
    Example: upgrader matrix --metric recall_at_1 --margin 0.01
    """
    with workspace(home) as ws:
        view = compatibility_matrix(ws, generations, live_only=live, metric=metric, margin=margin)
    if json_out:
        print_json({
            "generations": [{"id": g.id, "name": g.name} for g in view.generations], "metric": view.metric,
            "matrix": view.matrix, "ac": view.average_compatibility, "am": view.average_multimodel_accuracy,
            "production": view.production, "live": view.live, "margin": view.margin, "passes": view.passes,
        })
        return
    console.print(render_matrix(view))


def render_matrix(view: MatrixView) -> Table:
    """The matrix as a Rich table: rows query generation, columns gallery generation; failing cells red.

    A lower-triangle cell's colour is the gate's own verdict for that pair (``view.passes``).
    """
    m = view.matrix
    t = Table(title=f"compatibility matrix ({view.metric}, %) — rows: query gen, columns: gallery gen",
              caption=f"AC {view.average_compatibility:.3f}   AM {100 * view.average_multimodel_accuracy:.2f}")
    t.add_column("query \\ gallery")
    for g in view.generations:
        t.add_column(str(g.id), justify="right")
    for ti, gt in enumerate(view.generations):
        cells: list[str | Text] = []
        for j, _ in enumerate(view.generations):
            v = m[ti, j]
            if j == ti:
                cells.append(styled("[bold]{}[/]", pct(v)))
            elif j < ti:
                cells.append(styled("[green]{}[/]" if view.passes[ti][j] else "[red]{}[/]", pct(v)))
            else:
                cells.append(styled("[dim]{}[/]", pct(v)))
        star = "*" if gt.id == view.production else ""
        t.add_row(f"{gt.id} {gt.name}{star}", *cells)
    return t
