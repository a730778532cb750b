"""`upgrader demo`: run the whole story and print its figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from upgrader.cli.common import JsonOption, console, err_console, handle_errors, print_json, styled
from upgrader.core.formatting import pct


def served_table(steps: list) -> Table:
    """The search users get after each step: held-out queries through the served index (top-1 %).

    Fits 80 columns: generations by id (named in :func:`step_lines`), short heads.
    """
    t = Table(title="served nearest-item top-1 % of held-out queries on the gallery after each step",
              box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, title_justify="left")
    for col in ("step", "gen", "gate", "self", "raw", "calib", "+5%", "+10%", "+20%", "re-idx", "stood: new/old"):
        t.add_column(col, justify="left" if col in ("gen", "gate") else "right", no_wrap=True)
    for s in steps:
        served = s.served or {}
        back = {f: acc for f, _, acc in served.get("backfill", {}).get("gain", [])}
        stood = (f"{pct(s.served_as_stood)}/{pct(s.served_before)}"
                 if s.served_as_stood is not None and s.served_before is not None else "-")
        t.add_row(str(s.step), f"g{s.generation_id}",
                  styled("[green]pass[/]" if s.gate_passed else ("[yellow]forced[/]" if s.forced else "[red]refused[/]")),
                  pct(s.self_test), pct(served.get("raw")), pct(served.get("calibrated")), pct(back.get(0.05)),
                  pct(back.get(0.1)), pct(back.get(0.2)), pct(served.get("reindex")), stood)
    return t


def step_lines(steps: list) -> list[str]:
    """What the table's short columns stand for, and each step's generation and gallery."""
    out = ["calib = with the stored score calibration (what `upgrader serve` answers with); +N% = after "
           "re-embedding N% of the gallery in the `gain` order; re-idx = every item re-embedded; as stood = "
           "new vs previous production on the gallery before the step's items joined."]
    for s in steps:
        comp = ", ".join(f"g{g}: {n}" for g, n in sorted(s.gallery_by_generation.items()))
        out.append(f"  step {s.step}: g{s.generation_id} {s.generation_name}; gallery {s.gallery_items} items ({comp})")
    return out


def register(app: typer.Typer) -> None:
    """Attach this module's command."""
    app.command("demo")(demo)


@handle_errors
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="Smaller sizes: under 3 minutes on 2 CPU cores.")] = False,
    home: Annotated[Path | None, typer.Option("--home", help="Folder of the demo workspace (default ./upgrader-demo; an earlier demo there is replaced).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    json_out: JsonOption = False,
) -> None:
    """Run the end-to-end story on Fashion-MNIST: train, verify, promote, replace, keep the old gallery.

    Example: upgrader demo --quick
    """
    from upgrader.services.matrix import MatrixView, compatibility_matrix
    from upgrader.services.workspace import open_workspace
    from upgrader.study.demo import run_demo

    result = run_demo(home, quick=quick, device=device, log=(lambda m: None) if json_out else (lambda m: err_console.print(m, highlight=False)))
    sc = result.scenario
    if json_out:
        print_json(result)
    else:
        from upgrader.cli.gate_cmds import render_matrix

        with open_workspace(result.home) as ws:
            view: MatrixView = compatibility_matrix(ws, sc.generation_ids)
        console.print(render_matrix(view))
        console.print(served_table(sc.steps))
        for line in step_lines(sc.steps):
            console.print(line, soft_wrap=False)
        console.print(f"AC = {sc.ac:.3f}, AM = {100 * sc.am:.1f} over generations {', '.join(map(str, sc.generation_ids))} "
                      f"(the promoted chain); no gallery item was re-embedded.")
        verdict = "[green]refused[/]" if result.baseline_refused else "[red]NOT refused[/]"
        console.print(styled("baseline {} (er): gate " + verdict + "; production stays {}",
                             result.baseline_generation, result.production_after_baseline))
        for line in result.baseline_reasons[:4]:
            console.print(f"  - {line}")
        if result.figures:
            console.print(f"figures: {', '.join(result.figures)}")
        console.print(f"demo finished in {result.seconds:.0f}s; workspace at {result.home} "
                      f"(try: upgrader generations --home {result.home})")
    # The demo succeeded if it ran: the gate's verdicts are its findings, printed above (and in --json).
