"""Sequential upgrade scenarios run through the real services: the demo's story and the study's.

Each step trains a generation (initial, fine-tune or replacement), puts it through the gate with
``promote``, adds the step's new classes to the gallery embedded by the new production generation,
and measures search accuracy on the mixed-generation gallery next to a full re-index. The figures it
leads with are the search users get (:mod:`upgrader.study.served_search`): held-out queries of every
class the gallery holds, drawn once per class beside its gallery items, searched through the served
index raw, calibrated, after partial backfills and after a re-index; and, before the step's items
join, the new production's calibrated top-1 on the gallery as it stood (the no-regression figure).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from registry import Generation, ProbeSet

from upgrader.core.errors import GateRefused
from upgrader.core.vocabulary import HOC_METHODS, arch_label
from upgrader.data.items import excluded_indices, item_uris, load_items
from upgrader.services.gallery import add_images, composition, label_accuracy, production_embedder, template_accuracy
from upgrader.services.matrix import compatibility_matrix
from upgrader.services.promotion import promote
from upgrader.services.registration import known_classes
from upgrader.services.status import probe_self_test
from upgrader.services.workspace import Workspace
from upgrader.services.workspace_init import probe_uris
from upgrader.services.training_plan import TrainRequest
from upgrader.study.served_search import ServedSearch, measure_served
from upgrader.training.pipeline import train_and_register


@dataclass(frozen=True)
class Step:
    """One upgrade: what kind of generation, which new classes (dataset indices), which architecture."""

    kind: str  # initial | finetune | replacement
    classes: tuple[int, ...]  # new classes, as indices into the dataset's classes
    arch: str  # architecture of the generation
    pretrained: bool = False  # a replacement starting from the backbone pretrained elsewhere (study.pretraining)


#: Classes the backbone of the ``pretrained`` scenario is pretrained on: none of the lineage's 0-5.
PRETRAIN_CLASSES: tuple[int, ...] = (6, 7, 8, 9)


#: short: the demo's story. long: 2 classes then 8 steps of one class, replacements at steps 3 and 6.
#: pretrained: the paper's replacement by an improved pre-trained model, a lineage over classes 0-5
#: whose replacement starts from a larger backbone pretrained on 6-9; from-scratch: the same steps,
#: the replacement trained from random weights (what ``pretrained`` is compared with).
SCENARIOS: dict[str, tuple[Step, ...]] = {
    "short": (
        Step("initial", (0, 1, 2, 3), "small_cnn"),
        Step("finetune", (4, 5), "small_cnn"),
        Step("replacement", (6, 7), "resnet_narrow"),
        Step("finetune", (8, 9), "resnet_narrow"),
    ),
    "long": (
        Step("initial", (0, 1), "small_cnn"),
        Step("finetune", (2,), "small_cnn"),
        Step("finetune", (3,), "small_cnn"),
        Step("replacement", (4,), "resnet_narrow"),
        Step("finetune", (5,), "resnet_narrow"),
        Step("finetune", (6,), "resnet_narrow"),
        Step("replacement", (7,), "resnet_wide"),
        Step("finetune", (8,), "resnet_wide"),
        Step("finetune", (9,), "resnet_wide"),
    ),
    "pretrained": (
        Step("initial", (0, 1), "small_cnn"),
        Step("finetune", (2, 3), "small_cnn"),
        Step("replacement", (4, 5), "resnet_wide", pretrained=True),
    ),
    "from-scratch": (
        Step("initial", (0, 1), "small_cnn"),
        Step("finetune", (2, 3), "small_cnn"),
        Step("replacement", (4, 5), "resnet_wide"),
    ),
}


@dataclass(frozen=True)
class ScenarioConfig:
    """Sizes of a scenario run. The defaults are the full demo on a 2-core CPU."""

    method: str = "hoc"  # training method of every step
    initial_epochs: int = 2  # epochs of the first generation
    epochs: int = 3  # epochs of a fine-tune (it continues training the old classes from memory too)
    replacement_epochs: int = 6  # epochs of a replacement (a new model learns from scratch)
    train_per_class: int | None = 2000  # training images per new class (None: all)
    # Rehearsal images kept per class. The product default is 20 (docs/design.md); the scenario keeps half
    # of each class's images: with 20 a small CNN forgets its old classes and no fine-tune beats its
    # parent on them, so the gate (rightly) refuses every upgrade.
    memory_per_class: int = 1000
    gallery_per_class: int = 300  # gallery items added per new class after each promotion
    held_out_per_class: int = 200  # held-out queries per class (test images in neither gallery nor probe set)
    batch_size: int = 128
    lr: float = 0.05
    seed: int = 0
    device: str = "auto"
    force_refused: bool = False  # promote refused generations anyway (recorded as forced) so the chain goes on
    own_negatives: bool = False  # hoc methods: new-to-new negatives in the compatibility loss (TrainConfig)
    pretrained_weights: str | None = None  # checkpoint whose backbone a ``pretrained`` step starts from
    # The architecture of every replacement (a built-in name, package.module:function or an entry-point
    # name) and its arguments; None: the scenario's own.
    replacement_arch: str | None = None
    replacement_arch_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    """What one step produced and measured."""

    step: int
    kind: str
    arch: str
    classes: list[str]
    generation_id: int
    generation_name: str
    train_seconds: float
    gate_passed: bool
    promoted: bool
    forced: bool
    gate_reasons: list[str]
    # The gate's estimate, on the probe set, of item-level Recall@1 on the mixed gallery after this step,
    # calibrated, next to a re-index (None when the report has none): what the operator saw before promoting.
    gate_mixed_estimate: float | None
    gate_reindex_estimate: float | None
    self_test: float  # M(t, t), template top-1 on the probe set, over the classes t learnt
    previous_self_test: float | None  # production's M(p, p) on those same classes before the step (None: first)
    gallery_items: int  # gallery size after the step
    gallery_by_generation: dict[int, int]
    mixed_accuracy: float  # item-level top-1 label accuracy of probe queries on the stored (mixed) gallery
    reindex_accuracy: float  # the same after re-embedding the whole gallery with production
    mixed_template: float  # template top-1 (the primary protocol, docs/design.md) on the stored (mixed) gallery
    reindex_template: float  # the same after re-embedding the whole gallery with production
    # The search users get (held-out queries, served index; see upgrader.study.served_search):
    served: dict[str, Any] | None  # ServedSearch after the step's items joined (None: nothing in the gallery)
    served_as_stood: float | None  # new production's calibrated top-1 on the gallery before its items joined
    served_before: float | None  # previous production's calibrated top-1 on that same gallery (the last step's)
    seconds: float  # wall time of the whole step


@dataclass
class ScenarioResult:
    """A finished scenario: per-step figures and the final compatibility matrix."""

    scenario: str
    method: str
    seed: int
    steps: list[StepResult] = field(default_factory=list)
    generation_ids: list[int] = field(default_factory=list)
    matrix: list[list[float]] = field(default_factory=list)
    ac: float = float("nan")
    am: float = float("nan")
    seconds: float = 0.0


Log = Callable[[str], None]


@dataclass
class HeldOut:
    """Held-out queries: per class, test images in neither the gallery nor the probe set."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def add(self, images: np.ndarray, labels: list[str]) -> None:
        self.images.append(images)
        self.labels.extend(labels)

    def stacked(self) -> np.ndarray:
        return np.concatenate(self.images)


def _gallery_images(ws: Workspace, cls: tuple[int, ...], config: ScenarioConfig, seed: int,
                    held_out: HeldOut) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Gallery items for the new classes: test-split items outside the probe set; and, drawn from
    what is left, the classes' held-out queries (added to ``held_out``)."""
    spec = ws.config.dataset
    ds = load_items(spec, "test")
    banned = excluded_indices(spec, "test", probe_uris(ws), ds)
    rng = np.random.default_rng(seed)
    chosen, queries = [], []
    for c in cls:
        idx = np.setdiff1d(np.flatnonzero(ds.labels == c), banned)
        pick = rng.choice(idx, size=min(config.gallery_per_class, len(idx)), replace=False)
        chosen.append(pick)
        rest = np.setdiff1d(idx, pick)
        queries.append(rng.choice(rest, size=min(config.held_out_per_class, len(rest)), replace=False))
    q = ds.take(np.sort(np.concatenate(queries)))
    held_out.add(q.images, q.class_names())
    idx = np.sort(np.concatenate(chosen))
    part = ds.take(idx)
    return part.images, [f"test-{i}" for i in idx], part.class_names(), item_uris(spec, "test", idx)


def _request(ws: Workspace, step: Step, i: int, names: list[str], config: ScenarioConfig) -> tuple[TrainRequest, str]:
    """The training request of step ``i``, and the architecture it trains."""
    # A fine-tune keeps production's architecture, whatever the plan said (a refused replacement
    # leaves the previous architecture in production).
    prod = ws.registry.get_alias()
    arch = ws.registry.get_generation(prod).architecture if step.kind == "finetune" and prod is not None else step.arch
    arch_kwargs: dict[str, Any] = {}
    if step.kind == "replacement" and config.replacement_arch:
        arch, arch_kwargs = config.replacement_arch, dict(config.replacement_arch_kwargs)
    return TrainRequest(
        kind=step.kind,
        classes=tuple(names),
        arch=arch if step.kind != "finetune" else None,
        arch_kwargs=arch_kwargs,
        method=config.method,
        epochs={"initial": config.initial_epochs, "replacement": config.replacement_epochs}.get(step.kind, config.epochs),
        batch_size=config.batch_size,
        lr=config.lr,
        per_class=config.train_per_class,
        memory_per_class=config.memory_per_class,
        seed=config.seed + i,
        device=config.device,
        name=f"g{i}-{step.kind}-{arch_label(arch)}-{config.method}",
        extra={"own_negatives": True} if config.own_negatives and config.method in HOC_METHODS else {},
        **_pretrained(step, config),
    ), arch


def _pretrained(step: Step, config: ScenarioConfig) -> dict[str, Any]:
    """The TrainRequest fields of a step that starts from the pretrained backbone."""
    if not step.pretrained:
        return {}
    if not config.pretrained_weights:
        raise ValueError("a pretrained step needs ScenarioConfig.pretrained_weights (study.pretraining makes it)")
    return {"init_weights": config.pretrained_weights, "init_prefix": "backbone."}  # the backbone of the checkpoint


def _measure(ws: Workspace, probe_query: ProbeSet, gallery: tuple[list[np.ndarray], list[str]]) -> dict[str, Any]:
    """Search accuracy of production's probe queries on the stored (mixed) gallery and after a re-index."""
    comp = composition(ws)
    prod, embedder = production_embedder(ws)
    stored = ws.registry.load_gallery()
    _, queries = ws.registry.get_probe_embeddings(prod.id, "query")
    reindexed = embedder.embed(np.concatenate(gallery[0])) if gallery[0] else stored.matrix
    labels = probe_query.class_names
    return {
        "gallery_items": comp.total,
        "gallery_by_generation": {g.id: n for g, n in comp.counts},
        "mixed_accuracy": label_accuracy(queries, labels, stored.matrix, stored.labels),
        "reindex_accuracy": label_accuracy(queries, labels, reindexed, gallery[1]),
        "mixed_template": template_accuracy(queries, labels, stored.matrix, stored.labels),
        "reindex_template": template_accuracy(queries, labels, reindexed, gallery[1]),
    }


def _estimate(served: dict[str, Any], key: str) -> float | None:
    """The gate report's item-level Recall@1 estimate ``key`` (calibrated | raw | reindex), if it has one."""
    value = ((served.get(key) or {}).get("recall_at_1") or {}).get("value")
    return None if value is None else float(value)


def _served_words(served: ServedSearch | None) -> str:
    """The log's words for the served figures."""
    if served is None:
        return "nothing to search yet"
    return (f"served top-1 {100 * served.raw:.1f}% raw, {100 * served.calibrated:.1f}% calibrated, "
            f"{100 * served.reindex:.1f}% after a re-index ({served.queries} held-out queries)")


def _gate(ws: Workspace, gen: Generation, name: str, i: int, config: ScenarioConfig,
          log: Log) -> tuple[bool, bool, list[str], dict[str, Any] | None]:
    """Promote ``gen`` through the gate: (passed, forced, refusal reasons, gate report)."""
    passed, forced, reasons, report = True, False, [], None
    try:
        done = promote(ws, gen.id, reason=f"scenario {name} step {i}", actor="scenario")
        passed = done.report.passed if done.report else True
        report = done.report.report if done.report else None
    except GateRefused as exc:
        passed = False
        report = ws.registry.get_gate_report(exc.report_id).report if exc.report_id else None
        reasons = list(report.get("reasons", [])) if report else [str(exc)]
        log(f"  gate refused {gen.name}: {'; '.join(reasons)}")
        if config.force_refused:
            promote(ws, gen.id, reason=f"scenario {name} step {i}: continue the chain past a refusal", force=True, actor="scenario")
            forced = True
    return passed, forced, reasons, report


def run_scenario(
    ws: Workspace,
    name: str,
    config: ScenarioConfig,
    *,
    log: Log = lambda _: None,
    on_progress: Callable | None = None,
) -> ScenarioResult:
    """Run scenario ``name`` in ``ws`` (which must be freshly initialised) and measure it."""
    steps = SCENARIOS[name]
    result = ScenarioResult(scenario=name, method=config.method, seed=config.seed)
    start = time.perf_counter()
    gallery: tuple[list[np.ndarray], list[str]] = ([], [])  # what a full re-index would embed: images, labels
    held_out = HeldOut()
    served_before: float | None = None  # production's calibrated served top-1 on the gallery as it stands
    chain: list[int] = []
    classes_all = load_items(ws.config.dataset, "test").classes
    # The probe set is fixed when the workspace is made: read it (pixels included) once, not per step.
    probe = (ws.registry.probe_set("query"), ws.registry.probe_set("gallery"))
    vertices = (probe[0].vertices, probe[1].vertices)
    for i, step in enumerate(steps, 1):
        t0 = time.perf_counter()
        names = [classes_all[c] for c in step.classes]
        prod = ws.registry.get_alias()
        req, arch = _request(ws, step, i, names, config)
        log(f"step {i}/{len(steps)}: {step.kind} {arch} ({config.method}) on {', '.join(names)}")
        out = train_and_register(ws, req, progress=on_progress)
        gen = out.generation
        classes = known_classes(gen)
        previous = None if prod is None else probe_self_test(ws, prod, classes, vertices).template_top1
        passed, forced, reasons, report = _gate(ws, gen, name, i, config, log)
        before, as_stood = served_before, None
        if passed or forced:
            chain.append(gen.id)
            if held_out.labels and ws.registry.gallery_counts():
                as_stood = measure_served(ws, held_out.stacked(), held_out.labels, curves=False).calibrated
            imgs, ids, labels, uris = _gallery_images(ws, step.classes, config, config.seed + 100 + i, held_out)
            add_images(ws, imgs, [f"{ids_i}" for ids_i in ids], labels=labels, source_uris=uris)
            gallery[0].append(imgs)
            gallery[1].extend(labels)
        served = measure_served(ws, held_out.stacked(), held_out.labels) if held_out.labels else None
        served_before = served.calibrated if served is not None else served_before
        estimate = ((report or {}).get("served") or {})
        sr = StepResult(
            step=i, kind=step.kind, arch=arch, classes=names, generation_id=gen.id, generation_name=gen.name,
            train_seconds=out.seconds, gate_passed=passed, promoted=passed or forced, forced=forced,
            gate_reasons=reasons, gate_mixed_estimate=_estimate(estimate, "calibrated"),
            gate_reindex_estimate=_estimate(estimate, "reindex"),
            self_test=probe_self_test(ws, gen.id, classes, vertices).template_top1, previous_self_test=previous,
            **_measure(ws, probe[0], gallery), served=asdict(served) if served is not None else None,
            served_as_stood=as_stood, served_before=before, seconds=time.perf_counter() - t0,
        )
        result.steps.append(sr)
        log(f"  {gen.name}: self-test {100 * sr.self_test:.1f}%, gate {'passed' if passed else 'REFUSED'}"
            f"{' (forced)' if forced else ''}; {sr.gallery_items} gallery items; {_served_words(served)} "
            f"in {sr.seconds:.0f}s")
    view = compatibility_matrix(ws, chain)
    result.generation_ids = chain
    result.matrix = view.matrix.tolist()
    result.ac = view.average_compatibility
    result.am = view.average_multimodel_accuracy
    result.seconds = time.perf_counter() - start
    return result


def quick(config: ScenarioConfig) -> ScenarioConfig:
    """The --quick sizes: fewer images and epochs, same story."""
    return replace(config, initial_epochs=1, epochs=2, replacement_epochs=4, train_per_class=600, memory_per_class=300,
                   gallery_per_class=100, held_out_per_class=100)
