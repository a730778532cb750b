"""`upgrader study`: the compatibility study (scenarios x methods x seeds) and its report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from upgrader.cli.train_cmds import arch_kwargs_option
from upgrader.cli.common import JsonOption, console, err_console, handle_errors, print_json, progress_bar, styled, usage_error
from upgrader.core.errors import WorkspaceError
from upgrader.core.vocabulary import METHODS

if TYPE_CHECKING:
    from upgrader.study.runner import StudyConfig


def register(app: typer.Typer) -> None:
    """Attach this module's command."""
    app.command("study")(study)


def _check_sizes(sizes: dict[str, int]) -> None:
    """Refuse a size below 1 naming its flag, before the study checks the rest of its configuration."""
    for flag, value in sizes.items():
        if value < 1:
            usage_error(f"{flag} must be at least 1 (got {value})")


def _ms(stat: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    if stat.get("mean") is None:
        return "-"
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def render_summary(data: dict[str, Any]) -> Table:
    """The report's results table for people."""
    t = Table(title="compatibility study: mean ± std over seeds (accuracies in %); served = held-out queries "
                    "through the served index after the last step")
    for col in ("scenario", "method", "runs", "served raw", "served calibrated", "+10% backfill", "re-index",
                "AC", "AM", "final self-test", "gate refusals"):
        t.add_column(col)
    for scenario, methods in data["summary"].items():
        for method, s in methods.items():
            refusals = "; ".join(f"s{seed}: {','.join(map(str, st)) or '-'}" for seed, st in s["refused_steps"].items())
            last = {k: (v[-1] if v else {}) for k, v in s.get("served_by_step", {}).items()}
            t.add_row(scenario, method, str(s["runs"]), *(_ms(last.get(k, {})) for k in ("raw", "calibrated", "gain@0.1", "reindex")),
                      _ms(s["ac"], 1.0, 3), _ms(s["am"]), _ms(s["final_self_test"]), refusals or "-")
    return t


def _run_with_progress(config: StudyConfig) -> dict[str, Any]:
    """Run the study under a progress bar (one tick per run), its log lines above the bar."""
    from upgrader.study.runner import run_study

    with progress_bar() as bar:
        task = bar.add_task("study", total=None, info="")

        def on_run(done: int, total: int, record: Any, label: str) -> None:
            info = label if record is None else f"{label}: {record.status}"
            bar.update(task, completed=done, total=total, info=info)

        def log(message: str) -> None:
            bar.console.print(message, highlight=False, soft_wrap=True)

        try:
            return run_study(config, log=log, on_run=on_run)
        except WorkspaceError as exc:  # a run's folder under OUT that the study did not make: name the flag
            raise WorkspaceError(f"{exc} (--out)") from None


@handle_errors
def study(
    out: Annotated[Path, typer.Option("--out", help="Output folder: results.json, report.md, PNG figures, workspaces/.")],
    dataset: Annotated[str, typer.Option(help="Dataset spec (fashion-mnist, an IDX folder, an image folder, a .npz) with >= 10 classes.")] = "fashion-mnist",
    scenario: Annotated[str, typer.Option(help="short (4 then 2+2+2 classes), long (2 then 8 x 1 class), pretrained (0-5; the replacement starts from a "
                     "backbone pretrained on 6-9) or from-scratch (the same, from random weights); comma separated.")] = "short",
    methods: Annotated[str, typer.Option(help=f"Comma-separated training methods: {', '.join(METHODS)}.")] = ",".join(METHODS),
    seeds: Annotated[int, typer.Option(help="Number of seeds (0 .. N-1) per method.")] = 3,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    initial_epochs: Annotated[int, typer.Option(help="Epochs of the first generation.")] = 5,
    epochs: Annotated[int, typer.Option(help="Epochs of a fine-tune.")] = 5,
    replacement_epochs: Annotated[int | None, typer.Option(help="Epochs of a replacement (default: 2 x --epochs).", show_default=False)] = None,
    train_per_class: Annotated[int, typer.Option(help="Training images per new class.")] = 600,
    memory_per_class: Annotated[int, typer.Option(help="Rehearsal images kept per class.")] = 300,
    gallery_per_class: Annotated[int, typer.Option(help="Gallery items added per new class after each promotion.")] = 100,
    probe_per_class: Annotated[int, typer.Option(help="Probe queries and probe gallery items per class.")] = 100,
    num_classes: Annotated[int, typer.Option("--num-classes", "-k", help="Interface K of each run's workspace.")] = 64,
    force_refused: Annotated[bool, typer.Option("--force-refused/--no-force-refused", help="Force refused generations (recorded) so the chain goes on.")] = True,
    keep_workspaces: Annotated[bool, typer.Option("--keep-workspaces/--no-keep-workspaces", help="Keep each run's workspace under OUT/workspaces.")] = True,
    replacement_arch: Annotated[str | None, typer.Option(
        help="Architecture of every replacement: a built-in name, package.module:function or an entry-point name "
             "(default: the scenario's).")] = None,
    replacement_arch_kwargs: Annotated[str | None, typer.Option(
        help="JSON object of the replacement architecture's arguments, e.g. '{\"width\": 64}'.")] = None,
    own_negatives: Annotated[bool, typer.Option("--own-negatives", help="hoc, hoc-paper: train with the new model's own features of other classes as extra negatives (as `train --own-negatives`).")] = False,
    json_out: JsonOption = False,
) -> None:
    """Run the upgrade scenario for each method and seed through the real registry, export, embedder and gate,
    then write results.json, report.md and PNG figures to --out.

    Example: upgrader study --scenario short --methods hoc,er --seeds 3 --out ./study
    """
    from upgrader.study.runner import StudyConfig, parse_methods, parse_scenarios, validate

    config = StudyConfig(
        out=str(out), dataset=dataset, scenarios=parse_scenarios(scenario), methods=parse_methods(methods), seeds=seeds,
        device=device, num_classes=num_classes, initial_epochs=initial_epochs, epochs=epochs,
        replacement_epochs=replacement_epochs, train_per_class=train_per_class, memory_per_class=memory_per_class,
        gallery_per_class=gallery_per_class, probe_per_class=probe_per_class,
        force_refused=force_refused, keep_workspaces=keep_workspaces, own_negatives=own_negatives,
        replacement_arch=replacement_arch, replacement_arch_kwargs=arch_kwargs_option(replacement_arch_kwargs, "--replacement-arch-kwargs"),
    )
    _check_sizes({"--seeds": seeds, "--epochs": epochs, "--train-per-class": train_per_class,
                  "--gallery-per-class": gallery_per_class, "--probe-per-class": probe_per_class})
    validate(config)  # before the progress bar: a refusal is one line, with no bar printed
    data = _run_with_progress(config)
    if json_out:
        print_json(data)
    else:
        console.print(render_summary(data))
        for c in data["targets"]:
            mark = "-" if c["met"] is None else styled("[green]met[/]" if c["met"] else "[red]not met[/]")
            console.print(f"{mark}  {c['target']} ({c['wanted']}): {c['measured']}", highlight=False)
        console.print(f"report: {Path(config.out) / 'report.md'}; figures: {', '.join(data['figures'])}")
    if data["runs_failed"]:
        err_console.print(styled("[bold red]{} run(s) failed[/]; see results.json", data["runs_failed"]))
        raise typer.Exit(1)
