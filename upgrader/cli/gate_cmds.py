"""`verify`, `promote`, `rollback`, `matrix`: the compatibility gate from the command line."""

from __future__ import annotations

import textwrap
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from registry import AliasMove

from upgrader.cli.common import HomeOption, JsonOption, console, handle_errors, print_json, styled, usage_error, workspace
from upgrader.compat.gate import GateConfig
from upgrader.compat.metrics import DEFAULT_PRIMARY_METRIC, METRIC_NAMES
from upgrader.compat.verdict import GateVerdict
from upgrader.core.errors import GateRefused
from upgrader.core.formatting import pct
from upgrader.services.matrix import MatrixView, compatibility_matrix
from upgrader.services.promotion import promote as promote_service
from upgrader.services.promotion import rollback as rollback_service
from upgrader.services.promotion import verify as verify_service
from tui.report_lines import ci, item_lines

Margin = Annotated[float, typer.Option(help="Required margin over the old self-test (metric units, 0..1).")]
Metric = Annotated[str, typer.Option(help="Primary metric: template_top1, recall_at_1 or mean_ap.")]
Generation = Annotated[str, typer.Argument(help="Generation id or name.")]
Reason = Annotated[str, typer.Option(help="Why; recorded in the alias history.")]
Actor = Annotated[str | None, typer.Option(help="Who moves production (default: your login name).")]
MixedTolerance = Annotated[float | None, typer.Option(
    help="Also require item-level search after the move (calibrated) within this much (0..1) of a re-index; "
         "default: report only.")]
AllowRegression = Annotated[bool, typer.Option(
    help="Waive the no-regression rule (search on the classes served now no worse than production's); "
         "recorded in the report.")]


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
    margin: float, metric: str, waive_improvement: bool = False, mixed_tolerance: float | None = None,
    allow_regression: bool = False,
) -> GateConfig:
    try:
        return GateConfig(margin=margin, primary_metric=metric, require_improvement=not waive_improvement,
                          mixed_tolerance=mixed_tolerance, allow_regression=allow_regression)
    except ValueError as exc:  # an out-of-range flag is a usage error (exit 2), not a crash
        raise typer.BadParameter(str(exc)) from None


def _force_needs_reason(force: bool, reason: str) -> None:
    """The CLI's own check of its flags, worded with them, before any work (exit 2)."""
    if force and not reason.strip():
        usage_error("--force needs --reason TEXT: the override is recorded in the alias history")


def _hanging(marker: str, line: str) -> Text:
    """``  - line`` wrapped at the console's width with a hanging indent (reasons run past 80 columns);
    ``marker`` is markup, ``line`` is shown literally."""
    wrapped = textwrap.wrap(line, max(40, console.width) - 4, break_on_hyphens=False) or [""]
    return styled("  " + marker + " {}", "\n    ".join(wrapped))


#: How the checks table names each kind of check (the item-level ones say what they compare).
_CHECK_NAMES = {"mixed": "vs re-index", "regression": "no regression"}


def _checks_table(verdict: GateVerdict, names: dict[int, str]) -> Table:
    """Every check with its value, threshold and the 95% interval of its paired difference (80 columns:
    generations by id, the title names the candidate)."""
    item = "recall@1" if verdict.served is None or verdict.served.metric == "recall_at_1" else "mAP"
    t = Table(title=styled("gate ({}) for {} (gen {}): " + ("[green]PASSED[/]" if verdict.passed else "[red]REFUSED[/]"),
                           verdict.kind, names.get(verdict.candidate, verdict.candidate), verdict.candidate),
              caption=f"%; pairwise rows: {METRIC_NAMES[verdict.primary_metric]}; item-level rows: {item}")
    for col in ("check", "gallery", "value", "threshold", "difference, 95% CI", "result"):
        t.add_column(col, justify="right" if col in ("value", "threshold") else "left")
    for c in verdict.checks:
        gallery_cell = "after" if c.kind in _CHECK_NAMES else f"gen {c.gallery_gen}"
        diff = c.interval.to_dict() if c.interval is not None else None
        # A pairwise check decided in another metric (both sides at 100%: mAP) says which.
        tag = c.kind not in _CHECK_NAMES and c.metric in METRIC_NAMES
        name = _CHECK_NAMES.get(c.kind, c.kind) + (f" ({METRIC_NAMES[c.metric]})" if tag else "")
        t.add_row(name, gallery_cell, pct(c.value), f"{c.comparison} {pct(c.threshold)}",
                  ci(diff, points=True), styled("[green]ok[/]" if c.passed else "[red]FAIL[/]"))
    return t


def _nothing_to_compare(verdict: GateVerdict, names: dict[int, str]) -> list[str]:
    """What ``verify`` says instead of an empty checks table (a first generation: nothing serves yet)."""
    t = verdict.candidate
    own = verdict.evaluations.get((t, t))
    measured = (f"its self-test on the classes it learnt, {METRIC_NAMES[verdict.primary_metric]} "
                f"{pct(own.get(verdict.primary_metric))}% (what `matrix` and `generations` show), is stored for "
                "the verdicts of the generations after it" if own is not None else "")
    sha = "matches" if verdict.artifact_ok else "does NOT match"
    return [
        f"nothing to compare {names.get(t, t)} against: no other generation has gallery items and none is "
        "production, so there is no compatibility or improvement check to make",
        f"checked instead: its artifact {sha} the registered sha256 {verdict.artifact_sha256[:12]}..."
        + (f"; {measured}" if measured else ""),
    ]


@handle_errors
def verify(
    generation: Generation,
    home: HomeOption = None,
    margin: Margin = 0.0,
    metric: Metric = DEFAULT_PRIMARY_METRIC,
    waive_improvement: Annotated[bool, typer.Option(help="Do not require beating production's self-test.")] = False,
    mixed_tolerance: MixedTolerance = None,
    allow_regression: AllowRegression = False,
    json_out: JsonOption = False,
) -> None:
    """Run the compatibility gate for a generation and store the report (verified or rejected).

    Besides the pairwise checks it measures item-level search on the gallery as it will be after the
    move (calibrated as serving will, raw, and after a re-index) against production's now.
    Example: upgrader verify g2-finetune-small_cnn-hoc --margin 0.01
    """
    with workspace(home) as ws:
        run = verify_service(ws, generation, _config(margin, metric, waive_improvement, mixed_tolerance,
                                                     allow_regression))
        names = {g.id: g.name for g in ws.registry.list_generations()}
    if json_out:
        print_json({"report_id": run.report.id, "status": run.generation.status, **run.verdict.to_dict()})
    else:
        v = run.verdict
        if v.checks:
            console.print(_checks_table(v, names))
        else:
            for line in _nothing_to_compare(v, names):
                console.print(_hanging("[dim]*[/]", line))
        for line in item_lines(v.to_dict()):
            console.print(line)
        if v.served is not None:
            console.print(_hanging("[dim]*[/]", f"probe gallery: {v.served.ownership()}"))
        for c in v.checks:
            if c.undecided_line():
                console.print(_hanging("[yellow]~[/]", c.undecided_line() or ""))
        for line in v.reasons:
            console.print(_hanging("[red]-[/]", line))
        if any(c.kind == "regression" and not c.passed for c in v.checks):
            console.print(styled("  [dim]--allow-regression waives the no-regression rule (recorded in the report)[/]"))
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
    allow_regression: AllowRegression = False,
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
                                   config=_config(margin, metric, waive_improvement, mixed_tolerance, allow_regression))
        except GateRefused as exc:
            if json_out:
                print_json({"promoted": False, "report_id": exc.report_id, "error": str(exc)})
            raise
        names = {g.id: g.name for g in ws.registry.list_generations()}
    if json_out:
        print_json({"promoted": True, **{k: v for k, v in vars(done).items() if k != "report"},
                    "report_id": done.report.id if done.report else None,
                    "gate": done.report.report if done.report else None,
                    "calibration": done.report.calibration if done.report else None})
        return
    m = done.move
    console.print(Text("production: ") + _move_line(m, names)
                  + Text(f" (gate report {m.gate_report_id}{', reused' if done.reused_report else ''}; by {m.actor}: {m.reason})"))
    for line in item_lines(done.report.report) if done.report else []:
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
                    "ground": done.ground.to_dict() if done.ground else None,
                    "gate": done.report.report if done.report else None,
                    "calibration": done.report.calibration if done.report else None})
        return
    m = done.move
    console.print(Text("production rolled back: ") + _move_line(m, names) + Text(f" (report {m.gate_report_id})"))
    if done.ground is not None:
        console.print(styled("  [dim]{}[/]", done.ground.line))
    for line in item_lines(done.report.report) if done.report else []:
        console.print(line)


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
            "selection": view.selection, "over": view.scope(),
        })
        return
    console.print(f"compatibility matrix ({view.metric}, %): rows are query generations, columns gallery generations")
    console.print(render_matrix(view))
    for line in matrix_lines(view):
        console.print(line)


def matrix_lines(view: MatrixView) -> list[str]:
    """What goes under the matrix: AC and AM over the set they were computed on (the dashboard words
    them the same, :meth:`MatrixView.averages`), and what a cell's colour means."""
    hint = "" if view.selection == "live" else "; --live shows only those with gallery items"
    margin = f" at margin {view.margin:g}" if view.margin else ""
    return [f"{view.averages()}{hint}",
            f"a lower-triangle cell is green when the gate passes that pair{margin}; AC counts the red ones"]


def render_matrix(view: MatrixView) -> Table:
    """The matrix as a Rich table: rows query generation, columns gallery generation; failing cells red.

    A lower-triangle cell's colour is the gate's own verdict for that pair (``view.passes``).
    """
    m = view.matrix
    t = Table()
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
