"""What to train, checked before any training: the request (``TrainRequest``), its cheap checks
(``validate_request``), how long a run trains (``plan_length``), what a person should know before and
after (``request_warnings``, ``TrainWarning``) and which generation a run starts from or is anchored on.

Torch-free, so a UI can check a request and show what a run will do without loading the training
side; ``upgrader.training.pipeline`` runs the request. Refusals are worded for every UI; each carries
a ``reason`` so a UI with its own controls (the CLI's flags) can word it in their terms.

How long a run trains sizes itself to the data: a budget of optimiser steps per class it trains on
(:data:`STEPS_PER_CLASS`, new and rehearsed classes alike) rather than passes, and a batch no larger
than a tenth of the new images (:func:`default_batch_size`), so 300 images get as many updates as
24,000 do (a pass over 300 images at batch 128 is two steps). Passes (``epochs``), when given,
override the budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry import Generation

from upgrader.compat.metrics import DEFAULT_PRIMARY_METRIC
from upgrader.core.errors import InvalidRequest, NoProduction, RequestRefused
from upgrader.core.vocabulary import ANCHORED_METHODS, KINDS, METHODS, arch_label, check_backbone_installed
from upgrader.data.dataset import steps_per_epoch
from upgrader.data.items import parse_classes
from upgrader.data.readers import FASHION_ALIASES, dataset_classes
from upgrader.services.matrix import probe_labels
from upgrader.services.registration import known_classes
from upgrader.services.status import probe_self_test
from upgrader.services.workspace import Workspace, check_generation_name

#: Optimiser steps a run takes for each class it trains on (new and rehearsed) when neither steps nor
#: epochs are given. Fashion-MNIST's README tour: 400 steps for classes 0-3 (2.1 passes at batch 128),
#: 600 for the fine-tune on 4,5 (3.2), 800 for the replacement on 6,7 (4.3): 1,800 steps where the 3
#: epochs it replaced took 1,683. A fine-tune trains its parent's classes again from the rehearsal
#: memory, so it gets their steps too: on ~330 images of 5 classes, 500 steps learn them and 1,000
#: let the fine-tune on 5 more beat its parent on the old ones (the gate's condition).
STEPS_PER_CLASS = 100
#: Rehearsal images kept per class for later generations (every image of a smaller class). The study
#: measured it (``upgrader.study.scenario``): with 20 a small CNN forgets its old classes and no
#: fine-tune beats its parent on them; keeping up to 1,000 a class it does.
MEMORY_PER_CLASS = 1000
#: The batch when none is given: the largest power of two from MIN_BATCH to MAX_BATCH that is at most a
#: tenth of the new images (a batch of half the data is two steps a pass, and barely shuffles).
MAX_BATCH, MIN_BATCH, BATCH_SHARE = 128, 16, 10
#: Augmentations a run can use: none, random crops (padding 2), random crops and horizontal flips.
AUGMENTS: tuple[str, ...] = ("none", "crop", "crop+flip")


@dataclass(frozen=True)
class TrainRequest:
    """What to train. Defaults suit the 2-core CPU the demo runs on."""

    kind: str  # initial | finetune | replacement
    classes: tuple[str, ...]  # the new classes to learn (names or indices into the dataset's classes)
    dataset: str | None = None  # dataset spec; None: the workspace's
    arch: str | None = None  # built-in name or package.module:function; None: small_cnn (initial), the parent's (finetune)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the backbone (JSON values)
    method: str = "hoc"  # one of METHODS
    epochs: int | None = None  # passes over the new data; given, it overrides ``steps``
    steps: int | None = None  # optimiser steps; None (and no epochs): STEPS_PER_CLASS per class trained on
    batch_size: int | None = None  # half memory, half new data when a memory exists; None: default_batch_size
    augment: str | None = None  # one of AUGMENTS; None: crop+flip for Fashion-MNIST, crop otherwise
    lr: float = 0.05  # peak SGD learning rate
    per_class: int | None = None  # at most this many training images per new class (None: all)
    memory_per_class: int = MEMORY_PER_CLASS  # rehearsal images kept per class for later generations
    parent: str | None = None  # finetune: generation to start from (default production)
    anchor: bool = True  # replacement: use production as the frozen anchor (False: no anchor)
    init_weights: str | None = None  # initial/replacement: pretrained weights (a backbone's or a whole encoder's)
    init_prefix: str | None = None  # key mapping OLD[=NEW],... applied to ``init_weights`` (keys matching none left out)
    freeze_backbone: bool = False  # the backbone does not learn and keeps its batch-norm statistics
    backbone_lr_mult: float = 1.0  # the backbone's learning rate relative to the projection's
    name: str | None = None  # generation name; default g<N>-<kind>-<arch>-<method>
    seed: int | None = None  # None: the workspace seed
    device: str = "auto"  # auto | cpu | cuda
    extra: dict[str, Any] = field(default_factory=dict)  # further TrainConfig fields (lam, mu, ...)


def validate_request(ws: Workspace, req: TrainRequest) -> tuple[Generation | None, str, str]:
    """Check a request before any work: returns (parent, architecture, generation name).

    Raises:
        InvalidRequest: unknown kind, method or architecture, a name that breaks the registry's
            pattern (``RequestRefused``: a taken name, missing weights, no epochs, an architecture a
            fine-tune cannot change).
        NoProduction: a fine-tune with nothing in production.
        BackboneUnavailable: a user backbone whose package is not installed here (not a usage error:
            the spec is well formed, the environment lacks it).
    """
    if req.kind not in KINDS:
        raise InvalidRequest(f"unknown kind {req.kind!r}; use one of {', '.join(KINDS)}")
    if req.method not in METHODS:
        raise InvalidRequest(f"unknown method {req.method!r}; use one of {', '.join(METHODS)}")
    _check_length(req)
    if req.augment is not None and req.augment not in AUGMENTS:
        raise InvalidRequest(f"unknown augmentation {req.augment!r}; use one of {', '.join(AUGMENTS)}", subject="augment")
    parent = _resolve_parent(ws, req)
    if req.kind == "finetune":
        assert parent is not None
        arch = req.arch or parent.architecture
        if arch != parent.architecture:
            raise RequestRefused(
                f"fine-tuning keeps the architecture ({parent.architecture}); train a replacement to change it to {arch}",
                "finetune-arch", subject="arch", arch=arch, parent_arch=parent.architecture,
            )
    elif req.kind == "replacement":
        if not req.arch:
            raise RequestRefused("a replacement needs an architecture (the new one)", "replacement-arch", subject="arch")
        arch = req.arch
    else:
        arch = req.arch or "small_cnn"
    check_backbone_installed(arch)  # a malformed spec is a usage error; a package not installed, a failure
    _check_backbone_options(req)
    if req.init_weights and not Path(req.init_weights).is_file():
        raise RequestRefused(
            f"initial weights {req.init_weights}: no such file", "init-weights",
            subject="init_weights", init_weights=req.init_weights,
        )
    request_classes(ws, req)  # an unknown class or a reversed range is refused before any work
    name = check_generation_name(req.name or _default_name(ws, req, arch))
    ws.generation_dir(name)  # refuses a name whose folder would lie outside the workspace
    if any(g.name == name for g in ws.registry.list_generations()):
        raise RequestRefused(
            f"a generation named {name!r} exists already; choose another name", "name-taken", subject="name", name=name
        )
    # A folder of that name without a generation is what a killed run left: training clears and reuses it.
    return parent, arch, name


def _check_backbone_options(req: TrainRequest) -> None:
    """The backbone's arguments, pretrained weights and learning rate, checked before any work."""
    if not isinstance(req.arch_kwargs, dict) or not all(isinstance(k, str) for k in req.arch_kwargs):
        raise InvalidRequest("backbone arguments must be a JSON object of named values", subject="arch_kwargs")
    try:
        json.dumps(req.arch_kwargs, allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidRequest("backbone arguments must be plain JSON values (they are stored with the model)",
                             subject="arch_kwargs") from None
    if req.kind == "finetune" and (req.arch_kwargs or req.init_weights):
        raise InvalidRequest("a fine-tune starts from its parent's weights and keeps its backbone's arguments; "
                             "train a replacement to start from other weights", subject="init_weights")
    if req.init_prefix and not req.init_weights:
        raise InvalidRequest("a key prefix mapping needs initial weights to apply to", subject="init_prefix")
    if not req.backbone_lr_mult > 0:
        raise InvalidRequest(f"the backbone's learning-rate multiplier must be > 0, got {req.backbone_lr_mult}; "
                             "freeze the backbone instead of 0", subject="backbone_lr_mult")
    if req.freeze_backbone and req.backbone_lr_mult != 1.0:
        raise InvalidRequest("a frozen backbone has no learning rate; freeze it or give it a multiplier, not both",
                             subject="backbone_lr_mult")


def _check_length(req: TrainRequest) -> None:
    if req.epochs is not None and req.steps is not None:
        raise RequestRefused("give the length of a run as steps or as epochs, not both", "steps-and-epochs",
                             subject="steps")
    if req.epochs is not None and req.epochs < 1:
        raise RequestRefused("a training run needs at least 1 epoch", "epochs", subject="epochs")
    if req.steps is not None and req.steps < 1:
        raise RequestRefused("a training run needs at least 1 step", "steps", subject="steps")
    if req.batch_size is not None and req.batch_size < 2:
        raise RequestRefused("a batch needs at least 2 images", "batch-size", subject="batch_size")


def request_classes(ws: Workspace, req: TrainRequest) -> tuple[str, ...]:
    """The class names ``req`` trains on, checked against its dataset's classes (read without its images).

    Raises:
        InvalidRequest: an unknown class, a reversed or out-of-range index range, or a dataset that
            names nothing.
    """
    return parse_classes(list(req.classes), dataset_classes(req.dataset or ws.config.dataset))


def augmentation(req: TrainRequest, dataset: str) -> tuple[str, dict[str, Any]]:
    """The augmentation a run uses and the ``TrainConfig`` fields that say it.

    Horizontal flips are on by default only for Fashion-MNIST (garments read the same mirrored);
    digits, text and other orientation-bound images get random crops alone unless asked.
    """
    name = req.augment or ("crop+flip" if dataset.lower() in FASHION_ALIASES else "crop")
    return name, {"augment": name != "none", "flip": name == "crop+flip"}


def default_batch_size(n_new: int) -> int:
    """The batch a run on ``n_new`` new images uses when none is given (see MAX_BATCH)."""
    batch = MAX_BATCH
    while batch > MIN_BATCH and batch * BATCH_SHARE > n_new:
        batch //= 2
    return batch


@dataclass(frozen=True)
class TrainingLength:
    """How long one run trains: ``steps`` optimiser steps of ``batch_size`` images."""

    steps: int  # optimiser steps of the whole run
    batch_size: int
    steps_per_epoch: int  # steps of one pass over the new data
    given: str  # "steps" (given, or the per-class default) or "epochs": what the length came from
    n_new: int  # new images a pass goes over

    @property
    def epochs(self) -> float:
        """Passes over the new data (the last one may be partial)."""
        return self.steps / self.steps_per_epoch

    def describe(self) -> str:
        """One line for people."""
        return (f"{self.steps} steps of batch {self.batch_size} ({self.epochs:.1f} passes over "
                f"{self.n_new} new images)")


def default_steps(n_classes: int) -> int:
    """The steps of a run on ``n_classes`` classes (new and rehearsed) when none are given."""
    return STEPS_PER_CLASS * max(1, n_classes)


def plan_length(req: TrainRequest, n_new: int, with_memory: bool, n_classes: int) -> TrainingLength:
    """The length of a run of ``req`` on ``n_new`` new images and ``n_classes`` classes in all (half of
    each batch memory when ``with_memory``): its epochs when given, else its steps (by default
    :func:`default_steps`)."""
    batch = req.batch_size or default_batch_size(n_new)
    per_epoch = steps_per_epoch(n_new, batch, with_memory)
    if req.epochs is not None:
        return TrainingLength(req.epochs * per_epoch, batch, per_epoch, "epochs", n_new)
    return TrainingLength(req.steps or default_steps(n_classes), batch, per_epoch, "steps", n_new)


def planned_classes(ws: Workspace, req: TrainRequest, parent: Generation | None) -> int:
    """How many classes a run of ``req`` trains on: its new ones and those its parent's rehearsal
    memory holds (a fine-tune's or a replacement's), as the default length counts them."""
    label_map = ws.registry.interface().label_map
    new = {label_map.get(c, c) for c in request_classes(ws, req)}
    old = set(parent.train_config.get("vertices", [])) if parent is not None and req.kind != "initial" else set()
    return len(new | old)


@dataclass(frozen=True)
class TrainWarning:
    """Something a person should know about a run that does not stop it.

    ``reason`` names the case (``known-classes`` before a run; ``still-rising`` and ``below-parent``
    after one, when the generation looks under-trained) and ``details`` holds the values the message
    quotes, so a UI can word it with its own controls (the CLI's flags).
    """

    reason: str
    message: str  # in domain words, for any UI
    details: dict[str, Any] = field(default_factory=dict)


def request_warnings(ws: Workspace, req: TrainRequest, parent: Generation | None) -> list[TrainWarning]:
    """What to say before a run: a fine-tune on classes its parent learnt already.

    Not a refusal: training known classes again on fresh images is a way to improve them (their
    rehearsal memory is kept too); it is said because an index typed one off names a known class.
    """
    if req.kind != "finetune" or parent is None:
        return []
    by_vertex = {v: c for c, v in ws.registry.interface().label_map.items()}
    known = {by_vertex[v] for v in parent.train_config.get("vertices", []) if v in by_vertex}
    again = [c for c in request_classes(ws, req) if c in known]
    if not again:
        return []
    names = ", ".join(repr(c) for c in again)
    return [TrainWarning("known-classes", f"classes {names} are known to {parent.name} already: they train again "
                         "as new data, next to their rehearsal memory", {"classes": names, "parent": parent.name})]


#: Training accuracy that rose more than this over the last window of a run (vs the window before)
#: was still rising: the run stopped while it was learning.
RISING = 0.05


def undertrained_warnings(ws: Workspace, gen: Generation, parent: Generation | None, length: TrainingLength,
                          previous: float | None, last: float, window: int) -> list[TrainWarning]:
    """Warnings that ``gen`` looks under-trained: its training accuracy was still rising at the end, or
    its self-test on the classes its parent learnt is below the parent's (the same M(g, g) on those
    classes the gate and the matrix compute from the stored probe embeddings).

    Args:
        previous, last: the training accuracy over the window of ``window`` steps before the last one
            (None: the run was too short to have one), and over the last one.
    """
    out: list[TrainWarning] = []
    flag = {"length_given": length.given, "steps": length.steps, "suggest_steps": 2 * length.steps,
            "epochs": f"{length.epochs:.0f}", "suggest_epochs": f"{2 * length.epochs:.0f}"}
    prev = previous
    if prev is not None and last - prev > RISING:
        out.append(TrainWarning("still-rising", (
            f"training accuracy was still rising at the end ({100 * prev:.1f}% -> {100 * last:.1f}% over the last "
            f"{2 * window} steps): {gen.name} looks under-trained; train longer (now {length.steps} steps)"),
            {**flag, "before": f"{100 * prev:.1f}", "after": f"{100 * last:.1f}", "over": 2 * window}))
    if parent is not None and ws.registry.has_probe_embeddings(parent.id):
        mine, theirs = known_classes(gen), known_classes(parent)
        shared = sorted(set(mine) & set(theirs)) if mine is not None and theirs is not None else (mine or theirs)
        if shared:
            labels = probe_labels(ws)
            own = probe_self_test(ws, gen.id, shared, labels).get(DEFAULT_PRIMARY_METRIC)
            ref = probe_self_test(ws, parent.id, shared, labels).get(DEFAULT_PRIMARY_METRIC)
            if own < ref:
                out.append(TrainWarning("below-parent", (
                    f"self-test of {gen.name} on the {len(shared)} classes {parent.name} learnt is {100 * own:.1f}%, below "
                    f"{parent.name}'s {100 * ref:.1f}%: it looks under-trained, and the gate refuses a generation that "
                    f"is not better; train longer (now {length.steps} steps)"),
                    {**flag, "gen": gen.name, "parent": parent.name, "value": f"{100 * own:.1f}",
                     "parent_value": f"{100 * ref:.1f}", "classes": len(shared)}))
    return out


def anchor_generation(req: TrainRequest, parent: Generation | None) -> Generation | None:
    """The generation whose space the new one must stay compatible with, or None.

    Only the methods with a compatibility term (hoc, bct) have one: a fine-tune's parent, or
    production for a replacement that asked for an anchor. Training loads the anchor from its
    checkpoint: one without a checkpoint (an imported artifact) leaves the run unanchored.
    """
    anchored = req.method in ANCHORED_METHODS and (
        req.kind == "finetune" or (req.kind == "replacement" and req.anchor)
    )
    return parent if anchored else None


def _resolve_parent(ws: Workspace, req: TrainRequest) -> Generation | None:
    reg = ws.registry
    if req.kind == "initial":
        if req.parent:
            raise RequestRefused(
                "an initial generation has no parent; fine-tune to start from one", "initial-with-parent", subject="parent"
            )
        return None
    if req.parent:
        return reg.get_generation(req.parent)
    prod = reg.get_alias()
    if prod is None:
        if req.kind == "finetune":
            raise NoProduction("no production generation to fine-tune; train an initial one and promote it first")
        return None
    return reg.get_generation(prod)


def _default_name(ws: Workspace, req: TrainRequest, arch: str) -> str:
    n = len(ws.registry.list_generations()) + 1
    return f"g{n}-{req.kind}-{arch_label(arch)}-{req.method}"
