"""`upgrader demo`: run the whole story and print its figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from upgrader.cli.common import JsonOption, console, err_console, handle_errors, print_json, styled
from upgrader.core.formatting import pct


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
        t = Table(title="after each promotion: search on the mixed gallery vs a full re-index (top-1 %)")
        for col in ("step", "generation", "gate", "self-test", "gallery (items by gen)", "mixed gallery", "full re-index", "train s"):
            t.add_column(col)
        for s in sc.steps:
            comp = ", ".join(f"g{g}:{n}" for g, n in sorted(s.gallery_by_generation.items()))
            t.add_row(str(s.step), s.generation_name, styled("[green]passed[/]" if s.gate_passed else "[red]refused[/]"),
                      pct(s.self_test), f"{s.gallery_items} ({comp})", pct(s.mixed_accuracy), pct(s.reindex_accuracy),
                      f"{s.train_seconds:.0f}")
        console.print(t)
        console.print(f"AC = {sc.ac:.3f}, AM = {100 * sc.am:.2f} over {len(sc.generation_ids)} generations; "
                      f"no gallery item was re-embedded.")
        verdict = "[green]refused[/]" if result.baseline_refused else "[red]NOT refused[/]"
        console.print(styled("baseline {} (er): gate " + verdict + "; production stays {}",
                             result.baseline_generation, result.production_after_baseline))
        for line in result.baseline_reasons[:4]:
            console.print(f"  - {line}")
        console.print(f"demo finished in {result.seconds:.0f}s; workspace at {result.home} "
                      f"(try: upgrader generations --home {result.home})")
    # The demo succeeded if it ran: the gate's verdicts are its findings, printed above (and in --json).
