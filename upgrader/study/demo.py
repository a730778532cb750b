"""`upgrader demo`: the whole story on Fashion-MNIST with the CPU defaults.

Generation 1 (small CNN, classes 0-3) -> gallery of 0-3 -> fine-tune on 4-5 -> verify -> promote ->
gallery items of 4-5 by generation 2 -> replacement by a larger architecture with 6-7 -> promote ->
fine-tune on 8-9 -> promote; then an `er` baseline that the gate refuses.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from upgrader.core.errors import GateRefused, WorkspaceError
from upgrader.core.files import write_atomic
from upgrader.core.jsonable import jsonable
from upgrader.services.promotion import promote
from upgrader.services.workspace import CONFIG_FILE, Workspace, resolve_home
from upgrader.services.workspace_init import init_workspace
from upgrader.study.aggregation import summarise
from upgrader.study.records import RunRecord
from upgrader.study.scenario import Log, ScenarioConfig, ScenarioResult, quick as quick_sizes, run_scenario
from upgrader.services.training_plan import TrainRequest
from upgrader.training.pipeline import train_and_register

MARKER = "demo.json"  # marks a workspace the demo made, so a re-run may replace it (and nothing else)


@dataclass
class DemoResult:
    """What the demo did and measured."""

    home: str
    quick: bool
    scenario: ScenarioResult
    baseline_generation: str = ""
    baseline_refused: bool = False
    baseline_reasons: list[str] = field(default_factory=list)
    production_after_baseline: str = ""
    figures: list[str] = field(default_factory=list)  # PNG files written into the workspace folder
    seconds: float = 0.0


def prepare_home(home: str | Path | None) -> Path:
    """The demo's folder: refuse a non-demo workspace, replace an earlier demo's."""
    root = resolve_home(home) if home else Path("upgrader-demo").resolve()
    if (root / CONFIG_FILE).exists():
        if not (root / MARKER).exists():
            raise WorkspaceError(f"{root} holds a workspace the demo did not create; choose another folder", subject="home")
        shutil.rmtree(root)
    return root


def demo_config(quick: bool, device: str = "auto", seed: int = 0) -> ScenarioConfig:
    """Scenario sizes for the full demo or the quick one (README, "Fresh machine", says how long each takes)."""
    base = ScenarioConfig(method="hoc", seed=seed, device=device)
    return quick_sizes(base) if quick else base


def run_demo(home: str | Path | None = None, *, quick: bool = False, device: str = "auto", log: Log = print) -> DemoResult:
    """Run the demo in a fresh workspace and return its figures."""
    start = time.perf_counter()
    root = prepare_home(home)
    config = demo_config(quick, device)
    log(f"workspace {root}: Fashion-MNIST, K=64, probe set of 100 queries + 100 gallery items per class")
    ws: Workspace = init_workspace(root, dataset="fashion-mnist", num_classes=64,
                                   query_per_class=50 if quick else 100, gallery_per_class=50 if quick else 100)
    with ws:
        write_atomic(root / MARKER, json.dumps({"quick": quick}).encode())
        scenario = run_scenario(ws, "short", config, log=log)
        result = DemoResult(home=str(root), quick=quick, scenario=scenario)
        # The baseline: a replacement trained with `er` (learnable classifier, no compatibility term).
        log("baseline: an `er` replacement (learnable classifier, no compatibility loss) on all ten classes")
        before = ws.registry.get_alias()
        out = train_and_register(ws, TrainRequest(
            kind="replacement", classes=("0-9",), arch="small_cnn", method="er", epochs=config.epochs,
            per_class=config.train_per_class // 2 if config.train_per_class else None, anchor=False,
            name="baseline-er", seed=config.seed + 99, device=device, batch_size=config.batch_size, lr=config.lr,
        ))
        result.baseline_generation = out.generation.name
        try:
            promote(ws, out.generation.id, reason="demo: er baseline", actor="demo")
        except GateRefused as exc:
            result.baseline_refused = True
            report = ws.registry.get_gate_report(exc.report_id) if exc.report_id else None
            result.baseline_reasons = list(report.report.get("reasons", [])) if report else [str(exc)]
        after = ws.registry.get_alias()
        assert after is not None
        result.production_after_baseline = ws.registry.get_generation(after).name
        if after != before:
            log("the er baseline was promoted: the gate did not refuse it")
    result.figures = demo_figures(scenario, root)
    result.seconds = time.perf_counter() - start
    return result


def demo_figures(scenario: ScenarioResult, out: Path) -> list[str]:
    """The study's served and backfill figures for the demo's one run, written into ``out``."""
    from upgrader.study.plots import backfill_figure, served_figure

    record = RunRecord(scenario=scenario.scenario, method=scenario.method, seed=scenario.seed, status="done",
                       workspace=str(out), steps=[jsonable(asdict(s)) for s in scenario.steps])
    methods = summarise([record])[scenario.scenario]
    paths = []
    for name, draw in (("served.png", served_figure), ("backfill.png", backfill_figure)):
        draw(scenario.scenario, methods, out / name)
        paths.append(str(out / name))
    return paths
