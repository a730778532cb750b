"""Vertex calibration: the closed-form map onto the class vertices, folded into the projection."""

from __future__ import annotations

import torch
from torch import nn

from upgrader.training.calibration import fit_vertex_map, fold_into_projection
from upgrader.training.simplex import d_simplex


def test_folding_makes_the_projection_output_x_times_m() -> None:
    torch.manual_seed(0)
    proj = nn.Linear(12, 7)
    m = torch.randn(7, 7, dtype=torch.float64)
    x = torch.randn(5, 12)
    expected = proj(x).double() @ m
    fold_into_projection(proj, m)
    assert torch.allclose(proj(x).double(), expected, atol=1e-5)


def test_fit_undoes_a_shared_offset_and_a_linear_distortion() -> None:
    # Features = (vertex + a direction every class shares + noise) through a random linear map: the
    # fitted map brings them back onto their vertices; with a large ridge it stays near the identity.
    gen = torch.Generator().manual_seed(1)
    w = d_simplex(8).double()  # [8, 7]
    labels = torch.randint(0, 5, (2000,), generator=gen)
    distortion = torch.eye(7, dtype=torch.float64) + 0.5 * torch.randn(7, 7, generator=gen, dtype=torch.float64)
    feats = (w[labels] + 0.8 * w[7] + 0.05 * torch.randn(2000, 7, generator=gen, dtype=torch.float64)) @ distortion

    def mean_cos(f: torch.Tensor) -> float:
        return float((nn.functional.normalize(f, dim=1) * w[labels]).sum(1).mean())

    m = fit_vertex_map(feats, w[labels], ridge=1e-4)
    assert mean_cos(feats) < 0.8
    assert mean_cos(nn.functional.normalize(feats, dim=1) @ m) > 0.98
    stiff = fit_vertex_map(feats, w[labels], ridge=1e4)
    assert torch.allclose(stiff, torch.eye(7, dtype=torch.float64), atol=1e-3)
