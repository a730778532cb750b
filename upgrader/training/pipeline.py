"""Train, export and register a generation: the service behind ``upgrader train`` and ``replace``.

The training side (torch) is imported here at module level; the CLI imports this module only for the
commands that train, so `promote`, `search` and servers never load torch.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from registry import Generation, NewGeneration

from upgrader.data.readers import ImageDataset, RehearsalMemory, subsample_per_class
from upgrader.data.items import excluded_indices, load_items, parse_classes
from upgrader.core.files import replacing
from upgrader.core.vocabulary import KINDS, METHODS
from upgrader.core.errors import DataError, InvalidRequest, NoProduction
from upgrader.training.export import export_onnx
from upgrader.services.registration import artifact_paths, classes_metadata, known_classes, register_generation
from upgrader.training.models import ARCHITECTURES
from upgrader.services.workspace_init import probe_uris
from upgrader.training.loop import TrainConfig, TrainProgress, load_checkpoint, save_checkpoint, train_generation
from upgrader.services.workspace import Workspace



@dataclass(frozen=True)
class TrainRequest:
    """What to train. Defaults suit the 2-core CPU the demo runs on."""

    kind: str  # initial | finetune | replacement
    classes: tuple[str, ...]  # the new classes to learn (names or indices into the dataset's classes)
    dataset: str | None = None  # dataset spec; None: the workspace's
    arch: str | None = None  # architecture; None: small_cnn (initial), the parent's (finetune)
    method: str = "hoc"  # hoc | ce | er | bct
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


@dataclass(frozen=True)
class TrainOutcome:
    """A trained and registered generation with the figures of its training run."""

    generation: Generation
    seconds: float  # wall time of training
    images_per_second: float  # training throughput
    history: list[dict[str, float]]  # per-epoch loss / accuracy
    export_parity: dict[str, float]  # max_abs_diff and min_cosine of ONNX vs PyTorch


def training_pool(ws: Workspace, spec: str | None) -> ImageDataset:
    """The training items of a dataset: its train split, less any probe item drawn from it."""
    spec = spec or ws.config.dataset
    ds = load_items(spec, "train")
    probe = excluded_indices(spec, "train", probe_uris(ws))
    if len(probe):
        ds = ds.take(np.setdiff1d(np.arange(len(ds)), probe))
    return ds


def _load_memory(path: Path) -> RehearsalMemory | None:
    if not path.is_file():
        return None
    with np.load(path) as z:
        return RehearsalMemory(np.array(z["images"]), np.array(z["vertices"]))


def _save_memory(memory: RehearsalMemory, path: Path) -> None:
    with replacing(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, images=memory.images, vertices=memory.vertices)


def _resolve_parent(ws: Workspace, req: TrainRequest) -> Generation | None:
    reg = ws.registry
    if req.kind == "initial":
        if req.parent:
            raise InvalidRequest("an initial generation has no parent; use `upgrader train --finetune` to start from one")
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


def validate_request(ws: Workspace, req: TrainRequest) -> tuple[Generation | None, str, str]:
    """Check a request before any work: returns (parent, architecture, generation name).

    Raises:
        InvalidRequest: unknown kind, method or architecture, a taken name, missing weights.
    """
    if req.kind not in KINDS:
        raise InvalidRequest(f"unknown kind {req.kind!r}; use one of {', '.join(KINDS)}")
    if req.method not in METHODS:
        raise InvalidRequest(f"unknown method {req.method!r}; use one of {', '.join(METHODS)}")
    if req.epochs < 1:
        raise InvalidRequest("--epochs must be at least 1")
    parent = _resolve_parent(ws, req)
    if req.kind == "finetune":
        assert parent is not None
        arch = req.arch or parent.architecture
        if arch != parent.architecture:
            raise InvalidRequest(
                f"fine-tuning keeps the architecture ({parent.architecture}); use `upgrader replace --arch {arch}` to change it"
            )
    elif req.kind == "replacement":
        if not req.arch:
            raise InvalidRequest("a replacement needs --arch (the new architecture)")
        arch = req.arch
    else:
        arch = req.arch or "small_cnn"
    if arch not in ARCHITECTURES:
        raise InvalidRequest(f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
    if req.init_weights and not Path(req.init_weights).is_file():
        raise InvalidRequest(f"--init-weights {req.init_weights}: no such file")
    name = req.name or _default_name(ws, req, arch)
    if any(g.name == name for g in ws.registry.list_generations()):
        raise InvalidRequest(f"a generation named {name!r} exists already; pass another --name")
    if ws.generation_dir(name).exists():
        raise InvalidRequest(f"{ws.generation_dir(name)} exists already; remove it or pass another --name")
    return parent, arch, name


def train_and_register(
    ws: Workspace,
    req: TrainRequest,
    *,
    progress: Callable[[TrainProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> TrainOutcome:
    """Train a generation as ``req`` says, export it to ONNX, register it and embed the probe set.

    The artifacts are written into a new folder that is removed again if any step fails, so a failed
    or cancelled run leaves neither files nor registry rows behind.
    """
    parent, arch, name = validate_request(ws, req)
    reg = ws.registry
    seed = ws.config.seed if req.seed is None else req.seed
    pool = training_pool(ws, req.dataset)
    classes = parse_classes(list(req.classes), pool.classes)
    new_ds = pool.select(classes)
    if req.per_class:
        new_ds = subsample_per_class(new_ds, req.per_class, seed)
    if len(new_ds) < 2:
        raise DataError(f"only {len(new_ds)} training images for classes {list(classes)}; give more data")
    label_map = reg.assign_classes(classes)
    vertices = new_ds.vertices(label_map)

    # The anchor is the generation whose space the new one must stay compatible with; only the
    # methods with a compatibility term (hoc, bct) use it.
    anchored = req.method in ("hoc", "bct") and (req.kind == "finetune" or (req.kind == "replacement" and req.anchor))
    anchor_gen = parent if anchored else None
    memory = _load_memory(artifact_paths(ws, parent.name)["memory"]) if parent else None
    if memory is not None and memory.images.shape[1:] != new_ds.images.shape[1:]:
        raise DataError(
            f"new images are {new_ds.images.shape[1:]} but the lineage was trained on {memory.images.shape[1:]}; "
            "use the same image size"
        )
    anchor_ckpt = ws.resolve(anchor_gen.checkpoint_path) if anchor_gen and anchor_gen.checkpoint_path else None
    init_ckpt: Path | None = None
    if req.kind == "finetune":
        assert parent is not None and parent.checkpoint_path
        init_ckpt = ws.resolve(parent.checkpoint_path)
    elif req.init_weights:
        init_ckpt = Path(req.init_weights)

    config = TrainConfig(
        arch=arch, kind=req.kind, method=req.method, epochs=req.epochs, batch_size=req.batch_size, lr=req.lr,
        memory_per_class=req.memory_per_class, seed=seed, device=req.device, **req.extra,
    )
    paths = artifact_paths(ws, name)
    gen_dir = ws.generation_dir(name)
    gen_dir.mkdir(parents=True)
    try:
        result = train_generation(
            config,
            (new_ds.images, vertices),
            memory=(memory.images, memory.vertices) if memory is not None and len(memory) else None,
            anchor_checkpoint=anchor_ckpt,
            init_checkpoint=init_ckpt,
            num_classes=reg.interface().num_classes,
            progress=progress,
            cancel=cancel,
        )
        save_checkpoint(result.model, paths["checkpoint"], result.meta)
        new_memory = RehearsalMemory.build(new_ds.images, vertices, req.memory_per_class, seed)
        _save_memory(memory.merge(new_memory) if memory is not None else new_memory, paths["memory"])
        predicted_id = max((g.id for g in reg.list_generations()), default=0) + 1
        exported = export_onnx(
            result.model, paths["onnx"], metadata={
                "generation_id": str(predicted_id), "generation_name": name,
                **classes_metadata(reg.interface().label_map, result.meta["vertices"]),
            },
        )
        gen = register_generation(
            ws,
            NewGeneration(
                name=name,
                kind=req.kind,
                method=req.method,
                architecture=arch,
                onnx_path=ws.relative(exported.path),
                onnx_sha256=exported.sha256,
                num_classes=reg.interface().num_classes,
                parent_id=parent.id if parent else None,
                train_config={
                    **asdict(config),
                    "classes": list(classes),
                    "dataset": req.dataset or ws.config.dataset,
                    "per_class": req.per_class,
                    "anchor": anchor_gen.name if anchor_gen and anchor_ckpt else None,
                    "memory_items": len(memory) if memory is not None else 0,
                    "vertices": result.meta["vertices"],  # classes learnt so far (new + memory)
                },
                data_fingerprint=new_ds.fingerprint(),
                onnx_metadata=exported.metadata,
                checkpoint_path=ws.relative(paths["checkpoint"]),
                metrics={
                    "train_seconds": round(result.seconds, 3),
                    "images_per_second": round(result.images_per_second, 1),
                    "final_loss": result.history[-1]["loss"] if result.history else None,
                    "final_accuracy": result.history[-1]["accuracy"] if result.history else None,
                    "train_images": len(new_ds),
                },
            ),
        )
    except BaseException:
        shutil.rmtree(gen_dir, ignore_errors=True)
        raise
    return TrainOutcome(
        generation=gen,
        seconds=result.seconds,
        images_per_second=result.images_per_second,
        history=result.history,
        export_parity={"max_abs_diff": exported.max_abs_diff, "min_cosine": exported.min_cosine},
    )


def reexport(ws: Workspace, ref: str) -> Generation:
    """Export a generation's checkpoint to ONNX again and record the new artifact (``upgrader export``).

    The new file replaces the old one atomically; its sha256 goes into the registry, so earlier
    gate reports no longer cover it and the generation must be verified again before promotion.
    """
    reg = ws.registry
    gen = reg.get_generation(ref)
    if not gen.checkpoint_path or not ws.resolve(gen.checkpoint_path).is_file():
        raise InvalidRequest(f"generation {gen.name} has no checkpoint to export from")
    model, _ = load_checkpoint(ws.resolve(gen.checkpoint_path))
    learnt = known_classes(gen)
    exported = export_onnx(
        model, ws.resolve(gen.onnx_path), metadata={
            "generation_id": str(gen.id), "generation_name": gen.name,
            **(classes_metadata(reg.interface().label_map, learnt) if learnt else {}),
        },
    )
    return reg.update_artifact(gen.id, gen.onnx_path, exported.sha256, exported.metadata)
