"""Training a generation: initial, fine-tuning and replacement, methods hoc / ce / er / bct.

``train_generation`` is the single entry point for in-process training (services, tests, benches).
``python -m upgrader.training --config cfg.json`` runs the same function under ``torchrun``
(:mod:`upgrader.training.__main__`); each rank then trains on its shard of the data
(:mod:`upgrader.training.distributed`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from upgrader.core.errors import TrainingCancelled, TrainingError
from upgrader.data.dataset import steps_per_epoch
from upgrader.training import distributed
from upgrader.training.anchor import raw_features
from upgrader.training.batches import augment_batch, batch_indices
from upgrader.training.calibration import calibrate
from upgrader.training.checkpoint import CheckpointPath, load_checkpoint
from upgrader.training.config import TrainConfig, TrainProgress, accuracy_window
from upgrader.training.models import Encoder, build_model, rebuild_model
from upgrader.training.objective import Objective, build_objective
from upgrader.training.schedule import cosine_lr, set_lr
from upgrader.training.weights import load_init_weights

ArrayPair = tuple[np.ndarray, np.ndarray]  # (uint8 images [N, H, W, C], int64 vertex labels [N])


@dataclass
class TrainResult:
    """What ``train_generation`` returns."""

    model: Encoder  # trained encoder, on the CPU, eval mode
    history: list[dict[str, float]]  # per epoch: epoch, loss, accuracy (the epoch's mean), lr, seconds
    seconds: float  # wall time of the training loop
    images_per_second: float  # training throughput over all ranks
    meta: dict[str, Any]  # checkpoint metadata: config, kind, method, vertices, image_shape
    steps: int = 0  # optimiser steps run
    final_accuracy: float = float("nan")  # training accuracy over the last ``accuracy_window`` steps
    previous_accuracy: float | None = None  # over the window before it; None when the run is too short
    accuracy_window: int = 1


@dataclass
class _Run:
    """One training run: the model, its data on the device, the objective and the optimiser state."""

    config: TrainConfig
    device: torch.device
    memory_format: torch.memory_format  # channels_last on CUDA when asked for
    model: Encoder
    net: nn.Module  # ``model``, or its DistributedDataParallel wrapper under torchrun
    data: ArrayPair  # the new data as given (uint8 NHWC, vertex labels)
    memory: ArrayPair | None  # the rehearsal memory as given
    images: torch.Tensor  # uint8 [N, H, W, C] on the device
    vertices: torch.Tensor  # [N]
    mem_images: torch.Tensor | None  # uint8 [M, H, W, C]
    mem_vertices: torch.Tensor | None  # [M]
    active: list[int]  # vertices of the classes the lineage has learnt (data and memory)
    objective: Objective
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # shuffling and augmentation, seeded per rank
    sampler: DistributedSampler | None  # this rank's shard under torchrun
    local_batch: int  # this rank's batch
    steps_per_epoch: int
    total_steps: int
    epochs: int  # passes the run makes (the last may stop early when it is sized in steps)
    autocast: torch.autocast  # bf16 on CUDA when asked for; disabled otherwise
    step_global: int = 0  # steps done over the whole run (drives the schedule)
    seen: int = 0  # images trained on, over all ranks
    accuracies: list[float] = field(default_factory=list)  # every step's batch accuracy, in order


def train_generation(
    config: TrainConfig,
    new_data: ArrayPair,
    *,
    memory: ArrayPair | None = None,
    anchor_checkpoint: CheckpointPath | None = None,
    init_checkpoint: CheckpointPath | None = None,
    num_classes: int,
    progress: Callable[[TrainProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train one generation.

    Args:
        config: the training configuration (kind, method, architecture, optimiser...).
        new_data: (uint8 images [N, H, W, C], int64 vertex indices [N]) of the classes to learn.
        memory: rehearsal memory of earlier classes, same layout; batches become half memory,
            half new data.
        anchor_checkpoint: frozen anchor generation for the compatibility term (hoc, bct); for
            ``finetune`` it defaults to ``init_checkpoint``.
        init_checkpoint: the generation to start from (required for ``finetune``; optional for
            ``replacement``, which must match ``config.arch``). Pretrained weights from elsewhere are
            ``config.init_weights`` instead (a backbone's or a whole encoder's).
        num_classes: K of the interface (embedding dim K-1).
        progress: called after every step with a ``TrainProgress``.
        cancel: when set, training stops at the next step with ``TrainingCancelled``.

    Returns:
        TrainResult with the trained model (CPU, eval mode).

    Raises:
        TrainingError: inconsistent request. TrainingCancelled: the cancel event was set.
    """
    data, mem, anchor_checkpoint = _check_request(config, new_data, memory, anchor_checkpoint, init_checkpoint, num_classes)
    run = _setup(config, data, mem, anchor_checkpoint, init_checkpoint, num_classes)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(1, run.epochs + 1):
        history.append(_train_epoch(run, epoch, progress, cancel))
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    seconds = time.perf_counter() - start
    model = run.model.to("cpu", memory_format=torch.contiguous_format).eval()
    meta: dict[str, Any] = {
        "kind": config.kind,
        "method": config.method,
        "arch": config.arch,
        "config": asdict(config),
        "vertices": [int(v) for v in run.active],
        "image_shape": [int(s) for s in data[0].shape[1:]],
        "num_classes": int(num_classes),
        "history": history,
        "world_size": distributed.world_size(),
        "seconds": seconds,
        "anchor": str(anchor_checkpoint) if run.objective.anchor is not None else None,
        "init": str(init_checkpoint) if init_checkpoint is not None else None,
        "calibration": _calibrate(run, model),
    }
    window = accuracy_window(run.total_steps, run.steps_per_epoch)
    acc = run.accuracies
    final = float(np.mean(acc[-window:])) if acc else float("nan")
    previous = float(np.mean(acc[-2 * window : -window])) if len(acc) >= 2 * window else None
    meta.update(steps=run.step_global, final_accuracy=final, accuracy_window=window)
    return TrainResult(model, history, seconds, run.seen / max(seconds, 1e-9), meta, run.step_global, final, previous, window)


def _check_request(
    config: TrainConfig,
    new_data: ArrayPair,
    memory: ArrayPair | None,
    anchor_checkpoint: CheckpointPath | None,
    init_checkpoint: CheckpointPath | None,
    num_classes: int,
) -> tuple[ArrayPair, ArrayPair | None, CheckpointPath | None]:
    """Refuse what cannot train; returns (new data, memory or None when empty, anchor checkpoint)."""
    config.validate()
    data = _check_pair("new_data", new_data, num_classes)
    assert data is not None
    mem = _check_pair("memory", memory, num_classes)
    if len(data[0]) < 2:
        raise TrainingError("new_data needs at least 2 images")
    if mem is not None and len(mem[0]) == 0:
        mem = None
    if mem is not None and mem[0].shape[1:] != data[0].shape[1:]:
        raise TrainingError(f"memory images {mem[0].shape[1:]} differ from new images {data[0].shape[1:]}")
    if config.kind == "finetune" and init_checkpoint is None:
        raise TrainingError("kind 'finetune' needs init_checkpoint (the generation to start from)")
    if config.kind == "initial" and (init_checkpoint is not None or anchor_checkpoint is not None):
        raise TrainingError("kind 'initial' takes no init or anchor checkpoint; use 'finetune' or 'replacement'")
    if config.init_weights and init_checkpoint is not None:
        raise TrainingError("give init_checkpoint or init_weights, not both: a run starts from one set of weights")
    if config.kind == "finetune" and anchor_checkpoint is None:
        anchor_checkpoint = init_checkpoint
    return data, mem, anchor_checkpoint


def _check_pair(name: str, pair: ArrayPair | None, num_classes: int) -> ArrayPair | None:
    if pair is None:
        return None
    images, vertices = pair
    images = np.asarray(images)
    vertices = np.asarray(vertices).astype(np.int64).reshape(-1)
    if images.dtype != np.uint8:
        raise TrainingError(f"{name}: images must be uint8 NHWC, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise TrainingError(f"{name}: images must be NHWC with C 1 or 3, got shape {images.shape}")
    if len(images) != len(vertices):
        raise TrainingError(f"{name}: {len(images)} images but {len(vertices)} labels")
    if len(vertices) and (vertices.min() < 0 or vertices.max() >= num_classes):
        raise TrainingError(f"{name}: vertex labels must lie in 0..{num_classes - 1}")
    return images, vertices


def _setup(
    config: TrainConfig,
    data: ArrayPair,
    mem: ArrayPair | None,
    anchor_checkpoint: CheckpointPath | None,
    init_checkpoint: CheckpointPath | None,
    num_classes: int,
) -> _Run:
    """Device and process group, model, data on the device, objective, optimiser and batching."""
    images_np, vertices_np = data
    world = distributed.world_size()
    device = distributed.resolve_device(config.device)
    if config.threads and device.type == "cpu":
        torch.set_num_threads(config.threads)
    distributed.setup(device)
    model = _init_model(config, num_classes, images_np, init_checkpoint)
    use_cuda = device.type == "cuda"
    memory_format = torch.channels_last if use_cuda and config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)

    # Whole data set on the device once: indexing a resident uint8 tensor is cheaper than a loader.
    images = torch.from_numpy(np.ascontiguousarray(images_np)).to(device)  # uint8 [N, H, W, C]
    vertices = torch.from_numpy(vertices_np).to(device)  # [N]
    mem_images = torch.from_numpy(np.ascontiguousarray(mem[0])).to(device) if mem else None  # [M, H, W, C]
    mem_vertices = torch.from_numpy(mem[1]).to(device) if mem else None  # [M]
    active = sorted(set(vertices_np.tolist()) | (set(mem[1].tolist()) if mem else set()))
    objective = build_objective(config, model, images, vertices, active, anchor_checkpoint, num_classes, memory_format)
    net = distributed.wrap(model, device)

    optimizer = torch.optim.SGD(
        _param_groups(model, config.weight_decay, config.backbone_lr_mult), lr=config.lr, momentum=config.momentum,
        nesterov=False,
    )
    local_batch = max(2, config.batch_size // world)
    generator = torch.Generator().manual_seed(config.seed + 1000 * distributed.rank())
    sampler = distributed.shard_sampler(len(images_np), config.seed)
    per_rank = len(images_np) // world if world > 1 else len(images_np)
    per_epoch = steps_per_epoch(per_rank, local_batch, mem is not None)
    total_steps = config.steps if config.steps is not None else per_epoch * config.epochs
    return _Run(
        config=config, device=device, memory_format=memory_format, model=model, net=net, data=data, memory=mem,
        images=images, vertices=vertices, mem_images=mem_images, mem_vertices=mem_vertices, active=active,
        objective=objective, optimizer=optimizer, generator=generator, sampler=sampler, local_batch=local_batch,
        steps_per_epoch=per_epoch, total_steps=total_steps, epochs=-(-total_steps // per_epoch),
        autocast=torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_cuda and config.amp),
    )


def _init_model(config: TrainConfig, num_classes: int, images: np.ndarray, init_checkpoint: CheckpointPath | None) -> Encoder:
    """The init checkpoint's model, or a fresh one (seeded, normalisation from the data) with the
    pretrained ``config.init_weights`` loaded when given; its backbone frozen when asked."""
    model = _start_model(config, num_classes, images, init_checkpoint)
    if config.init_weights:
        load_init_weights(model, config.init_weights, config.init_prefix)
    model.train()
    return model.freeze_backbone() if config.freeze_backbone else model


def _start_model(config: TrainConfig, num_classes: int, images: np.ndarray, init_checkpoint: CheckpointPath | None) -> Encoder:
    _, h, w, c = images.shape
    if init_checkpoint is not None:
        model, _ = load_checkpoint(init_checkpoint)
        if model.arch != config.arch:
            raise TrainingError(
                f"init checkpoint is {model.arch!r} but the config asks for {config.arch!r}; "
                "fine-tuning keeps the architecture (use kind 'replacement' from scratch to change it)"
            )
        if model.num_classes != num_classes:
            raise TrainingError(f"init checkpoint has K={model.num_classes}, the interface K={num_classes}")
        if model.in_channels != c:
            raise TrainingError(f"init checkpoint takes {model.in_channels} channels, the data has {c}")
        if model.classifier_kind != config.classifier:
            # e.g. er from a hoc generation: keep backbone + projection, start a fresh classifier
            kwargs = dict(model.arch_kwargs, classifier=config.classifier)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                fresh = rebuild_model(model.arch, kwargs)
            state = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
            fresh.load_state_dict(state, strict=False)
            model = fresh
        return model.train()
    # per-channel statistics of the training images: normalisation travels with the model
    sample = images[:: max(1, len(images) // 5000)].astype(np.float32) / 255.0  # [n, H, W, C]
    mean = sample.mean(axis=(0, 1, 2)).tolist()
    std = np.maximum(sample.std(axis=(0, 1, 2)), 1e-3).tolist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(
            config.arch, num_classes, in_channels=c, image_size=min(h, w), classifier=config.classifier,
            mean=mean, std=std, backbone_kwargs=config.backbone_kwargs,
        )
    return model.train()


def _param_groups(model: Encoder, weight_decay: float, backbone_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    # BatchNorm weights and all biases (1-D tensors) are not decayed: decay would only shrink them.
    # The backbone's groups carry its learning-rate multiplier (``set_lr`` applies it every step).
    in_backbone = {id(p) for p in model.backbone.parameters()}
    groups = []
    for mult, part in ((backbone_lr_mult, True), (1.0, False)):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in in_backbone) == part]
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "lr_mult": mult},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lr_mult": mult}]
    return [g for g in groups if g["params"]]


def _train_epoch(
    run: _Run, epoch: int, progress: Callable[[TrainProgress], None] | None, cancel: threading.Event | None
) -> dict[str, float]:
    """One pass over the new data (this rank's shard); returns the epoch's history row."""
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    order = list(run.sampler) if run.sampler is not None else None
    epoch_start = time.perf_counter()
    loss_sum = acc_sum = 0.0
    steps_done = 0
    n_memory = len(run.memory[0]) if run.memory else 0
    # batch_indices draws from the generator lazily, between the steps' augmentation draws: the
    # interleaving is part of what makes a seed reproduce a run.
    batches = batch_indices(len(run.data[0]), n_memory, run.local_batch, run.generator, order)
    window = accuracy_window(run.total_steps, run.steps_per_epoch)
    for step, (new_idx, mem_idx) in enumerate(batches, start=1):
        if run.step_global >= run.total_steps:
            break  # a run sized in steps ends inside its last pass
        if cancel is not None and cancel.is_set():
            raise TrainingCancelled(f"training cancelled at epoch {epoch}, step {step}; nothing was saved")
        loss_value, accuracy = _train_step(run, epoch, step, new_idx, mem_idx)
        loss_sum += loss_value
        acc_sum += accuracy
        steps_done += 1
        run.accuracies.append(accuracy)
        if progress is not None:
            recent = run.accuracies[-window:]
            progress(TrainProgress(epoch, run.epochs, step, run.steps_per_epoch, loss_value, sum(recent) / len(recent),
                                   run.step_global, run.total_steps))
    return {
        "epoch": float(epoch),
        "loss": loss_sum / max(1, steps_done),
        "accuracy": acc_sum / max(1, steps_done),
        "lr": float(run.optimizer.param_groups[-1]["lr"]),  # the projection's (the last group: never the backbone's)
        "seconds": time.perf_counter() - epoch_start,
    }


def _train_step(run: _Run, epoch: int, step: int, new_idx: np.ndarray, mem_idx: np.ndarray) -> tuple[float, float]:
    """One SGD step on new-data items ``new_idx`` and memory items ``mem_idx``; returns (loss, accuracy)."""
    config = run.config
    set_lr(run.optimizer, cosine_lr(config.lr, run.step_global, run.total_steps))
    idx = torch.from_numpy(new_idx).to(run.device)
    xb = run.images[idx]  # uint8 [n, H, W, C]
    yb = run.vertices[idx]  # [n]
    if run.mem_images is not None and len(mem_idx):
        midx = torch.from_numpy(mem_idx).to(run.device)
        xb = torch.cat([xb, run.mem_images[midx]])  # uint8 [B, H, W, C]
        yb = torch.cat([yb, run.mem_vertices[midx]])  # type: ignore[index]  # [B]
    x01 = xb.float().div_(255.0).permute(0, 3, 1, 2)  # [B, C, H, W] in [0, 1]
    if config.augment:
        x01 = augment_batch(x01, run.generator, config.crop_pad, config.flip)
    x01 = x01.contiguous(memory_format=run.memory_format)
    anchor = run.objective.anchor
    with run.autocast:
        feats, logits = run.net(run.model.normalize(x01))  # [B, K-1], [B, K]
        logits = logits.float() + run.objective.class_mask  # [B, K], reserved vertices out of the softmax
        old_feats = None
        if anchor is not None:
            with torch.no_grad():
                old_feats = anchor(anchor.normalize(x01))[0]  # [B, K-1]
    loss = run.objective.loss(feats.float(), logits, old_feats, yb)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if not torch.isfinite(loss):
        raise TrainingError(f"loss became {loss.item()} at epoch {epoch}, step {step}; lower the lr")
    run.step_global += 1
    run.seen += len(yb) * distributed.world_size()
    return float(loss.detach()), float((logits.detach().argmax(1) == yb).float().mean())


def _calibrate(run: _Run, model: Encoder) -> dict[str, Any] | None:
    """hoc only: fold the closed-form vertex calibration into the trained (CPU) model; its record."""
    config, mem = run.config, run.memory
    if config.method != "hoc" or config.calibration is None:
        return None
    images_np, vertices_np = run.data
    fit_images = np.concatenate([images_np, mem[0]]) if mem else images_np
    fit_vertices = np.concatenate([vertices_np, mem[1]]) if mem else vertices_np
    return calibrate(
        model, lambda x: raw_features(model, torch.from_numpy(x), torch.device("cpu")),
        fit_images, fit_vertices, config.calibration, seed=config.seed,
    )
