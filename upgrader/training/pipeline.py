"""Train, export and register a generation: the service behind ``upgrader train`` and ``replace``,
and the dashboard's training runs.

The training side (torch) is imported here at module level; the UIs import this module only inside
the actions that train, so `promote`, `search` and servers never load torch. What to train and its
checks (``TrainRequest``, ``validate_request``) live torch-free in ``upgrader.services.training_plan``.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from registry import Generation, NewGeneration

from upgrader.core.errors import DataError, InvalidRequest
from upgrader.core.files import replacing
from upgrader.data.dataset import ImageDataset, RehearsalMemory, subsample_per_class
from upgrader.data.items import excluded_indices, load_items, parse_classes
from upgrader.services.registration import artifact_paths, classes_metadata, known_classes, register_generation
from upgrader.services.training_plan import TrainRequest, anchor_generation, validate_request
from upgrader.services.workspace import Workspace
from upgrader.services.workspace_init import probe_uris
from upgrader.training.checkpoint import load_checkpoint, save_checkpoint
from upgrader.training.config import TrainConfig, TrainProgress
from upgrader.training.export import ExportResult, export_onnx
from upgrader.training.loop import TrainResult, train_generation


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


@dataclass
class _RunInputs:
    """What one run trains on, read and checked before the generation's folder exists."""

    classes: tuple[str, ...]  # the new classes, as the dataset names them
    data: ImageDataset  # their training images
    vertices: np.ndarray  # int64 [N]: each image's vertex in the interface
    memory: RehearsalMemory | None  # the parent's rehearsal memory
    anchor: Generation | None  # the generation the compatibility term holds the new one to
    anchor_checkpoint: Path | None  # its checkpoint (None: nothing anchors the run)
    init_checkpoint: Path | None  # the weights training starts from
    config: TrainConfig


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

    Args:
        ws: the workspace.
        req: what to train (checked first with ``validate_request``).
        progress: called after every training step.
        cancel: when set, training stops at the next step and nothing is kept.

    Raises:
        InvalidRequest, NoProduction, DataError: the request cannot run. TrainingCancelled: ``cancel``.
    """
    parent, arch, name = validate_request(ws, req)
    inputs = _run_inputs(ws, req, parent, arch)
    mem = inputs.memory
    paths = artifact_paths(ws, name)
    gen_dir = ws.generation_dir(name)
    gen_dir.mkdir(parents=True)
    try:
        result = train_generation(
            inputs.config,
            (inputs.data.images, inputs.vertices),
            memory=(mem.images, mem.vertices) if mem is not None and len(mem) else None,
            anchor_checkpoint=inputs.anchor_checkpoint,
            init_checkpoint=inputs.init_checkpoint,
            num_classes=ws.registry.interface().num_classes,
            progress=progress,
            cancel=cancel,
        )
        save_checkpoint(result.model, paths["checkpoint"], result.meta)
        new_memory = RehearsalMemory.build(inputs.data.images, inputs.vertices, req.memory_per_class, inputs.config.seed)
        _save_memory(mem.merge(new_memory) if mem is not None else new_memory, paths["memory"])
        predicted_id = max((g.id for g in ws.registry.list_generations()), default=0) + 1
        exported = export_onnx(
            result.model, paths["onnx"], metadata={
                "generation_id": str(predicted_id), "generation_name": name,
                **classes_metadata(ws.registry.interface().label_map, result.meta["vertices"]),
            },
        )
        gen = register_generation(ws, _new_generation(ws, req, name, parent, inputs, result, exported))
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


def _run_inputs(ws: Workspace, req: TrainRequest, parent: Generation | None, arch: str) -> _RunInputs:
    """Read the new classes' images, the parent's memory and the checkpoints; assign the classes
    their vertices (the interface grows here, before training)."""
    seed = ws.config.seed if req.seed is None else req.seed
    pool = training_pool(ws, req.dataset)
    classes = parse_classes(list(req.classes), pool.classes)
    new_ds = pool.select(classes)
    if req.per_class:
        new_ds = subsample_per_class(new_ds, req.per_class, seed)
    if len(new_ds) < 2:
        raise DataError(f"only {len(new_ds)} training images for classes {list(classes)}; give more data")
    label_map = ws.registry.assign_classes(classes)
    vertices = new_ds.vertices(label_map)

    anchor_gen = anchor_generation(req, parent)
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
    return _RunInputs(classes, new_ds, vertices, memory, anchor_gen, anchor_ckpt, init_ckpt, config)


def _new_generation(
    ws: Workspace,
    req: TrainRequest,
    name: str,
    parent: Generation | None,
    inputs: _RunInputs,
    result: TrainResult,
    exported: ExportResult,
) -> NewGeneration:
    """The registry row of a trained and exported generation: its config, data and figures."""
    history = result.history
    return NewGeneration(
        name=name,
        kind=req.kind,
        method=req.method,
        architecture=inputs.config.arch,
        onnx_path=ws.relative(exported.path),
        onnx_sha256=exported.sha256,
        num_classes=ws.registry.interface().num_classes,
        parent_id=parent.id if parent else None,
        train_config={
            **asdict(inputs.config),
            "classes": list(inputs.classes),
            "dataset": req.dataset or ws.config.dataset,
            "per_class": req.per_class,
            "anchor": inputs.anchor.name if inputs.anchor and inputs.anchor_checkpoint else None,
            "memory_items": len(inputs.memory) if inputs.memory is not None else 0,
            "vertices": result.meta["vertices"],  # classes learnt so far (new + memory)
        },
        data_fingerprint=inputs.data.fingerprint(),
        onnx_metadata=exported.metadata,
        checkpoint_path=ws.relative(artifact_paths(ws, name)["checkpoint"]),
        metrics={
            "train_seconds": round(result.seconds, 3),
            "images_per_second": round(result.images_per_second, 1),
            "final_loss": history[-1]["loss"] if history else None,
            "final_accuracy": history[-1]["accuracy"] if history else None,
            "train_images": len(inputs.data),
        },
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
