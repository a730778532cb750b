"""The learning-rate schedule: cosine decay from the peak to 0, stepped every batch."""

from __future__ import annotations

import math

import torch


def cosine_lr(peak: float, step: int, total_steps: int) -> float:
    """The learning rate at ``step`` (0-based) of ``total_steps``: ``peak`` at 0, 0 at the end.

    Args:
        peak: the peak learning rate.
        step: steps done so far over the whole run.
        total_steps: steps of the whole run.
    """
    return 0.5 * peak * (1.0 + math.cos(math.pi * step / total_steps))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate: ``lr`` times the group's ``lr_mult`` (default 1; a
    backbone trained slower than its projection has one below 1). Weight decay stays per group."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
