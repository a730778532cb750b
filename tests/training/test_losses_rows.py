"""The compatibility loss can restrict its HOC term to some samples (those the anchor knows)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from upgrader.training.losses import CompatibilityLoss, hoc_loss


def test_hoc_rows_restrict_the_contrastive_term_and_keep_ce_on_all() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 8, generator=g)
    new, old = torch.randn(6, 7, generator=g), torch.randn(6, 7, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 5, 6])
    rows = torch.tensor([True, True, True, True, False, False])
    loss = CompatibilityLoss(lam=0.1, mu=10.0)(logits, new, old, labels, rows)
    expected = 0.1 * F.cross_entropy(logits, labels) + 0.9 * hoc_loss(
        F.normalize(new[rows], dim=1), F.normalize(old[rows], dim=1), labels[rows], mu=10.0
    )
    assert torch.allclose(loss, expected)
    everything = CompatibilityLoss(lam=0.1, mu=10.0)(logits, new, old, labels)
    assert not torch.allclose(loss, everything)


def test_fewer_than_two_known_samples_leave_plain_ce() -> None:
    logits = torch.randn(3, 4)
    feats = torch.randn(3, 3)
    labels = torch.tensor([0, 1, 2])
    rows = torch.tensor([True, False, False])
    loss = CompatibilityLoss(lam=0.1)(logits, feats, feats, labels, rows)
    assert torch.allclose(loss, F.cross_entropy(logits, labels))
