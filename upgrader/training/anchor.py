"""The frozen anchor generation a new one stays compatible with: loading it, which classes it
knows, and the BCT influence classifier built from it.

hoc pulls new features towards the anchor's (``CompatibilityLoss``); bct scores new features with
the anchor's classifier (``BCTInfluenceLoss``). Both read the anchor here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from upgrader.core.errors import TrainingError
from upgrader.training.checkpoint import CheckpointPath, load_checkpoint
from upgrader.training.losses import BCTInfluenceLoss
from upgrader.training.models import Encoder


def load_anchor(
    path: CheckpointPath,
    num_classes: int,
    channels: int,
    device: torch.device,
    memory_format: torch.memory_format,
) -> tuple[Encoder, dict[str, Any]]:
    """Load the anchor checkpoint onto ``device``, frozen (eval mode, no gradients).

    Args:
        path: the anchor's checkpoint.
        num_classes: K of the interface; the anchor must share it.
        channels: image channels of the training data; the anchor must take as many.
        device: where the anchor runs next to the model being trained.
        memory_format: the model's memory format (channels_last on CUDA).

    Returns:
        (anchor, its checkpoint metadata).

    Raises:
        TrainingError: the anchor was built for another K or another channel count.
    """
    anchor, meta = load_checkpoint(path)
    if anchor.num_classes != num_classes:
        raise TrainingError(f"anchor has K={anchor.num_classes}, the interface K={num_classes}; not compatible")
    if anchor.in_channels != channels:
        raise TrainingError(f"anchor takes {anchor.in_channels} channels, the data has {channels}")
    anchor = anchor.to(device, memory_format=memory_format).eval()
    for p in anchor.parameters():
        p.requires_grad_(False)
    return anchor, meta


def known_vertices(anchor_meta: dict[str, Any], num_classes: int, device: torch.device) -> torch.Tensor:
    """Bool [K]: the vertices whose features the compatibility term holds to the anchor's.

    Only for classes the anchor learnt: for a class new to the anchor, its features are an accident of
    the old model, and pulling the new model towards them fights the CE term that moves the class to
    its own vertex (measured on Fashion-MNIST: old-class cross-test 73.5% unmasked vs 82.5% masked
    after a 2-class fine-tune). Without an anchor (``anchor_meta`` empty), or when its checkpoint does
    not record its classes, every vertex counts.
    """
    knows = torch.ones(num_classes, dtype=torch.bool, device=device)  # [K]
    if anchor_meta.get("vertices"):
        knows[:] = False
        knows[torch.tensor([int(v) for v in anchor_meta["vertices"]], device=device)] = True
    return knows


@torch.no_grad()
def raw_features(model: Encoder, images: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    """Raw features [N, K-1] of an eval-mode model for uint8 NHWC images (no augmentation)."""
    out = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch].to(device).float().div(255.0).permute(0, 3, 1, 2)  # [n, C, H, W]
        out.append(model(model.normalize(x))[0].float())
    return torch.cat(out)  # [N, K-1]


def influence_loss(
    anchor: Encoder, anchor_meta: dict[str, Any], images: torch.Tensor, vertices: torch.Tensor, device: torch.device
) -> BCTInfluenceLoss:
    """BCT influence classifier: the anchor's frozen classifier; for classes the anchor never saw
    (learnable classifier only), the row is the mean anchor feature of that class (Shen et al.).

    Args:
        anchor: the frozen anchor.
        anchor_meta: its checkpoint metadata ("vertices": the classes it learnt).
        images: uint8 [N, H, W, C] training images.
        vertices: int64 [N] their vertex labels, on the CPU.
        device: where the loss runs.
    """
    if anchor.classifier_kind == "simplex":
        return BCTInfluenceLoss(anchor.classifier.weight).to(device)
    weight = anchor.classifier.weight.detach().clone()  # [K, D]
    bias = anchor.classifier.bias.detach().clone()  # [K]
    known = set(int(v) for v in anchor_meta.get("vertices", []))
    new = sorted(set(vertices.tolist()) - known)
    if new and known:
        feats = raw_features(anchor, images, device).cpu()  # [N, D]
        scale = weight[sorted(known)].norm(dim=1).mean()
        for v in new:
            centre = feats[vertices == v].mean(0)  # [D]
            weight[v] = F.normalize(centre, dim=0) * scale
            bias[v] = bias[sorted(known)].mean()
    return BCTInfluenceLoss(weight, bias).to(device)
