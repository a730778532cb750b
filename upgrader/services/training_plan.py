"""What to train, checked before any training: the request (``TrainRequest``), its cheap checks
(``validate_request``) and which generation a run starts from or is anchored on.

Torch-free, so a UI can check a request and show what a run will do without loading the training
side; ``upgrader.training.pipeline`` runs the request. Refusals are worded for every UI; each carries
a ``reason`` so a UI with its own controls (the CLI's flags) can word it in their terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry import Generation

from upgrader.core.errors import InvalidRequest, NoProduction, RequestRefused
from upgrader.core.vocabulary import ANCHORED_METHODS, ARCHITECTURES, KINDS, METHODS
from upgrader.services.workspace import Workspace, check_generation_name


@dataclass(frozen=True)
class TrainRequest:
    """What to train. Defaults suit the 2-core CPU the demo runs on."""

    kind: str  # initial | finetune | replacement
    classes: tuple[str, ...]  # the new classes to learn (names or indices into the dataset's classes)
    dataset: str | None = None  # dataset spec; None: the workspace's
    arch: str | None = None  # architecture; None: small_cnn (initial), the parent's (finetune)
    method: str = "hoc"  # one of METHODS
    epochs: int = 3  # passes over the new data
    batch_size: int = 128  # batch size (half memory, half new data when a memory exists)
    lr: float = 0.05  # peak SGD learning rate
    per_class: int | None = None  # at most this many training images per new class (None: all)
    memory_per_class: int = 20  # rehearsal images kept per class for later generations
    parent: str | None = None  # finetune: generation to start from (default production)
    anchor: bool = True  # replacement: use production as the frozen anchor (False: no anchor)
    init_weights: str | None = None  # replacement: a checkpoint of the same architecture to start from
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
    """
    if req.kind not in KINDS:
        raise InvalidRequest(f"unknown kind {req.kind!r}; use one of {', '.join(KINDS)}")
    if req.method not in METHODS:
        raise InvalidRequest(f"unknown method {req.method!r}; use one of {', '.join(METHODS)}")
    if req.epochs < 1:
        raise RequestRefused("a training run needs at least 1 epoch", "epochs", subject="epochs")
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
    if arch not in ARCHITECTURES:
        raise InvalidRequest(f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
    if req.init_weights and not Path(req.init_weights).is_file():
        raise RequestRefused(
            f"initial weights {req.init_weights}: no such file", "init-weights",
            subject="init_weights", init_weights=req.init_weights,
        )
    name = check_generation_name(req.name or _default_name(ws, req, arch))
    ws.generation_dir(name)  # refuses a name whose folder would lie outside the workspace
    if any(g.name == name for g in ws.registry.list_generations()):
        raise RequestRefused(
            f"a generation named {name!r} exists already; choose another name", "name-taken", subject="name", name=name
        )
    # A folder of that name without a generation is what a killed run left: training clears and reuses it.
    return parent, arch, name


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
    return f"g{n}-{req.kind}-{arch}-{req.method}"
