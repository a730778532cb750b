"""The dashboard's read model: what the Textual dashboard (``tui/``) shows, read in one call per view,
and its training form turned into a checked plan.

The dashboard goes through services only: it never touches ``ws.registry`` itself. This module reads
a whole snapshot for a refresh, the details of one generation, the alias history with names, the
gallery by generation and the compatibility matrix, judges a rollback before anyone confirms it
(:func:`preview_rollback`, the same judgement ``promotion.rollback`` makes, nothing stored), and checks
a training form against the workspace (``upgrader.services.training_plan``). Running the plan is the training side's job: the dashboard
imports ``upgrader.training.pipeline`` only inside the action that starts a run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from registry import AliasMove, GateReport, Generation
from rich.text import Text

from upgrader.compat.gate import GateConfig
from upgrader.core.errors import InvalidRequest, NoProduction
from upgrader.core.markup import styled
from upgrader.core.vocabulary import ARCHITECTURES, KINDS, backbone_entry_points
from upgrader.services.matrix import MatrixView, compatibility_matrix
from upgrader.services.promotion import (
    RollbackGround,
    judge_rollback,
    newer_gallery_generations,
    rollback_report_body,
    rollback_target,
)
from upgrader.services.status import GenerationSummary, generation_rows
from upgrader.services.training_plan import (
    STEPS_PER_CLASS,
    TrainRequest,
    TrainWarning,
    anchor_generation,
    augmentation,
    default_steps,
    planned_classes,
    request_warnings,
    validate_request,
)
from upgrader.services.workspace import Workspace

#: The kinds in the order the training form offers them (the common case first).
TRAIN_KINDS: tuple[str, ...] = tuple(sorted(KINDS, key=("finetune", "replacement", "initial").index))

_BYTES_PER_VALUE = {"float32": 4, "float16": 2}


@dataclass(frozen=True)
class HistoryEntry:
    """One move of the production alias with the generation names resolved."""

    move: AliasMove
    from_name: str | None  # None for the very first promotion
    to_name: str


@dataclass(frozen=True)
class GallerySummary:
    """The production gallery by generation, for the bar chart."""

    counts: list[tuple[Generation, int]]  # (generation, items), ascending generation id
    total: int  # items in the gallery
    production: int | None  # generation id production points at
    embedding_dim: int  # K-1
    embedding_dtype: str  # how embeddings are stored ("float32" / "float16")

    @property
    def share_on_old(self) -> float:
        """Fraction of items written by generations other than production (0 for an empty gallery)."""
        if self.total == 0:
            return 0.0
        return sum(n for g, n in self.counts if g.id != self.production) / self.total

    @property
    def embedding_bytes(self) -> int:
        """Bytes the stored embeddings take (items x dim x bytes per value)."""
        return self.total * self.embedding_dim * _BYTES_PER_VALUE.get(self.embedding_dtype, 4)


@dataclass(frozen=True)
class DashboardSnapshot:
    """Everything the dashboard's tables show, read in one go."""

    home: str
    dataset: str
    num_classes: int
    rows: list[GenerationSummary]  # the lineage, ascending id
    production: Generation | None
    gallery: GallerySummary
    history: list[HistoryEntry]  # oldest first
    live: list[int]  # generation ids with items in the gallery

    def name_of(self, gen_id: int | None) -> str:
        """A generation's name, '-' for None, the id when unknown."""
        if gen_id is None:
            return "-"
        for row in self.rows:
            if row.generation.id == gen_id:
                return row.generation.name
        return str(gen_id)


@dataclass(frozen=True)
class GenerationDetails:
    """One generation with its relatives, artifact and gate reports (newest first)."""

    row: GenerationSummary
    parent: Generation | None
    children: list[Generation]
    artifact_path: str  # absolute path of the ONNX artifact
    gate_reports: list[GateReport]
    names: dict[int, str] = field(default_factory=dict)  # id -> name of every generation


def alias_history(ws: Workspace) -> list[HistoryEntry]:
    """Every move of ``production``, oldest first, with generation names."""
    reg = ws.registry
    names = {g.id: g.name for g in reg.list_generations()}
    return [
        HistoryEntry(m, names.get(m.from_gen, str(m.from_gen)) if m.from_gen is not None else None, names.get(m.to_gen, str(m.to_gen)))
        for m in reg.alias_history()
    ]


def gallery_summary(ws: Workspace) -> GallerySummary:
    """Items per generation (the same figures as ``upgrader.services.gallery.composition``, without loading the
    dataset readers that module needs)."""
    reg = ws.registry
    iface = reg.interface()
    counts = reg.gallery_counts()
    return GallerySummary(
        counts=[(reg.get_generation(gid), n) for gid, n in sorted(counts.items())],
        total=sum(counts.values()),
        production=reg.get_alias(),
        embedding_dim=iface.embedding_dim,
        embedding_dtype=iface.embedding_dtype,
    )


def load_snapshot(ws: Workspace) -> DashboardSnapshot:
    """Read the lineage, the gallery and the history (self-tests are computed once and cached)."""
    reg = ws.registry
    rows = generation_rows(ws)
    prod = next((r.generation for r in rows if r.is_production), None)
    return DashboardSnapshot(
        home=str(ws.home),
        dataset=ws.config.dataset,
        num_classes=ws.config.num_classes,
        rows=rows,
        production=prod,
        gallery=gallery_summary(ws),
        history=alias_history(ws),
        live=reg.live_generations(),
    )


def generation_details(ws: Workspace, ref: int | str) -> GenerationDetails:
    """What the details panel shows for one generation."""
    reg = ws.registry
    gen = reg.get_generation(ref)
    rows = generation_rows(ws)
    row = next(r for r in rows if r.generation.id == gen.id)
    gens = [r.generation for r in rows]
    return GenerationDetails(
        row=row,
        parent=next((g for g in gens if g.id == gen.parent_id), None),
        children=[g for g in gens if g.parent_id == gen.id],
        artifact_path=str(ws.resolve(gen.onnx_path)),
        gate_reports=reg.gate_reports(gen.id),
        names={g.id: g.name for g in gens},
    )


@dataclass(frozen=True)
class TrainForm:
    """What the dashboard's training form collects."""

    kind: str  # finetune | replacement | initial
    classes: str  # "4-6", "4,5" or class names, comma separated
    dataset: str = ""  # "" -> the workspace's dataset
    arch: str = ""  # "" -> the parent's (finetune) / small_cnn (initial)
    epochs: int | None = None  # passes over the new data; given, it overrides ``steps``
    method: str = "hoc"
    per_class: int | None = None  # at most this many training images per class
    name: str = ""  # "" -> the default g<N>-<kind>-<arch>-<method>
    steps: int | None = None  # optimiser steps; None (and no epochs) -> STEPS_PER_CLASS per class trained on
    augment: str = ""  # "" -> crop+flip for Fashion-MNIST, crop otherwise; else one of AUGMENTS
    arch_kwargs: str = ""  # the backbone's keyword arguments as a JSON object, as typed; "" -> none
    init_weights: str = ""  # pretrained weights file (a backbone's or a whole encoder's); "" -> from scratch
    init_prefix: str = ""  # key mapping OLD[=NEW],... applied to the weights; "" -> keys as they are
    freeze_backbone: bool = False  # only the projection learns; the backbone keeps weights and batch-norm statistics


def architecture_choices() -> tuple[str, ...]:
    """What the form's architecture field suggests: the built-ins, then the names installed packages
    register in the ``upgrader.backbones`` entry-point group (read from metadata, nothing imported).
    A ``package.module:function`` of the user's own is typed, not suggested."""
    return ARCHITECTURES + tuple(sorted(set(backbone_entry_points()) - set(ARCHITECTURES)))


def parse_arch_kwargs(text: str) -> Any:
    """The form's backbone arguments read as JSON ("" -> none); whether they are an object of plain
    values is the training plan's check (``validate_request``), the same for every UI.

    Raises:
        InvalidRequest: the text is not JSON.
    """
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"backbone arguments are not JSON ({exc.msg} at character {exc.pos}); give an object, "
                             'e.g. {"width": 64}', subject="arch_kwargs") from None


@dataclass(frozen=True)
class TrainingPlan:
    """A checked training request and what it will do, for the confirmation modal."""

    request: TrainRequest  # what ``upgrader.training.pipeline.train_and_register`` runs
    name: str  # the generation it will register
    arch: str
    parent: Generation | None  # starts from / anchored on
    anchored: bool  # trains with a compatibility term against ``parent``
    dataset: str
    classes: tuple[str, ...]
    warnings: tuple[TrainWarning, ...] = ()  # what to know before it runs (classes the parent knows)
    n_classes: int = 0  # classes it trains on, new and rehearsed (what the default length counts)

    def describe(self) -> list[Text]:
        """The lines the confirmation modal shows: exactly what the run does.

        Styled text, not markup strings: the name, the parent, the classes and the dataset path are
        what a user typed and are shown as typed (a class called ``[/]x`` included).
        """
        req = self.request
        what = {"finetune": "Fine-tune", "replacement": "Replacement", "initial": "Initial generation"}[req.kind]
        lines = [styled("{}: train [b]{}[/b] ({}, method {})", what, self.name, self.arch, req.method)]
        if req.kind == "finetune" and self.parent is not None:
            lines.append(styled("starting from the weights of {}, with its rehearsal memory", self.parent.name))
        if self.anchored and self.parent is not None:
            lines.append(styled("compatibility loss anchored on {} (frozen)", self.parent.name))
        elif req.kind != "initial":
            lines.append(Text("no anchor: nothing keeps it compatible with earlier generations"))
        per = f", at most {req.per_class} images per class" if req.per_class else ""
        length = (f"{req.epochs} epoch(s)" if req.epochs else f"{req.steps} optimiser steps" if req.steps
                  else f"{default_steps(self.n_classes)} optimiser steps ({STEPS_PER_CLASS} for each of {self.n_classes} "
                       f"class{'es' if self.n_classes != 1 else ''}, new and rehearsed)")
        augment, _ = augmentation(req, self.dataset)
        lines.append(styled("data: classes {} of {}{}; {}, augmentation {}", ", ".join(self.classes), self.dataset, per,
                            length, augment))
        lines.extend(self._backbone_lines())
        for warning in self.warnings:
            lines.append(styled("[yellow]warning:[/] {}", warning.message))
        lines.append(styled("then: export to ONNX, embed the probe set, register as a [b]candidate[/b]"))
        lines.append(Text("production does not move; verify and promote it afterwards"))
        return lines

    def _backbone_lines(self) -> list[Text]:
        """What the run does with its backbone beyond the defaults (arguments, weights, freezing)."""
        req = self.request
        lines = [styled("backbone arguments {}", json.dumps(req.arch_kwargs))] if req.arch_kwargs else []
        if req.init_weights:
            mapped = styled(", keys mapped by {}", req.init_prefix) if req.init_prefix else Text("")
            lines.append(styled("starting from the pretrained weights in {}", req.init_weights) + mapped)
        if req.freeze_backbone:
            lines.append(Text("backbone frozen: only the projection learns; its batch-norm statistics stay put"))
        return lines


def plan_training(ws: Workspace, form: TrainForm) -> TrainingPlan:
    """Turn the form into a checked request (unknown kind, architecture, taken name... are refused).

    Reads the registry, so call it from a worker thread.

    Raises:
        InvalidRequest: the form contradicts itself or the workspace (an architecture that names
            nothing, backbone arguments that are not a JSON object...).
        NoProduction: a fine-tune with nothing in production.
        BackboneUnavailable: a user backbone whose package is not installed here.
    """
    if form.kind not in TRAIN_KINDS:
        raise InvalidRequest(f"unknown kind {form.kind!r}; use one of {', '.join(TRAIN_KINDS)}")
    classes = tuple(c.strip() for c in form.classes.split(",") if c.strip())
    if not classes:
        raise InvalidRequest("name the classes to train on, e.g. 4-6 or 4,5")
    if form.per_class is not None and form.per_class < 1:
        raise InvalidRequest("images per class must be at least 1")
    req = TrainRequest(
        kind=form.kind,
        classes=classes,
        dataset=form.dataset or None,
        arch=form.arch or None,
        method=form.method,
        epochs=form.epochs,
        steps=form.steps,
        augment=form.augment or None,
        per_class=form.per_class,
        name=form.name or None,
        arch_kwargs=parse_arch_kwargs(form.arch_kwargs),
        init_weights=str(Path(form.init_weights).expanduser()) if form.init_weights else None,
        init_prefix=form.init_prefix or None,
        freeze_backbone=form.freeze_backbone,
    )
    parent, arch, name = validate_request(ws, req)  # classes checked against the dataset's, too
    # the anchor is loaded from its checkpoint: an imported artifact has none and anchors nothing
    anchor = anchor_generation(req, parent)
    anchored = anchor is not None and bool(anchor.checkpoint_path)
    warnings = tuple(request_warnings(ws, req, parent))
    n_classes = planned_classes(ws, req, parent)
    req = replace(req, name=name)
    return TrainingPlan(req, name, arch, parent, anchored, form.dataset or ws.config.dataset, classes, warnings, n_classes)


def matrix_view(ws: Workspace, *, live_only: bool, metric: str, margin: float = 0.0) -> MatrixView:
    """The compatibility matrix over the live generations, or over the set ``upgrader matrix`` shows by
    default (the same call, so the dashboard and the CLI print the same AC and AM for a workspace);
    each cell carries the gate's verdict at ``margin``. Why a generation was refused is in its gate
    reports (the Generations view)."""
    return compatibility_matrix(ws, live_only=live_only, metric=metric, margin=margin)


@dataclass(frozen=True)
class RollbackPreview:
    """What a rollback to ``target`` would meet at the gate now, before anyone confirms it.

    The same judgement :func:`upgrader.services.promotion.rollback` makes (and makes again when the
    person confirms, so a change in between is not missed), without storing a report or moving anything.
    """

    production: Generation
    target: Generation
    passed: bool
    ground: RollbackGround  # why the target may serve again, or that it has no standing
    report: dict[str, Any]  # the report body a rollback would store (checks, ground first; reasons)
    newer: list[int]  # live gallery generations written after the target (the upper triangle)


def preview_rollback(ws: Workspace, target: int | None, config: GateConfig) -> RollbackPreview:
    """Judge a rollback to ``target`` (None: production's previous holder) without moving production.

    Raises:
        NoProduction: nothing is in production. InvalidRequest: the target is production already, or
            production has no earlier holder and no target was named.
    """
    reg = ws.registry
    production = reg.get_alias()
    if production is None:
        raise NoProduction("no production generation; there is nothing to roll back")
    gen = reg.get_generation(target) if target is not None else rollback_target(ws)
    if gen.id == production:
        raise InvalidRequest(f"generation {gen.name} is production already; select an older one to roll back to")
    verdict, ground = judge_rollback(ws, gen, config)
    body = rollback_report_body(verdict, ground, gen.id)
    newer = newer_gallery_generations(reg.live_generations(), gen.id)
    return RollbackPreview(reg.get_generation(production), gen, verdict.passed, ground, body, newer)
