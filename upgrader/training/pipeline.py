"""Train, export and register a generation: the service behind ``upgrader train`` and ``replace``,
and the dashboard's training runs.

The training side (torch) is imported here at module level; the UIs import this module only inside
the actions that train, so `promote`, `search` and servers never load torch. What to train and its
checks (``TrainRequest``, ``validate_request``) live torch-free in ``upgrader.services.training_plan``.
"""

from __future__ import annotations

import os
import shutil
import threading
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from registry import Generation, NewGeneration

from upgrader.core.errors import ArtifactError, DataError, InvalidRequest
from upgrader.core.faults import fault_point
from upgrader.core.files import replacing, sha256_file
from upgrader.data.dataset import ImageDataset, RehearsalMemory, subsample_per_class
from upgrader.data.items import load_items, parse_classes
from upgrader.runtime.embedder import Embedder
from upgrader.services.registration import (
    artifact_paths,
    check_artifact_interface,
    claim_folder,
    classes_metadata,
    known_classes,
    probe_embeddings,
    register_generation,
)
from upgrader.services.training_plan import (
    TrainingLength,
    TrainRequest,
    TrainWarning,
    anchor_generation,
    augmentation,
    plan_length,
    request_warnings,
    undertrained_warnings,
    validate_request,
)
from upgrader.services.workspace import Workspace
from upgrader.services.workspace_init import excluded_items, probe_pixels
from upgrader.training.checkpoint import load_checkpoint, save_checkpoint
from upgrader.training.config import TrainConfig, TrainProgress
from upgrader.training.export import ExportResult, export_onnx
from upgrader.training.loop import TrainResult, train_generation
from upgrader.training.weights import check_start


@dataclass(frozen=True)
class TrainOutcome:
    """A trained and registered generation with the figures of its training run."""

    generation: Generation
    seconds: float  # wall time of training
    images_per_second: float  # training throughput
    history: list[dict[str, float]]  # per-epoch loss / accuracy
    export_parity: dict[str, float]  # max_abs_diff and min_cosine of ONNX vs PyTorch
    length: TrainingLength | None = None  # how long it trained (steps, batch, passes)
    final_accuracy: float | None = None  # training accuracy over the last ``accuracy_window`` steps
    accuracy_window: int = 1
    augment: str = ""  # the augmentation it trained with (none | crop | crop+flip)
    warnings: tuple[TrainWarning, ...] = ()  # before and after the run: known classes, under-trained


def _load_memory(path: Path) -> RehearsalMemory | None:
    """The rehearsal memory a generation's training left, or None when it has none.

    Loaded without pickle (an object array is refused, never run) and checked for what training
    needs: uint8 images [M, H, W, C] and one integer vertex per image.

    Raises:
        DataError: the file is not such a memory, in one line that names it.
    """
    if not path.is_file():
        return None
    fix = "restore the memory.npz its training wrote, or fine-tune another generation"
    try:
        with np.load(path) as z:
            images, vertices = np.array(z["images"]), np.array(z["vertices"])
    except (ValueError, KeyError, OSError, EOFError, AttributeError, TypeError, zipfile.BadZipFile) as exc:
        # ValueError: an object array (pickle is off) or a damaged array; AttributeError/TypeError: not an .npz
        why = "it holds object arrays" if "allow_pickle" in str(exc) else f"{exc.__class__.__name__}"
        raise DataError(f"{path}: not a readable rehearsal memory ({why}); {fix}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or vertices.ndim != 1 or len(vertices) != len(images) \
            or not np.issubdtype(vertices.dtype, np.integer):
        raise DataError(
            f"{path}: not a rehearsal memory (images {images.dtype} {images.shape}, vertices {vertices.dtype} "
            f"{vertices.shape}; expected uint8 [M, H, W, C] and M integers); {fix}"
        )
    return RehearsalMemory(images, vertices.astype(np.int64))


def checked_checkpoint(ws: Workspace, gen: Generation, purpose: str) -> Path:
    """The path of ``gen``'s checkpoint, after checking it is the file its training recorded.

    Generations registered before checkpoints had a recorded sha256 are taken as they are.

    Raises:
        InvalidRequest: ``gen`` has no checkpoint (an imported artifact). ArtifactError: the file is
            missing, or its sha256 differs from the one recorded at training.
    """
    if not gen.checkpoint_path:
        raise InvalidRequest(
            f"generation {gen.name} has no checkpoint to {purpose} (an imported artifact); use a generation trained here"
        )
    path = ws.resolve(gen.checkpoint_path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint of generation {gen.name} is missing at {path}; restore it from a backup")
    actual = sha256_file(path)
    if gen.checkpoint_sha256 and actual != gen.checkpoint_sha256:
        raise ArtifactError(
            f"checkpoint of generation {gen.name} at {path} has sha256 {actual[:12]}… but its training recorded "
            f"{gen.checkpoint_sha256[:12]}…; restore the original file, or register the new weights as a new generation"
        )
    return path


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
    length: TrainingLength
    augment: str  # one of AUGMENTS
    probe_items_left_out: int = 0  # training images that were probe items, so never trained on
    heldout_items_left_out: int = 0  # training images of the held-out gallery split, so never trained on


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
    warnings = request_warnings(ws, req, parent)
    # Weights that changed since they were trained are refused before any work.
    if req.kind == "finetune" and parent is not None:
        checked_checkpoint(ws, parent, "fine-tune from")
    anchor = anchor_generation(req, parent)
    if anchor is not None and anchor.checkpoint_path:  # an anchor without one leaves the run unanchored
        checked_checkpoint(ws, anchor, "anchor on")
    inputs = _run_inputs(ws, req, parent, arch)
    mem = inputs.memory
    paths = artifact_paths(ws, name)
    gen_dir = claim_folder(ws, name)  # a folder a killed run left under this name is cleared and reused
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
        fault_point("train:exported")
        gen = register_generation(ws, _new_generation(ws, req, name, parent, inputs, result, exported))
    except BaseException:
        shutil.rmtree(gen_dir, ignore_errors=True)
        raise
    warnings += undertrained_warnings(ws, gen, parent, inputs.length, result.previous_accuracy, result.final_accuracy,
                                      result.accuracy_window)
    return TrainOutcome(
        generation=gen,
        seconds=result.seconds,
        images_per_second=result.images_per_second,
        history=result.history,
        export_parity={"max_abs_diff": exported.max_abs_diff, "min_cosine": exported.min_cosine},
        length=inputs.length,
        final_accuracy=result.final_accuracy,
        accuracy_window=result.accuracy_window,
        augment=inputs.augment,
        warnings=tuple(warnings),
    )



def _run_inputs(ws: Workspace, req: TrainRequest, parent: Generation | None, arch: str) -> _RunInputs:
    """Read the new classes' images, the parent's memory and the checkpoints; assign the classes
    their vertices (the interface grows here, before training).

    No probe item is trained on: every image with the pixels of one the registry holds is left out,
    whatever its file name, position or the spelling of the dataset's path (image folders are read at
    the probe set's shape, so a file gives the pixels it gave at ``init``)."""
    seed = ws.config.seed if req.seed is None else req.seed
    probe = probe_pixels(ws)
    dataset = req.dataset or ws.config.dataset
    pool = load_items(dataset, "train", image_shape=probe.shape[1:])
    classes = parse_classes(list(req.classes), pool.classes)
    new_ds = pool.select(classes)
    is_probe, is_heldout = excluded_items(ws, new_ds)  # bool [N]: probe items, held-out gallery items
    new_ds = new_ds.take(np.flatnonzero(~(is_probe | is_heldout)))
    if req.per_class:
        new_ds = subsample_per_class(new_ds, req.per_class, seed)
    if len(new_ds) < 2:
        left = [f"{int(m.sum())} {what} left out" for m, what in ((is_probe, "probe items"), (is_heldout, "held-out gallery items")) if m.any()]
        left_out = f" ({', '.join(left)})" if left else ""
        raise DataError(f"only {len(new_ds)} training images for classes {list(classes)}{left_out}; give more data")
    config = TrainConfig(arch=arch, kind=req.kind, method=req.method, backbone_kwargs=_backbone_kwargs(req, parent),
                         init_weights=str(Path(req.init_weights).resolve()) if req.init_weights else None,
                         init_prefix=req.init_prefix, freeze_backbone=req.freeze_backbone,
                         backbone_lr_mult=req.backbone_lr_mult, seed=seed, device=req.device)
    if req.kind != "finetune":  # a user backbone or weights that cannot start the run: said before the interface grows
        check_start(arch, config.backbone_kwargs, config.classifier, ws.registry.interface().num_classes,
                    new_ds.images.shape[1:], config.init_weights, config.init_prefix)
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
    with_memory = memory is not None and len(memory) > 0
    classes_trained = set(vertices.tolist()) | (set(memory.vertices.tolist()) if with_memory else set())
    length = plan_length(req, len(new_ds), with_memory, len(classes_trained))
    augment, augment_fields = augmentation(req, dataset)
    config = replace(
        # Given epochs stay epochs: under torchrun a pass is a rank's shard, shorter than here.
        config, epochs=req.epochs or -(-length.steps // length.steps_per_epoch),
        steps=length.steps if length.given == "steps" else None, batch_size=length.batch_size, lr=req.lr,
        memory_per_class=req.memory_per_class, **{**augment_fields, **req.extra},
    )
    return _RunInputs(classes, new_ds, vertices, memory, anchor_gen, anchor_ckpt, init_ckpt, config, length, augment,
                      int(is_probe.sum()), int(is_heldout.sum()))


def _backbone_kwargs(req: TrainRequest, parent: Generation | None) -> dict:
    """The backbone's arguments: the request's, or for a fine-tune its parent's (it keeps the backbone)."""
    if req.kind == "finetune" and parent is not None:
        return dict(parent.train_config.get("backbone_kwargs") or {})
    return dict(req.arch_kwargs)


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
            "augmentation": inputs.augment,
            "length_given": inputs.length.given,
            "anchor": inputs.anchor.name if inputs.anchor and inputs.anchor_checkpoint else None,
            "memory_items": len(inputs.memory) if inputs.memory is not None else 0,
            "vertices": result.meta["vertices"],  # classes learnt so far (new + memory)
        },
        data_fingerprint=inputs.data.fingerprint(),
        onnx_metadata=exported.metadata,
        checkpoint_path=ws.relative(artifact_paths(ws, name)["checkpoint"]),
        checkpoint_sha256=sha256_file(artifact_paths(ws, name)["checkpoint"]),
        metrics={
            "train_seconds": round(result.seconds, 3),
            "images_per_second": round(result.images_per_second, 1),
            "final_loss": history[-1]["loss"] if history else None,
            "final_accuracy": result.final_accuracy,  # over the last accuracy_window steps: what the progress showed
            "accuracy_window": result.accuracy_window,
            "steps": result.steps,
            "train_images": len(inputs.data),
            "probe_items_left_out": inputs.probe_items_left_out,
            "heldout_items_left_out": inputs.heldout_items_left_out,
        },
    )


def reexport(ws: Workspace, ref: str) -> Generation:
    """Export a generation's checkpoint to ONNX again, record the new artifact and re-embed the probe set
    with it (``upgrader export``), so ``verify`` and ``promote`` judge the model that is on disk.

    Production is refused before anything is written. The new file is exported beside the old one and
    checked (interface, probe outputs) first; then it replaces the old file, the registry records it
    (its probe embeddings and evaluations of the old artifact go, the generation is a candidate again)
    and the new probe embeddings are stored. A run killed after the file was replaced leaves a file the
    registry does not know: ``verify`` refuses it, and running the export again completes.

    Raises:
        InvalidRequest: production, or no checkpoint. ArtifactError: the checkpoint changed since
            training, or the new artifact's output is degenerate (nothing replaced).
    """
    reg = ws.registry
    gen = reg.get_generation(ref)
    if gen.id == reg.get_alias():
        raise InvalidRequest(
            f"generation {gen.name} serves production and its artifact cannot change under it; "
            "roll back or promote another generation first, or register the new export as a new generation",
            subject="production",
        )
    checkpoint = checked_checkpoint(ws, gen, "export from")
    model, _ = load_checkpoint(checkpoint)
    learnt = known_classes(gen)
    dest = ws.resolve(gen.onnx_path)
    staged = dest.with_name(f".{dest.name}.export")
    try:
        exported = export_onnx(
            model, staged, metadata={
                "generation_id": str(gen.id), "generation_name": gen.name,
                **(classes_metadata(reg.interface().label_map, learnt) if learnt else {}),
            },
        )
        embedder = Embedder(staged)
        check_artifact_interface(ws, embedder)
        embedded = probe_embeddings(ws, embedder)
        os.replace(staged, dest)
    finally:
        staged.unlink(missing_ok=True)
    fault_point("export:written")
    updated = reg.update_artifact(
        gen.id, gen.onnx_path, exported.sha256, exported.metadata, checkpoint_sha256=sha256_file(checkpoint)
    )
    for split, (ids, feats) in embedded.items():
        reg.put_probe_embeddings(gen.id, split, ids, feats, artifact_sha256=exported.sha256)
    return reg.get_generation(updated.id)
