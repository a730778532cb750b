"""The compatibility study: sequential scenarios x training methods x seeds, through the real services.

Every run gets its own fresh workspace (``<out>/workspaces/<scenario>-<method>-s<seed>`` when kept, a
temporary folder otherwise) and goes through :func:`upgrader.study.scenario.run_scenario`, i.e. the real
training, ONNX export, registry, ONNX Runtime embedder, gate (``promote``) and gallery. Generations the
gate refuses are recorded and, by default, forced so the chain goes on (that is how ``er`` and ``ce``
show *where* compatibility breaks). The study aggregates mean +- std over seeds and writes
``results.json`` (rewritten after every run, so a stopped study leaves its partial results),
``report.md`` and PNG figures.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from registry.errors import RegistryError
from upgrader.core.errors import InvalidRequest, UpgraderError, WorkspaceError
from upgrader.core.files import write_atomic
from upgrader.core.formatting import pct
from upgrader.core.jsonable import jsonable
from upgrader.core.vocabulary import METHODS

SCENARIO_NAMES = ("short", "long")
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
RUN_MARKER = "study-run.json"  # marks a workspace the study made, so a re-run may replace it (and nothing else)

#: What the issue asks the study to show; checked and reported, never enforced.
TARGETS = {
    "hoc_ac_short": 1.0,  # hoc AC on short, every seed
    "hoc_ac_long": 0.95,  # hoc AC on long, every seed
    "hoc_am_over_er_points": 15.0,  # AM(hoc) - AM(er), percentage points
    "mixed_vs_reindex_points": 3.0,  # |mixed - re-index| after the last hoc promotion, points
}

#: The authors' released runs (DESIGN 3), for the report: CIFAR-100 training, CIFAR-10 template top-1.
REFERENCE = {
    "d-Simplex-HOC": {"7 tasks": {"AC": 0.95, "AM": 68.90}, "31 tasks": {"AC": 0.65, "AM": 68.07}},
    "ER": {"7 tasks": {"AC": 0.00, "AM": 35.18}, "31 tasks": {"AC": 0.00, "AM": 30.32}},
}

Log = Callable[[str], None]


@dataclass(frozen=True)
class StudyConfig:
    """What to run and at which sizes. The defaults fit short x 4 methods x 3 seeds in ~30 min on 2 CPU cores."""

    out: str  # output folder: results.json, report.md, figures, workspaces/
    dataset: str = "fashion-mnist"  # any dataset spec the product reads (>= 10 classes for the scenarios)
    scenarios: tuple[str, ...] = ("short",)  # short | long (both allowed)
    methods: tuple[str, ...] = METHODS  # training methods to compare
    seeds: int = 3  # seeds 0 .. seeds-1 (also the probe draw of each run's workspace)
    device: str = "auto"  # auto | cpu | cuda
    num_classes: int = 64  # interface K (preallocated vertices)
    # Sizes: the --quick demo's images per class, with more epochs (a generation trained 1-2 epochs
    # is so far from converged that its features barely reach their vertices), ~2 min a run.
    initial_epochs: int = 5  # epochs of the first generation
    epochs: int = 5  # epochs of a fine-tune
    replacement_epochs: int | None = None  # epochs of a replacement (None: 2 x epochs)
    train_per_class: int = 600  # training images per new class (the --quick demo's)
    memory_per_class: int = 300  # rehearsal images kept per class (the --quick demo's; see ScenarioConfig)
    gallery_per_class: int = 100  # gallery items added per new class after each promotion
    # 100 + 100 per class: at 50, one query is 0.5 points of a 4-class pair and ties (which the
    # gate counts as violations) were common between generations of equal quality.
    probe_per_class: int = 100  # probe queries and probe gallery items per class (each)
    batch_size: int = 128
    lr: float = 0.05
    force_refused: bool = True  # promote refused generations with --force (recorded) so the chain goes on
    keep_workspaces: bool = True  # keep every run's workspace under out/workspaces (to re-derive the numbers)
    figures: bool = True  # write PNG figures

    def scenario_config(self, method: str, seed: int) -> Any:
        """The :class:`upgrader.study.scenario.ScenarioConfig` of one run."""
        from upgrader.study.scenario import ScenarioConfig

        return ScenarioConfig(
            method=method,
            initial_epochs=self.initial_epochs,
            epochs=self.epochs,
            replacement_epochs=self.replacement_epochs if self.replacement_epochs is not None else 2 * self.epochs,
            train_per_class=self.train_per_class,
            memory_per_class=self.memory_per_class,
            gallery_per_class=self.gallery_per_class,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=seed,
            device=self.device,
            force_refused=self.force_refused,
        )


@dataclass
class RunRecord:
    """One scenario run (one method, one seed) as results.json stores it."""

    scenario: str
    method: str
    seed: int
    status: str  # done | failed
    workspace: str | None  # kept workspace, None when removed
    error: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process (training threads and ONNX Runtime threads included)
    generation_ids: list[int] = field(default_factory=list)
    generation_names: list[str] = field(default_factory=list)
    matrix: list[list[float]] = field(default_factory=list)  # template top-1, C[t][j], t = query generation
    ac: float | None = None
    am: float | None = None
    final_self_test: float | None = None
    final_mixed: float | None = None  # mixed-gallery accuracy (templates, DESIGN 3's primary) after the last step
    final_reindex: float | None = None  # full re-index accuracy (templates) after the last step
    final_mixed_items: float | None = None  # the same two with item-level top-1
    final_reindex_items: float | None = None
    # At every promotion, the new generation's self-test beats production's on the same classes
    # (the gate's improvement check: like for like, since a later generation serves more classes).
    self_test_rises: bool | None = None
    refused_steps: list[int] = field(default_factory=list)  # steps whose generation the gate refused
    forced_steps: list[int] = field(default_factory=list)  # refused steps promoted with --force
    registry: dict[str, Any] = field(default_factory=dict)  # figures re-read from the registry afterwards
    steps: list[dict[str, Any]] = field(default_factory=list)  # StepResult of every step


# --------------------------------------------------------------------------------------------------
# Validation and workspaces
# --------------------------------------------------------------------------------------------------


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """"hoc,ce" or ["hoc", "ce"] -> ("hoc", "ce"); unknown names are a usage error."""
    items = [text] if isinstance(text, str) else list(text)
    names = [p.strip().lower() for item in items for p in item.split(",") if p.strip()]
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        raise InvalidRequest(f"unknown method(s) {bad or names}; choose from {', '.join(METHODS)}")
    return tuple(dict.fromkeys(names))


def parse_scenarios(text: str | Sequence[str]) -> tuple[str, ...]:
    """"short", "long" or "short,long" -> a tuple of scenario names."""
    items = [text] if isinstance(text, str) else list(text)
    names = [p.strip().lower() for item in items for p in item.split(",") if p.strip()]
    bad = [n for n in names if n not in SCENARIO_NAMES]
    if bad or not names:
        raise InvalidRequest(f"unknown scenario(s) {bad or names}; choose from {', '.join(SCENARIO_NAMES)}")
    return tuple(dict.fromkeys(names))


def validate(config: StudyConfig) -> None:
    """Cheap checks before anything is trained.

    Raises:
        InvalidRequest: bad sizes, methods, scenarios, or a dataset with too few classes.
        DataError: the dataset cannot be read.
    """
    from upgrader.data.items import load_items
    from upgrader.study.scenario import SCENARIOS

    parse_methods(config.methods)
    parse_scenarios(config.scenarios)
    for name, value in (("--seeds", config.seeds), ("--epochs", config.epochs), ("--train-per-class", config.train_per_class),
                        ("--gallery-per-class", config.gallery_per_class), ("--probe-per-class", config.probe_per_class)):
        if value < 1:
            raise InvalidRequest(f"{name} must be at least 1 (got {value})")
    classes = load_items(config.dataset, "test").classes
    needed = 1 + max(c for s in config.scenarios for step in SCENARIOS[s] for c in step.classes)
    if len(classes) < needed:
        raise InvalidRequest(f"the scenarios use {needed} classes but {config.dataset} has {len(classes)}")
    if config.num_classes < len(classes):
        raise InvalidRequest(f"K={config.num_classes} is smaller than the dataset's {len(classes)} classes")


def run_dir_name(scenario: str, method: str, seed: int) -> str:
    """Folder name of one run's workspace under ``out/workspaces``."""
    return f"{scenario}-{method}-s{seed}"


def _fresh_home(config: StudyConfig, scenario: str, method: str, seed: int) -> Path:
    """A new workspace folder for one run: under out/workspaces when kept, else a temporary one.

    An earlier study's workspace of the same run is replaced; any other folder there is refused.
    """
    if not config.keep_workspaces:
        return Path(tempfile.mkdtemp(prefix=f"upgrader-study-{run_dir_name(scenario, method, seed)}-")) / "ws"
    home = Path(config.out) / "workspaces" / run_dir_name(scenario, method, seed)
    if home.exists():
        if not (home / RUN_MARKER).exists():
            raise WorkspaceError(f"{home} exists and was not made by the study; choose another --out")
        shutil.rmtree(home)
    return home


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------


def registry_figures(home: str | Path, generation_ids: Sequence[int]) -> dict[str, Any]:
    """Re-derive a run's figures from its registry alone: the matrix, AC, AM and the alias history.

    This is what a user runs on a kept workspace to check results.json (and what the tests compare).
    """
    from upgrader.services.promotion import compatibility_matrix
    from upgrader.services.workspace import open_workspace

    with open_workspace(home) as ws:
        view = compatibility_matrix(ws, list(generation_ids))
        moves = ws.registry.alias_history()
        refused = []
        for gid in generation_ids:
            reports = ws.registry.gate_reports(gid)
            if any(not r.passed for r in reports):
                refused.append(ws.registry.get_generation(gid).name)
        return {
            "matrix": view.matrix.tolist(),
            "ac": view.average_compatibility,
            "am": view.average_multimodel_accuracy,
            "forced_moves": [ws.registry.get_generation(m.to_gen).name for m in moves if m.forced],
            "refused_generations": refused,
            "production": ws.registry.get_generation(view.production).name if view.production is not None else None,
        }


def run_one(config: StudyConfig, scenario: str, method: str, seed: int, *, log: Log = lambda _: None) -> RunRecord:
    """Run one scenario for one method and seed in a fresh workspace and record it.

    Product and registry errors (bad data, a failed export, a schema changed under a running study...)
    are recorded as a failed run, not raised, so one broken run does not lose the rest of the study.
    """
    import resource

    from upgrader.services.workspace_init import init_workspace
    from upgrader.study.scenario import run_scenario

    home = _fresh_home(config, scenario, method, seed)
    record = RunRecord(scenario=scenario, method=method, seed=seed, status="failed",
                       workspace=str(home) if config.keep_workspaces else None)
    t0, c0 = time.perf_counter(), time.process_time()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        ws = init_workspace(home, dataset=config.dataset, num_classes=config.num_classes,
                            query_per_class=config.probe_per_class, gallery_per_class=config.probe_per_class, seed=seed)
        with ws:
            write_atomic(home / RUN_MARKER, json.dumps({"scenario": scenario, "method": method, "seed": seed}).encode())
            result = run_scenario(ws, scenario, config.scenario_config(method, seed), log=log)
        steps = result.steps
        record.status = "done"
        record.generation_ids = list(result.generation_ids)
        by_id = {s.generation_id: s.generation_name for s in steps}
        record.generation_names = [by_id.get(g, str(g)) for g in result.generation_ids]
        record.matrix = result.matrix
        record.ac, record.am = result.ac, result.am
        last = steps[-1]
        record.final_self_test = last.self_test
        record.final_mixed, record.final_reindex = last.mixed_template, last.reindex_template
        record.final_mixed_items, record.final_reindex_items = last.mixed_accuracy, last.reindex_accuracy
        record.self_test_rises = all(
            s.previous_self_test is None or s.self_test > s.previous_self_test for s in steps if s.promoted
        )
        record.refused_steps = [s.step for s in steps if not s.gate_passed]
        record.forced_steps = [s.step for s in steps if s.forced]
        record.steps = [jsonable(asdict(s)) for s in steps]
        record.registry = registry_figures(home, result.generation_ids)
    except (UpgraderError, RegistryError) as exc:
        record.error = f"{exc.__class__.__name__}: {exc}"
        log(f"  run {run_dir_name(scenario, method, seed)} failed: {record.error}")
    finally:
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        record.seconds = time.perf_counter() - t0
        # process_time covers every thread of this process (torch and ONNX Runtime pools included).
        record.cpu_seconds = max(time.process_time() - c0, (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime))
        if not config.keep_workspaces:
            shutil.rmtree(home.parent, ignore_errors=True)
    return record


# --------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """{"mean", "std" (population, 0 for one value), "n", "min", "max"} over the non-missing values."""
    xs = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(xs) == 0:
        return {"mean": None, "std": None, "n": 0, "min": None, "max": None}
    return {"mean": float(xs.mean()), "std": float(xs.std()), "n": int(len(xs)), "min": float(xs.min()), "max": float(xs.max())}


def mean_matrix(matrices: Sequence[Sequence[Sequence[float]]]) -> list[list[float | None]]:
    """Element-wise mean of matrices (padded with NaN where a run's chain is shorter)."""
    if not matrices:
        return []
    size = max(len(m) for m in matrices)
    stack = np.full((len(matrices), size, size), np.nan)
    for i, m in enumerate(matrices):
        if len(m):
            arr = np.array(m, dtype=np.float64)
            stack[i, : arr.shape[0], : arr.shape[1]] = arr
    with np.errstate(invalid="ignore"):
        counts = np.sum(~np.isnan(stack), axis=0)
        mean = np.where(counts > 0, np.nansum(stack, axis=0) / np.maximum(counts, 1), np.nan)
    return jsonable(mean)


def _per_step(runs: Sequence[RunRecord], key: str) -> list[dict[str, Any]]:
    """mean/std of a StepResult field at every step over runs."""
    steps = max((len(r.steps) for r in runs), default=0)
    return [mean_std([r.steps[i].get(key) for r in runs if i < len(r.steps)]) for i in range(steps)]


def _gap(mixed: float | None, reindex: float | None) -> float | None:
    return None if mixed is None or reindex is None else mixed - reindex


def summarise(runs: Sequence[RunRecord]) -> dict[str, dict[str, Any]]:
    """Per scenario, per method: mean +- std of AC, AM, final self-test, mixed vs re-index, per-step curves."""
    out: dict[str, dict[str, Any]] = {}
    for scenario in dict.fromkeys(r.scenario for r in runs):
        out[scenario] = {}
        for method in dict.fromkeys(r.method for r in runs if r.scenario == scenario):
            done = [r for r in runs if r.scenario == scenario and r.method == method and r.status == "done"]
            failed = [r for r in runs if r.scenario == scenario and r.method == method and r.status != "done"]
            gaps = [_gap(r.final_mixed, r.final_reindex) for r in done]
            item_gaps = [_gap(r.final_mixed_items, r.final_reindex_items) for r in done]
            out[scenario][method] = {
                "runs": len(done),
                "failed": len(failed),
                "seeds": [r.seed for r in done],
                "ac": mean_std([r.ac for r in done]),
                "am": mean_std([r.am for r in done]),
                "final_self_test": mean_std([r.final_self_test for r in done]),
                "final_mixed": mean_std([r.final_mixed for r in done]),
                "final_reindex": mean_std([r.final_reindex for r in done]),
                "mixed_minus_reindex": mean_std(gaps),
                "final_mixed_items": mean_std([r.final_mixed_items for r in done]),
                "final_reindex_items": mean_std([r.final_reindex_items for r in done]),
                "mixed_minus_reindex_items": mean_std(item_gaps),
                "self_test_rises_all_seeds": bool(done) and all(r.self_test_rises for r in done),
                "refused_steps": {str(r.seed): r.refused_steps for r in done},
                "matrix_mean": mean_matrix([r.matrix for r in done]),
                "self_test_by_step": _per_step(done, "self_test"),
                "mixed_by_step": _per_step(done, "mixed_template"),
                "reindex_by_step": _per_step(done, "reindex_template"),
                "mixed_items_by_step": _per_step(done, "mixed_accuracy"),
                "gate_mixed_estimate_by_step": _per_step(done, "gate_mixed_estimate"),
                "reindex_items_by_step": _per_step(done, "reindex_accuracy"),
                "gate_passed_by_step": [
                    [r.steps[i]["gate_passed"] for r in done if i < len(r.steps)]
                    for i in range(max((len(r.steps) for r in done), default=0))
                ],
                "seconds": mean_std([r.seconds for r in done]),
            }
    return out


def check_targets(runs: Sequence[RunRecord], summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with what was measured and whether it is met (None: not measured)."""
    checks: list[dict[str, Any]] = []

    def add(name: str, target: str, measured: str, met: bool | None) -> None:
        checks.append({"target": name, "wanted": target, "measured": measured, "met": met})

    for scenario, wanted in (("short", TARGETS["hoc_ac_short"]), ("long", TARGETS["hoc_ac_long"])):
        hoc = [r for r in runs if r.scenario == scenario and r.method == "hoc" and r.status == "done"]
        if hoc:
            acs = [r.ac for r in hoc]
            add(f"hoc AC on {scenario}, every seed", f">= {wanted:.2f}", ", ".join(f"s{r.seed}: {r.ac:.3f}" for r in hoc),
                all(a is not None and a >= wanted for a in acs))
            add(f"hoc self-test rises at every promotion ({scenario})", "every seed",
                ", ".join(f"s{r.seed}: {'yes' if r.self_test_rises else 'no'}" for r in hoc), all(r.self_test_rises for r in hoc))
            for protocol, pairs in (("templates", [(r.seed, r.final_mixed, r.final_reindex) for r in hoc]),
                                    ("items", [(r.seed, r.final_mixed_items, r.final_reindex_items) for r in hoc])):
                add(f"mixed gallery within {TARGETS['mixed_vs_reindex_points']:.0f} points of re-index after the last hoc "
                    f"promotion ({scenario}, {protocol})",
                    f"<= {TARGETS['mixed_vs_reindex_points']:.0f} points",
                    ", ".join(f"s{s}: {100 * (m - x):+.1f}" for s, m, x in pairs if m is not None and x is not None),
                    all(m is not None and x is not None and 100 * (x - m) <= TARGETS["mixed_vs_reindex_points"] for _, m, x in pairs))
        methods = summary.get(scenario, {})
        if "hoc" in methods and "er" in methods and methods["hoc"]["am"]["mean"] is not None and methods["er"]["am"]["mean"] is not None:
            diff = 100 * (methods["hoc"]["am"]["mean"] - methods["er"]["am"]["mean"])
            add(f"AM(hoc) - AM(er) on {scenario}", f">= {TARGETS['hoc_am_over_er_points']:.0f} points", f"{diff:+.1f} points",
                diff >= TARGETS["hoc_am_over_er_points"])
        for method in ("er", "ce"):
            rs = [r for r in runs if r.scenario == scenario and r.method == method and r.status == "done"]
            if rs:
                add(f"the gate refuses {method} generations that break compatibility ({scenario})", "refusals recorded",
                    ", ".join(f"s{r.seed}: steps {r.refused_steps or 'none'}" for r in rs),
                    all(r.refused_steps for r in rs))
    return checks


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _fmt(stat: dict[str, Any], *, pct: bool = True, digits: int = 1) -> str:
    if stat.get("mean") is None:
        return "-"
    scale = 100.0 if pct else 1.0
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def render_report(data: dict[str, Any]) -> str:
    """report.md from the results.json content."""
    cfg = data["config"]
    lines = [
        "# Compatibility study",
        "",
        f"Dataset `{cfg['dataset']}`, K = {cfg['num_classes']}; scenarios {', '.join(cfg['scenarios'])}; methods "
        f"{', '.join(cfg['methods'])}; seeds 0..{cfg['seeds'] - 1}; device `{cfg['device']}`.",
        f"Sizes: {cfg['train_per_class']} training images per new class, {cfg['epochs']} epochs "
        f"({cfg['replacement_epochs'] if cfg['replacement_epochs'] is not None else 2 * cfg['epochs']} for a replacement), "
        f"{cfg['memory_per_class']} rehearsal images per class, {cfg['gallery_per_class']} gallery items per new class, "
        f"probe set {cfg['probe_per_class']} queries + {cfg['probe_per_class']} gallery items per class.",
        f"Code: commit `{(data.get('code') or {}).get('git_commit') or '?'}`"
        + (f", uncommitted: {', '.join(data['code']['uncommitted'])}" if (data.get('code') or {}).get('uncommitted') else "") + ".",
        f"Status: {data['status']} — {data['runs_done']} of {data['runs_planned']} runs finished"
        + (f", {data['runs_failed']} failed" if data["runs_failed"] else "") + f"; {data['seconds']:.0f} s so far.",
        "",
        "Every run trained, exported, registered, gated (`promote`) and indexed through the product's services in its own "
        "workspace; refused generations were " + ("forced (recorded as forced in the alias history) so the chain goes on."
                                                  if cfg["force_refused"] else "left out of the chain."),
        "Metrics: AC / AM over the promoted chain (template top-1 on the probe set, each pair on the classes both generations learnt: DESIGN 3 and README); self-test = M(t, t) of the last "
        "generation; mixed gallery = the production generation's probe queries searched on the stored gallery (items "
        "embedded by the generations that were production when they were added), scored with DESIGN 3's two protocols: "
        "templates (each class's items averaged, the primary metric) and items (the nearest item's label); re-index = "
        "the same after re-embedding every item with production. Mean ± std over seeds, in percent (AC as a fraction).",
        "",
        "## Results",
        "",
        "| scenario | method | runs | AC | AM | final self-test | mixed gallery | full re-index | mixed − re-index "
        "| mixed vs re-index (items) | gate refusals (steps, per seed) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, methods in data["summary"].items():
        for method, s in methods.items():
            refusals = "; ".join(f"s{seed}: {','.join(map(str, st)) or '-'}" for seed, st in s["refused_steps"].items())
            lines.append(
                f"| {scenario} | {method} | {s['runs']}{' (' + str(s['failed']) + ' failed)' if s['failed'] else ''} | "
                f"{_fmt(s['ac'], pct=False, digits=3)} | {_fmt(s['am'])} | {_fmt(s['final_self_test'])} | {_fmt(s['final_mixed'])} | "
                f"{_fmt(s['final_reindex'])} | {_fmt(s['mixed_minus_reindex'])} | "
                f"{_fmt(s['final_mixed_items'])} vs {_fmt(s['final_reindex_items'])} | {refusals or '-'} |"
            )
    lines += ["", "## Targets", "", "| target | wanted | measured | met |", "|---|---|---|---|"]
    for c in data["targets"]:
        met = "-" if c["met"] is None else ("yes" if c["met"] else "**no**")
        lines.append(f"| {c['target']} | {c['wanted']} | {c['measured']} | {met} |")
    lines += [
        "",
        "Reference (the authors' released runs, CIFAR-100 training, CIFAR-10 retrieval): d-Simplex-HOC AC 0.95 / AM 68.90 "
        "over 7 tasks, AC 0.65 / AM 68.07 over 31; ER AC 0.00 / AM 35.18 (7) and 0.00 / 30.32 (31).",
        "",
        "## Per run",
        "",
        "| scenario | method | seed | AC | AM | self-test by step | gate by step | mixed / re-index after the last step "
        "(templates; items) | s | workspace |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["runs"]:
        if r["status"] != "done":
            lines.append(f"| {r['scenario']} | {r['method']} | {r['seed']} | failed: {r['error']} | | | | | {r['seconds']:.0f} | |")
            continue
        st = " → ".join(f"{100 * s['self_test']:.1f}" for s in r["steps"])
        gates = " ".join("pass" if s["gate_passed"] else ("FORCED" if s["forced"] else "REFUSED") for s in r["steps"])
        lines.append(
            f"| {r['scenario']} | {r['method']} | {r['seed']} | {r['ac']:.3f} | {100 * r['am']:.1f} | {st} | {gates} | "
            f"{pct(r['final_mixed'])} / {pct(r['final_reindex'])}; {pct(r.get('final_mixed_items'))} / "
            f"{pct(r.get('final_reindex_items'))} | {r['seconds']:.0f} | "
            f"{Path(r['workspace']).name if r['workspace'] else '(removed)'} |"
        )
    if data.get("figures"):
        lines += ["", "## Figures", ""]
        for fig in data["figures"]:
            lines.append(f"![{fig}]({fig})")
            lines.append("")
    lines += [
        "",
        "Re-derive any run's numbers from its kept workspace: `upgrader matrix --home <out>/workspaces/<run>` "
        "or `upgrader.study.runner.registry_figures(home, generation_ids)`.",
        "",
    ]
    return "\n".join(lines)


def provenance() -> dict[str, Any]:
    """The code the study ran: git commit and uncommitted training-side files (the numbers depend on the recipe)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    info: dict[str, Any] = {"git_commit": None, "uncommitted": []}
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=10).stdout  # noqa: E731
        info["git_commit"] = run("rev-parse", "HEAD").strip() or None
        info["uncommitted"] = [line[3:] for line in run("status", "--porcelain", "--untracked-files=no").splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout (an installed package): nothing to record
    return info


def write_outputs(config: StudyConfig, runs: Sequence[RunRecord], *, started: float, planned: int, final: bool,
                  figures: bool = True, code: dict[str, Any] | None = None) -> dict[str, Any]:
    """Aggregate and (re)write results.json, report.md and the figures; return the results.json content."""
    out = Path(config.out)
    summary = summarise(runs)
    data: dict[str, Any] = {
        "study": "compatibility",
        "status": "finished" if final else "running",
        "written_at": datetime.now(timezone.utc).isoformat(),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "code": code or {},
        "config": asdict(config) | {"scenarios": list(config.scenarios), "methods": list(config.methods)},
        "runs_planned": planned,
        "runs_done": sum(r.status == "done" for r in runs),
        "runs_failed": sum(r.status != "done" for r in runs),
        "seconds": time.perf_counter() - started,
        "summary": summary,
        "targets": check_targets(runs, summary),
        "reference": REFERENCE,
        "figures": [],
        "runs": [jsonable(asdict(r)) for r in runs],
    }
    data = jsonable(data)
    if figures and config.figures and any(r.status == "done" for r in runs):
        from upgrader.study.plots import write_figures

        data["figures"] = write_figures(data, out)
    write_atomic(out / RESULTS_FILE, (json.dumps(data, indent=2) + "\n").encode())
    write_atomic(out / REPORT_FILE, render_report(data).encode())
    return data


def plan(config: StudyConfig) -> list[tuple[str, str, int]]:
    """(scenario, method, seed) of every run, seed-major so early partial results cover every method."""
    return [(s, m, seed) for s in config.scenarios for seed in range(config.seeds) for m in config.methods]


def run_study(
    config: StudyConfig,
    *,
    log: Log = lambda _: None,
    on_run: Callable[[int, int, RunRecord | None, str], None] | None = None,
) -> dict[str, Any]:
    """Run every (scenario, method, seed), writing the outputs after each run; return results.json's content.

    Args:
        config: what to run.
        log: one line per scenario step (stderr in the CLI).
        on_run: called as ``on_run(done, total, record or None, label)`` before (record None) and after each run.

    Raises:
        InvalidRequest: bad configuration (nothing is run).
    """
    config = replace(config, methods=parse_methods(config.methods), scenarios=parse_scenarios(config.scenarios))
    validate(config)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    code = provenance()  # taken at the start: the recipe in memory is the one imported now
    todo = plan(config)
    runs: list[RunRecord] = []
    for i, (scenario, method, seed) in enumerate(todo):
        label = run_dir_name(scenario, method, seed)
        if on_run:
            on_run(i, len(todo), None, label)
        log(f"run {i + 1}/{len(todo)}: {label}")
        record = run_one(config, scenario, method, seed, log=log)
        runs.append(record)
        if record.status == "done":
            log(f"  {label}: AC {record.ac:.3f}, AM {100 * record.am:.1f}, refused steps {record.refused_steps or 'none'} "
                f"in {record.seconds:.0f}s")
        write_outputs(config, runs, started=started, planned=len(todo), final=False, figures=i < len(todo) - 1, code=code)
        if on_run:
            on_run(i + 1, len(todo), record, label)
    return write_outputs(config, runs, started=started, planned=len(todo), final=True, code=code)
