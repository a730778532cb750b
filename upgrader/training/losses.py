"""Training losses on the fixed d-Simplex (docs/design.md §2).

All losses are ``nn.Module``s; ``hoc_loss`` is also exposed as a function for tests and callers that
already hold L2-normalised features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def hoc_loss(
    new_feats: torch.Tensor, old_feats: torch.Tensor, labels: torch.Tensor, mu: float = 10.0,
    own_negatives: bool = False,
) -> torch.Tensor:
    """Higher-order compatibility (contrastive) loss between new and anchor features.

    L = mean_i [ -mu <fo_i, fn_i> + log sum_{j: j == i or y_j != y_i} exp(mu <fo_i, fn_j>) ]

    With ``own_negatives`` the new model's own features of other classes join the denominator,
    ``+ sum_{j: y_j != y_i} exp(mu <fn_i, fn_j>)`` (as regression-alleviating compatible training
    does): the new anchor-aligned feature must also beat the new model's features of other classes,
    which are what its queries meet among the items it writes to a mixed gallery.

    Args:
        new_feats: L2-normalised features of the model being trained, [N, D].
        old_feats: L2-normalised features of the frozen anchor on the same images, [N, D].
        labels: vertex index of each sample's class, int64 [N].
        mu: scale (inverse temperature) of the similarities.
        own_negatives: add the new-to-new negatives.

    Returns:
        Scalar loss tensor.
    """
    sims = mu * old_feats @ new_feats.t()  # [N, N]: row i = anchor i against every new j
    same_class = labels.unsqueeze(0) == labels.unsqueeze(1)  # [N, N]
    diagonal = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)  # [N, N]
    # Other same-class images leave the denominator entirely (-inf), they are not zeroed:
    # exp(0) = 1 would still count them.
    masked = sims.masked_fill(same_class & ~diagonal, float("-inf"))  # [N, N]
    if own_negatives:
        own = (mu * new_feats @ new_feats.t()).masked_fill(same_class, float("-inf"))  # [N, N], other classes only
        masked = torch.cat([masked, own], dim=1)  # [N, 2N]
    positives = sims.diagonal()  # [N]
    return (-positives + torch.logsumexp(masked, dim=1)).mean()


class SimplexCrossEntropy(nn.Module):
    """Cross-entropy on logits = raw (unnormalised) features @ W.T of the fixed simplex."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: logits [N, K] from the encoder; labels vertex indices [N]. Returns a scalar."""
        return F.cross_entropy(logits.float(), labels)


class VertexAlignmentLoss(nn.Module):
    """Stationarity term: mean_i (1 - cos(f_i, w_{y_i})), the cosine distance of each feature to its
    class's vertex of the fixed simplex.

    Why: the CE over the learnt classes' vertices fixes only how a feature compares with those few
    vertices; the rest of its K-1 dimensions, and a direction shared by all classes, are left to the
    initialisation. Two generations then agree on class margins but not on where the features lie,
    so a query of one generation prefers any item of its own generation to the right item of an
    older one in a mixed gallery. Holding every feature at its vertex is what makes the
    representation stationary in practice.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        """Args: weight: the simplex vertices [K, K-1] (unit rows)."""
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: raw features [N, K-1]; labels vertex indices [N]. Returns a scalar."""
        cos = (F.normalize(feats.float(), dim=1) * self.weight[labels]).sum(1)  # [N]
        return (1.0 - cos).mean()


class HOCLoss(nn.Module):
    """``hoc_loss`` as a module; normalises raw features itself."""

    def __init__(self, mu: float = 10.0, own_negatives: bool = False) -> None:
        """Args: mu: scale of the cosine similarities; own_negatives: see :func:`hoc_loss`."""
        super().__init__()
        self.mu = mu
        self.own_negatives = own_negatives

    def forward(
        self, new_feats: torch.Tensor, old_feats: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Args: raw features [N, D] of the new and anchor models, labels [N]. Returns a scalar."""
        new_n = F.normalize(new_feats.float(), dim=1)  # [N, D]
        old_n = F.normalize(old_feats.float(), dim=1)  # [N, D]
        return hoc_loss(new_n, old_n, labels, self.mu, self.own_negatives)


class CompatibilityLoss(nn.Module):
    """lambda * CE on the simplex + (1 - lambda) * HOC against the anchor (docs/design.md §2)."""

    def __init__(self, lam: float = 0.1, mu: float = 10.0, own_negatives: bool = False) -> None:
        """Args: lam: weight of the CE term; mu: HOC scale; own_negatives: see :func:`hoc_loss`."""
        super().__init__()
        self.lam = lam
        self.ce = SimplexCrossEntropy()
        self.hoc = HOCLoss(mu, own_negatives)

    def forward(
        self,
        logits: torch.Tensor,
        new_feats: torch.Tensor,
        old_feats: torch.Tensor | None,
        labels: torch.Tensor,
        hoc_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Combined loss; without an anchor (``old_feats`` None) plain simplex CE.

        Args:
            logits: [N, K] of the new model.
            new_feats: raw features [N, K-1] of the new model.
            old_feats: raw features [N, K-1] of the anchor on the same images, or None.
            labels: vertex indices [N].
            hoc_rows: bool [N], the samples the HOC term covers (default all): the trainer passes the
                samples of classes the anchor learnt.
        """
        ce = self.ce(logits, labels)
        if old_feats is None:
            return ce
        if hoc_rows is not None:
            if int(hoc_rows.sum()) < 2:
                return ce
            new_feats, old_feats, labels = new_feats[hoc_rows], old_feats[hoc_rows], labels[hoc_rows]
        return self.lam * ce + (1.0 - self.lam) * self.hoc(new_feats, old_feats, labels)


class BCTInfluenceLoss(nn.Module):
    """Backward-compatible training influence loss (Shen et al. 2020).

    The new model's features go through the old model's frozen classifier (weight [K, D], optional
    bias [K]) and are scored with cross-entropy against the labels.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Args: weight: frozen old classifier weight [K, D]; bias: its bias [K] or None."""
        super().__init__()
        # Buffers: moved with .to(device), never trained.
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, new_feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Args: raw new features [N, D]; labels [N]. Returns a scalar."""
        logits = F.linear(new_feats.float(), self.weight, self.bias)  # [N, K]
        return F.cross_entropy(logits, labels)
