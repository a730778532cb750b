"""What a training step minimises: the method's loss (hoc, hoc-paper, ce, er, bct) over the lineage's classes,
with the frozen anchor and the masks it needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from upgrader.core.vocabulary import ANCHORED_METHODS, HOC_METHODS
from upgrader.training.anchor import influence_loss, known_vertices, load_anchor
from upgrader.training.checkpoint import CheckpointPath
from upgrader.training.config import TrainConfig
from upgrader.training.losses import BCTInfluenceLoss, CompatibilityLoss, SimplexCrossEntropy, VertexAlignmentLoss
from upgrader.training.models import Encoder

@dataclass
class Objective:
    """The loss of one batch, with the frozen anchor and the masks it needs."""

    config: TrainConfig
    class_mask: torch.Tensor  # [K]: 0 on the lineage's vertices, -inf on the reserved ones
    anchor: Encoder | None  # frozen, on the device; None without a compatibility term
    anchor_meta: dict[str, Any]  # the anchor's checkpoint metadata ({} without one)
    anchor_knows: torch.Tensor  # bool [K]: the vertices the anchor learnt
    ce: SimplexCrossEntropy
    compat: CompatibilityLoss
    align: VertexAlignmentLoss | None  # hoc with stationarity > 0
    influence: BCTInfluenceLoss | None  # bct with an anchor

    def loss(self, feats: torch.Tensor, logits: torch.Tensor, old_feats: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """The method's loss for raw features [B, K-1], masked logits [B, K] and the anchor's features."""
        if self.config.method in HOC_METHODS:  # hoc-paper: lambda*CE + (1-lambda)*HOC, nothing else
            old = None if old_feats is None else old_feats.float()
            loss = self.compat(logits, feats, old, labels, self.anchor_knows[labels])
            if self.align is not None:
                loss = loss + self.config.stationarity * self.align(feats, labels)
            return loss
        if self.config.method == "bct" and self.influence is not None:
            return self.ce(logits, labels) + self.config.bct_weight * self.influence(feats, labels)
        return self.ce(logits, labels)  # ce, er, or bct without an anchor


def build_objective(
    config: TrainConfig,
    model: Encoder,
    images: torch.Tensor,
    vertices: torch.Tensor,
    active: list[int],
    anchor_checkpoint: CheckpointPath | None,
    num_classes: int,
    memory_format: torch.memory_format,
) -> Objective:
    """The anchor (hoc and bct only) and the loss modules of ``config.method``.

    Args:
        config: the run's configuration (method, lam, mu, stationarity, bct_weight).
        model: the encoder being trained, on its device (its simplex is the alignment target).
        images: uint8 [N, H, W, C] new data on the device (bct's rows for classes new to the anchor).
        vertices: [N] their vertex labels.
        active: the vertices the lineage has learnt; the softmax ranges over these only.
        anchor_checkpoint: the frozen anchor, or None.
        num_classes: K of the interface.
        memory_format: the model's memory format, which the anchor shares.
    """
    device = images.device
    anchor: Encoder | None = None
    anchor_meta: dict[str, Any] = {}
    if config.method in ANCHORED_METHODS and anchor_checkpoint is not None:
        anchor, anchor_meta = load_anchor(anchor_checkpoint, num_classes, images.shape[-1], device, memory_format)
    anchor_knows = known_vertices(anchor_meta, num_classes, device)
    # The softmax ranges over the vertices of the classes the lineage has learnt (this data and the
    # memory); the other preallocated vertices are reserved. Including them would push every feature
    # away from dozens of unused vertices, i.e. towards one common direction shared by all classes,
    # which squeezes the classes together and makes small drifts between generations costly.
    class_mask = torch.full((num_classes,), float("-inf"), device=device)  # [K]
    class_mask[active] = 0.0
    align = None
    if config.method == "hoc" and config.stationarity > 0:
        align = VertexAlignmentLoss(model.classifier.weight).to(device)
    influence = None
    if config.method == "bct" and anchor is not None:
        influence = influence_loss(anchor, anchor_meta, images, vertices.cpu(), device)
    return Objective(
        config, class_mask, anchor, anchor_meta, anchor_knows, SimplexCrossEntropy(),
        CompatibilityLoss(config.lam, config.mu, config.own_negatives), align, influence,
    )
