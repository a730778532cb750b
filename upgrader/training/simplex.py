"""The fixed d-Simplex classifier geometry (docs/design.md §2)."""

from __future__ import annotations

import math

import torch

from upgrader.core.errors import ModelError


def d_simplex(num_classes: int) -> torch.Tensor:
    """Vertices of a regular simplex centred at the origin: one unit row per class.

    Construction (docs/design.md §2): the n x n identity (n = K-1), one extra row of (1 - sqrt(1+n))/n,
    subtract the column means, L2-normalise each row. Pairwise cosine is exactly -1/(K-1).

    Args:
        num_classes: K, the number of preallocated classes (>= 2).

    Returns:
        float32 tensor [K, K-1].

    Raises:
        ModelError: if ``num_classes`` < 2.
    """
    if int(num_classes) != num_classes or num_classes < 2:
        raise ModelError(f"d-Simplex needs at least 2 classes, got {num_classes!r}; use K >= 2")
    n = int(num_classes) - 1
    # float64 so the geometry is exact to float32 precision after the cast
    eye = torch.eye(n, dtype=torch.float64)  # [n, n]
    extra = torch.full((1, n), (1.0 - math.sqrt(1.0 + n)) / n, dtype=torch.float64)  # [1, n]
    vertices = torch.cat([eye, extra], dim=0)  # [K, n]
    vertices = vertices - vertices.mean(dim=0, keepdim=True)  # centre at the origin
    vertices = vertices / vertices.norm(dim=1, keepdim=True)  # unit norm rows
    return vertices.to(torch.float32)
