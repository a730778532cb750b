"""Vertex calibration: after training, map a generation's features onto its class vertices in closed form.

The stationarity term pulls each feature towards its class's vertex, but a trained generation's
features still sit at cos ~0.7-0.85 to their vertex, with a component that all its classes share.
In a gallery that mixes generations that shared part is what makes a query prefer items of its own
generation. Calibration fits the linear map ``M`` [D, D] that best sends the generation's normalised
training features onto their vertices,

    M = argmin_M  mean_i ||f_i M - w_{y_i}||^2 + ridge * ||M - I||^2
      = (F^T F / n + ridge I)^-1 (F^T W / n + ridge I),

and folds it into the last linear layer (``projection``), so the exported artifact carries it and
nothing downstream changes. Features are L2-normalised after the map, so scaling the raw feature
before it does not matter. ``ridge`` keeps ``M`` near the identity (0: plain least squares).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

#: At most this many training images are embedded for the fit (a random, seeded subset).
MAX_FIT_IMAGES = 20_000


def fit_vertex_map(feats: torch.Tensor, targets: torch.Tensor, ridge: float) -> torch.Tensor:
    """The ridge least-squares map of normalised ``feats`` [N, D] onto unit ``targets`` [N, D]: [D, D]."""
    f = nn.functional.normalize(feats.double(), dim=1)
    t = targets.double()
    n, d = f.shape
    eye = torch.eye(d, dtype=torch.float64)
    return torch.linalg.solve(f.T @ f / n + ridge * eye, f.T @ t / n + ridge * eye)


@torch.no_grad()
def fold_into_projection(projection: nn.Linear, vertex_map: torch.Tensor) -> None:
    """Make ``projection`` output ``x M`` where it output ``x``: weight <- M^T weight, bias <- bias M."""
    m = vertex_map.to(projection.weight.dtype)
    projection.weight.copy_(m.T @ projection.weight)
    if projection.bias is not None:
        projection.bias.copy_(projection.bias @ m)


def calibrate(
    model: nn.Module,
    features: Callable[[np.ndarray], torch.Tensor],
    images: np.ndarray,
    vertices: np.ndarray,
    ridge: float,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the vertex map on ``images`` (uint8 NHWC, the generation's training data) and fold it in.

    ``model`` is an eval-mode CPU :class:`upgrader.training.models.Encoder` with a simplex classifier;
    ``features(images)`` returns its raw features [N, D]. Returns the mean cosine of the training
    features to their vertex before and after, for the record.
    """
    if len(images) > MAX_FIT_IMAGES:
        keep = np.sort(np.random.default_rng(seed).choice(len(images), MAX_FIT_IMAGES, replace=False))
        images, vertices = images[keep], vertices[keep]
    targets = model.classifier.weight.detach().cpu()[torch.as_tensor(vertices, dtype=torch.long)]  # [N, D]
    feats = features(images)
    vertex_map = fit_vertex_map(feats, targets, ridge)
    fold_into_projection(model.projection, vertex_map)
    after = features(images)

    def mean_cos(f: torch.Tensor) -> float:
        return float((nn.functional.normalize(f.double(), dim=1) * targets.double()).sum(1).mean())

    return {"ridge": ridge, "images": int(len(images)), "cos_before": round(mean_cos(feats), 4), "cos_after": round(mean_cos(after), 4)}
