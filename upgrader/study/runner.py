"""The compatibility study: sequential scenarios x training methods x seeds, through the real services.

Every run gets its own fresh workspace (``<out>/workspaces/<scenario>-<method>-s<seed>`` when kept, a
temporary folder otherwise) and goes through :func:`upgrader.study.scenario.run_scenario`, i.e. the real
training, ONNX export, registry, ONNX Runtime embedder, gate (``promote``) and gallery. Generations the
gate refuses are recorded and, by default, forced so the chain goes on (that is how ``er`` and ``ce``
show *where* compatibility breaks). After every run the study rewrites ``results.json`` (so a stopped
study leaves its partial results), ``report.md`` and PNG figures; the aggregation over seeds is in
:mod:`upgrader.study.aggregation`, the report in :mod:`upgrader.study.report`.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from registry.errors import RegistryError
from upgrader.core.errors import InvalidRequest, UpgraderError, WorkspaceError
from upgrader.core.files import write_atomic
from upgrader.core.jsonable import jsonable
from upgrader.core.vocabulary import METHODS, check_backbone_installed
from upgrader.study.aggregation import REFERENCE, check_targets, summarise
from upgrader.study.records import RunRecord
from upgrader.study.report import render_report

SCENARIO_NAMES = ("short", "long", "pretrained", "from-scratch")
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
RUN_MARKER = "study-run.json"  # marks a workspace the study made, so a re-run may replace it (and nothing else)

Log = Callable[[str], None]


@dataclass(frozen=True)
class StudyConfig:
    """What to run and at which sizes; README's "Compatibility study" says how long the defaults take."""

    out: str  # output folder: results.json, report.md, figures, workspaces/
    dataset: str = "fashion-mnist"  # any dataset spec the product reads (>= 10 classes for the scenarios)
    scenarios: tuple[str, ...] = ("short",)  # short | long | pretrained | from-scratch (any of them)
    methods: tuple[str, ...] = METHODS  # training methods to compare
    seeds: int = 3  # seeds 0 .. seeds-1 (also the probe draw of each run's workspace)
    device: str = "auto"  # auto | cpu | cuda
    num_classes: int = 64  # interface K (preallocated vertices)
    # Sizes: the quick demo's images per class, with more epochs: a generation trained 1-2 epochs is
    # so far from converged that its features barely reach their vertices.
    initial_epochs: int = 5  # epochs of the first generation
    epochs: int = 5  # epochs of a fine-tune
    replacement_epochs: int | None = None  # epochs of a replacement (None: 2 x epochs)
    train_per_class: int = 600  # training images per new class (the quick demo's)
    memory_per_class: int = 300  # rehearsal images kept per class (the quick demo's; see ScenarioConfig)
    gallery_per_class: int = 100  # gallery items added per new class after each promotion
    # 100 + 100 per class: with fewer, one query weighs too much in a small class pair (at 50, one query
    # is 0.5 points of a 4-class pair) and ties, which the gate counts as violations, become likely
    # between generations of equal quality.
    probe_per_class: int = 100  # probe queries and probe gallery items per class (each)
    batch_size: int = 128
    lr: float = 0.05
    force_refused: bool = True  # promote refused generations anyway (a recorded forced move) so the chain goes on
    own_negatives: bool = False  # hoc methods train with new-to-new negatives (TrainConfig.own_negatives)
    replacement_arch: str | None = None  # every replacement's architecture (a user backbone too); None: the scenario's
    replacement_arch_kwargs: dict[str, Any] = field(default_factory=dict)
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
            own_negatives=self.own_negatives,
            replacement_arch=self.replacement_arch,
            replacement_arch_kwargs=dict(self.replacement_arch_kwargs),
        )


# --------------------------------------------------------------------------------------------------
# Validation and workspaces
# --------------------------------------------------------------------------------------------------


def _names(text: str | Sequence[str]) -> list[str]:
    """"a,b" or ["a", "b,c"] -> lower-case names, blanks dropped."""
    items = [text] if isinstance(text, str) else list(text)
    return [p.strip().lower() for item in items for p in item.split(",") if p.strip()]


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """"hoc,ce" or ["hoc", "ce"] -> ("hoc", "ce"); unknown names are a usage error."""
    names = _names(text)
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        raise InvalidRequest(f"unknown method(s) {bad or names}; choose from {', '.join(METHODS)}")
    return tuple(dict.fromkeys(names))


def parse_scenarios(text: str | Sequence[str]) -> tuple[str, ...]:
    """"short", "long" or "short,long" -> a tuple of scenario names."""
    names = _names(text)
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
    from upgrader.study.scenario import PRETRAIN_CLASSES, SCENARIOS

    parse_methods(config.methods)
    parse_scenarios(config.scenarios)
    if config.replacement_arch:
        try:  # a malformed spec: InvalidRequest; a package not installed: BackboneUnavailable (ModelError)
            check_backbone_installed(config.replacement_arch)
        except UpgraderError as exc:
            exc.subject = "replacement_arch"  # the study's flag, not train's --arch
            raise
    for name, value in (("the number of seeds", config.seeds), ("the epochs of a fine-tune", config.epochs),
                        ("training images per new class", config.train_per_class),
                        ("gallery items per new class", config.gallery_per_class),
                        ("probe items per class", config.probe_per_class)):
        if value < 1:
            raise InvalidRequest(f"{name} must be at least 1 (got {value})")
    classes = load_items(config.dataset, "test").classes
    used = [c for s in config.scenarios for step in SCENARIOS[s] for c in step.classes]
    if any(step.pretrained for s in config.scenarios for step in SCENARIOS[s]):
        used += list(PRETRAIN_CLASSES)  # the pretrained backbone learns classes the lineage never sees
    needed = 1 + max(used)
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
            raise WorkspaceError(f"{home} exists and was not made by the study; choose another output folder")
        shutil.rmtree(home)
    return home


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------


def registry_figures(home: str | Path, generation_ids: Sequence[int]) -> dict[str, Any]:
    """Re-derive a run's figures from its registry alone: the matrix, AC, AM and the alias history.

    This is what a user runs on a kept workspace to check results.json (and what the tests compare).
    """
    from upgrader.services.matrix import compatibility_matrix
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


def _fill_record(record: RunRecord, result: Any, home: Path) -> None:
    """Copy a finished :class:`upgrader.study.scenario.ScenarioResult` into ``record`` and re-read the registry."""
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


def _with_pretrained(config: StudyConfig, scenario: str, method: str, seed: int, log: Log) -> Any:
    """The run's ScenarioConfig, with the pretrained checkpoint its scenario's replacement starts from."""
    from upgrader.study.pretraining import pretrain_backbone
    from upgrader.study.scenario import SCENARIOS

    sc = config.scenario_config(method, seed)
    arch = next((sc.replacement_arch or step.arch for step in SCENARIOS[scenario] if step.pretrained), None)
    if arch is None:
        return sc
    path = pretrain_backbone(config.out, config.dataset, arch, sc, num_classes=config.num_classes, log=log)
    return replace(sc, pretrained_weights=str(path))


def run_one(config: StudyConfig, scenario: str, method: str, seed: int, *, log: Log = lambda _: None) -> RunRecord:
    """Run one scenario for one method and seed in a fresh workspace and record it.

    Product and registry errors (bad data, a failed export, a schema changed under a running study...)
    are recorded as a failed run, not raised, so one broken run does not lose the rest of the study.

    Raises:
        WorkspaceError: the run's kept-workspace folder exists and was not made by the study.
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
            result = run_scenario(ws, scenario, _with_pretrained(config, scenario, method, seed, log), log=log)
        _fill_record(record, result, home)
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
# The study
# --------------------------------------------------------------------------------------------------


def provenance() -> dict[str, Any]:
    """The code the study ran: git commit and the tracked files changed since (the numbers depend on the recipe)."""
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
    """Aggregate and (re)write results.json, report.md and the figures.

    Args:
        config: the study's configuration (recorded in results.json).
        runs: every run so far.
        started: ``time.perf_counter()`` when the study began.
        planned: how many runs the study will make in all.
        final: whether every run is done (results.json's status).
        figures: whether to draw the figures this time (also needs ``config.figures`` and a finished run).
        code: :func:`provenance` of the study.

    Returns:
        The results.json content.
    """
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
