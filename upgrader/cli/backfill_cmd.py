"""`gallery backfill`: re-embed stored items with production, where the probe set says it gains most."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

import typer
from rich.progress import TaskID
from rich.table import Table

from upgrader.cli.common import HomeOption, JsonOption, console, handle_errors, print_json, progress_bar, styled, usage_error, workspace
from upgrader.services.backfill import (
    BackfillPlan, BackfillResult, check_lowering, dry_run_curves, gallery_holders, plan_backfill, run_backfill,
)
from upgrader.services.workspace import Workspace

#: Unreadable ids shown by name (the rest are counted).
PREVIEW = 5


def register(gallery_app: typer.Typer) -> None:
    """Attach ``gallery backfill``."""
    gallery_app.command("backfill")(gallery_backfill)


@handle_errors
def gallery_backfill(
    home: HomeOption = None,
    budget: Annotated[str | None, typer.Option(
        help="Items to re-embed in this run: N, or P% of the gallery (default: every item production did not embed).")] = None,
    policy: Annotated[str, typer.Option(
        help="Which items first: gain (most probe Recall@1 per item), oldest (lowest generation) or random.")] = "gain",
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show estimated Recall@1 against the fraction re-embedded, per policy; write nothing.")] = False,
    batch_size: Annotated[int, typer.Option(help="Items per all-or-nothing registry batch.")] = 256,
    allow_lower: Annotated[bool, typer.Option(
        "--allow-lower", help="Re-embed even where the probe set estimates search gets worse.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Re-embed stored gallery items from their sources with the production generation.

    Batches commit one at a time and a running `upgrader serve` follows them; run the same command
    again after an interruption and it continues with the items production has not re-embedded.
    Items whose source cannot be read are reported and keep their old embeddings. A run the probe set
    estimates would lower production's Recall@1 is refused (exit 2) unless --allow-lower.

    Example: upgrader gallery backfill --budget 10% --dry-run      then      upgrader gallery backfill --budget 10%
    """
    if batch_size < 1:
        usage_error(f"--batch-size must be at least 1, got {batch_size}")
    with workspace(home) as ws:
        plan = plan_backfill(ws, policy, budget)
        if dry_run:
            _show_dry_run(ws, plan, json_out)
            return
        check_lowering(plan, allow_lower=allow_lower)
        bar = progress_bar()
        task: list[TaskID] = []

        def show(done: int, total: int) -> None:
            if not task:
                bar.start()
                task.append(bar.add_task("re-embedding gallery", total=total, info=""))
            bar.update(task[0], completed=done, total=total)

        try:
            res = run_backfill(ws, plan, batch_size=batch_size, progress=None if json_out else show)
        finally:
            bar.stop()
        after = plan.estimate(gallery_holders(ws))
        names = {g.id: g.name for g in ws.registry.list_generations()}
    summary = _summary(plan, res, after, names)
    if json_out:
        print_json(summary)
        return
    _show_run(plan, res, summary)


def _plan_dict(plan: BackfillPlan) -> dict[str, Any]:
    return {"production": {"id": plan.production.id, "name": plan.production.name}, "policy": plan.policy,
            "gallery_items": plan.gallery_items, "candidates": plan.candidates, "budget": plan.budget}


def _show_dry_run(ws: Workspace, plan: BackfillPlan, json_out: bool) -> None:
    curves = dry_run_curves(plan)
    names = ws.registry.interface().class_of
    estimate = {"now": plan.at(0), "at_budget": plan.at(plan.budget), "reindex": plan.estimate.reindex(plan.holders)}
    if json_out:
        print_json({**_plan_dict(plan), "dry_run": True, "estimate": estimate,
                    "curves": {p: [{"fraction": f, "items": n, "recall_at_1": r} for f, n, r in pts]
                               for p, pts in curves.items()},
                    "order": [{"class": names.get(g.vertex), "vertex": g.vertex, "generation": g.generation,
                               "items": g.items, "gain": g.gain} for g in plan.groups]})
        return
    t = Table(title=f"estimated Recall@1 (%) of production {plan.production.name} against the share of the "
                    f"gallery re-embedded ({plan.gallery_items} items, {plan.candidates} not by production)")
    t.add_column("re-embedded", justify="right")
    t.add_column("items", justify="right")
    for p in curves:
        t.add_column(p + (" (chosen)" if p == plan.policy else "") + (" (mean)" if p == "random" else ""), justify="right")
    rows = zip(*curves.values())
    for points in rows:
        f, n, _ = points[0]
        t.add_row(f"{100 * f:.1f}%", str(n), *(f"{100 * r:.1f}" for _, _, r in points))
    console.print(t)
    console.print(styled("budget {} items: estimated Recall@1 {}% now, {}% after this run ({}), {}% after a full "
                         "re-index; nothing was written (drop --dry-run to re-embed)",
                         plan.budget, f"{100 * estimate['now']:.1f}", f"{100 * estimate['at_budget']:.1f}",
                         plan.policy, f"{100 * estimate['reindex']:.1f}"))


def _summary(plan: BackfillPlan, res: BackfillResult, after: float, names: dict[int, str]) -> dict[str, Any]:
    reasons = Counter(u.reason for u in res.unreadable)
    return {
        **_plan_dict(plan), "dry_run": False, "reembedded": res.reembedded,
        "by_generation": [{"id": g, "name": names.get(g, str(g)), "items": n} for g, n in res.by_generation.items()],
        "skipped_unreadable": {"count": len(res.unreadable), "preview": [u.external_id for u in res.unreadable[:PREVIEW]],
                               "reasons": dict(sorted(reasons.items())),
                               "first_error": res.unreadable[0].message if res.unreadable else None},
        "remaining": res.remaining, "estimate": {"before": plan.at(0), "after": after},
        "stopped": res.stopped, "seconds": res.seconds,
    }


def _show_run(plan: BackfillPlan, res: BackfillResult, summary: dict[str, Any]) -> None:
    origin = ", ".join(f"{row['name']}: {row['items']}" for row in summary["by_generation"]) or "none"
    console.print(styled("[green]re-embedded[/] {} items with production {} (from {}) in {} s; {} items remain on "
                         "older generations", res.reembedded, plan.production.name, origin, f"{res.seconds:.1f}",
                         res.remaining))
    est = summary["estimate"]
    console.print(styled("estimated Recall@1 on the probe set: {}% before, {}% now",
                         f"{100 * est['before']:.1f}", f"{100 * est['after']:.1f}"))
    skipped = summary["skipped_unreadable"]
    if skipped["count"]:
        shown = ", ".join(skipped["preview"]) + (", ..." if skipped["count"] > PREVIEW else "")
        why = ", ".join(f"{r}: {n}" for r, n in skipped["reasons"].items())
        console.print(styled("[yellow]skipped {} items whose source cannot be read[/] ({}; {}); they keep their "
                             "old embeddings. First: {}", skipped["count"], shown, why, skipped["first_error"]))
    if res.stopped:
        console.print(styled("[yellow]stopped:[/] {}", res.stopped))
