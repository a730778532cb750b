"""Training under ``torchrun``: rank and world size, the device of a rank, the process group, the
DistributedDataParallel wrapper and the per-rank data shard.

With WORLD_SIZE unset (or 1) every function here is a no-op or returns the single-process answer, so
the training loop has one code path. Ranks talk over gloo on CPU and NCCL on CUDA.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from upgrader.core.errors import TrainingError


def world_size() -> int:
    """How many processes train together (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 outside torchrun; rank 0 writes the checkpoint)."""
    return int(os.environ.get("RANK", "0"))


def resolve_device(name: str) -> torch.device:
    """The device a rank trains on: ``auto`` picks CUDA when present; under torchrun each rank takes
    the GPU of its LOCAL_RANK.

    Raises:
        TrainingError: ``cuda`` asked for without CUDA.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' asked for but CUDA is not available; use device 'cpu' or 'auto'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def setup(device: torch.device) -> None:
    """Join the process group (once per process) and bind this rank's GPU; nothing for one process."""
    if world_size() <= 1:
        return
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module the steps call: DistributedDataParallel over ``model`` under torchrun, else ``model``."""
    if world_size() <= 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_sampler(n: int, seed: int) -> DistributedSampler | None:
    """This rank's shuffled shard of ``n`` items (equal shards, remainder dropped); None for one process."""
    if world_size() <= 1:
        return None
    return DistributedSampler(range(n), num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed, drop_last=True)


def cpu_threads_per_rank() -> int | None:
    """Intra-op threads for each CPU rank so the ranks share the cores without oversubscription;
    None where torch's default is right (one process, or GPUs)."""
    if world_size() <= 1 or torch.cuda.is_available():
        return None
    return max(1, (os.cpu_count() or 1) // world_size())


def teardown() -> None:
    """Wait for every rank, then leave the process group (a no-op for one process)."""
    if world_size() > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
