"""Batches for training: half rehearsal memory, half new data, and batched augmentation (torch).

Kept apart from :mod:`upgrader.data.readers` so that reading datasets needs no torch (servers add gallery
items from datasets too).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def batch_indices(
    n_new: int,
    n_memory: int,
    batch_size: int,
    generator: torch.Generator,
    new_order: Sequence[int] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of batches: (new-data indices, memory indices).

    With a memory, each batch is half memory and half new data; the epoch is one pass over the new
    data (incomplete last batch dropped so BatchNorm never sees a batch of one), and memory is
    cycled in fresh random orders.

    Args:
        n_new: number of new items.
        n_memory: number of memory items (0: plain batches).
        batch_size: total items per batch.
        generator: seeded torch generator (determinism).
        new_order: a given order of new indices (e.g. a DistributedSampler shard) instead of a
            random permutation.
    """
    n_new_per = batch_size // 2 if n_memory > 0 else batch_size
    n_mem_per = batch_size - n_new_per if n_memory > 0 else 0
    order = (
        np.asarray(new_order, dtype=np.int64)
        if new_order is not None
        else torch.randperm(n_new, generator=generator).numpy()
    )
    steps = max(1, len(order) // n_new_per)
    mem_order = np.zeros(0, dtype=np.int64)
    mem_pos = 0
    for step in range(steps):
        new_idx = order[step * n_new_per : (step + 1) * n_new_per]
        mem_idx = np.zeros(0, dtype=np.int64)
        if n_mem_per:
            parts = []
            need = n_mem_per
            while need > 0:
                if mem_pos >= len(mem_order):
                    mem_order = torch.randperm(n_memory, generator=generator).numpy()
                    mem_pos = 0
                chunk = mem_order[mem_pos : mem_pos + need]
                parts.append(chunk)
                mem_pos += len(chunk)
                need -= len(chunk)
            mem_idx = np.concatenate(parts)
        yield new_idx, mem_idx


# ---------------------------------------------------------------------------------------------
# Augmentation (batched torch ops: cheap on CPU)


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, pad: int = 2, flip: bool = True
) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per sample, on a whole batch.

    Args:
        x: float [N, C, H, W].
        generator: seeded CPU generator (determinism).
        pad: padding in pixels for the random crop (0 disables the crop).
        flip: random horizontal flips with probability 0.5.

    Returns:
        Augmented float [N, C, H, W] on x's device.
    """
    n, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))  # [N, C, H+2p, W+2p]
        oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)  # [N]
        ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)  # [N]
        rows = oy[:, None] + torch.arange(h, device=x.device)  # [N, H]
        cols = ox[:, None] + torch.arange(w, device=x.device)  # [N, W]
        batch = torch.arange(n, device=x.device)[:, None, None]  # [N, 1, 1]
        # advanced indexing puts the indexed dims first: [N, H, W, C]
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        x = x.permute(0, 3, 1, 2)  # [N, C, H, W]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)  # [N]
        x = torch.where(mask[:, None, None, None], x.flip(3), x)  # [N, C, H, W]
    return x.contiguous()
