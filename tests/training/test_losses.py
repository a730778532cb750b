"""Losses: the HOC term worked by hand (masking included), and the combinations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from upgrader.training.losses import BCTInfluenceLoss, CompatibilityLoss, HOCLoss, SimplexCrossEntropy, hoc_loss


def _hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # new features n0=(1,0) n1=(0,1) n2=(-1,0); anchor features o0=(1,0) o1=(1,0) o2=(0,1)
    new = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    old = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    return new, old, labels


@pytest.mark.parametrize("mu", [1.0, 2.0])
def test_hoc_matches_hand_computation(mu: float) -> None:
    new, old, labels = _hand_case()
    # <o_i, n_j>:   row0: 1, 0, -1   row1: 1, 0, -1   row2: 0, 1, 0
    # row 0 (class 0): positive j=0 (1); j=1 is same class -> left out; negative j=2 (-1)
    l0 = -mu * 1 + math.log(math.exp(mu * 1) + math.exp(mu * -1))
    # row 1 (class 0): positive j=1 (0); j=0 same class -> left out; negative j=2 (-1)
    l1 = -mu * 0 + math.log(math.exp(0.0) + math.exp(mu * -1))
    # row 2 (class 1): positive j=2 (0); negatives j=0 (0) and j=1 (1)
    l2 = -mu * 0 + math.log(math.exp(0.0) + math.exp(0.0) + math.exp(mu * 1))
    expected = (l0 + l1 + l2) / 3
    got = hoc_loss(new, old, labels, mu=mu)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_hoc_masks_same_class_instead_of_zeroing() -> None:
    new, old, labels = _hand_case()
    mu = 1.0
    # had same-class similarities been zeroed, each of rows 0 and 1 would gain an exp(0) = 1 term
    zeroed = (
        (-1 + math.log(math.exp(1) + 1 + math.exp(-1)))
        + math.log(1 + 1 + math.exp(-1))
        + math.log(2 + math.exp(1))
    ) / 3
    assert hoc_loss(new, old, labels, mu=mu).item() != pytest.approx(zeroed, abs=1e-4)


def test_hoc_all_distinct_classes_is_infonce() -> None:
    torch.manual_seed(0)
    new = F.normalize(torch.randn(6, 5), dim=1)
    old = F.normalize(torch.randn(6, 5), dim=1)
    labels = torch.arange(6)
    expected = F.cross_entropy(10.0 * old @ new.t(), torch.arange(6))
    assert hoc_loss(new, old, labels, mu=10.0).item() == pytest.approx(expected.item(), abs=1e-5)


def test_hoc_module_normalises_raw_features_and_trains_only_new() -> None:
    new, old, labels = _hand_case()
    raw_new = (new * 3.0).requires_grad_(True)
    loss = HOCLoss(mu=2.0)(raw_new, old * 5.0, labels)
    assert loss.item() == pytest.approx(hoc_loss(new, old, labels, 2.0).item(), abs=1e-6)
    loss.backward()
    assert raw_new.grad is not None and torch.isfinite(raw_new.grad).all()


def test_compatibility_loss_mixes_ce_and_hoc() -> None:
    torch.manual_seed(1)
    logits = torch.randn(4, 5)
    new, old = torch.randn(4, 4), torch.randn(4, 4)
    labels = torch.tensor([0, 1, 1, 3])
    ce = F.cross_entropy(logits, labels)
    hoc = hoc_loss(F.normalize(new, dim=1), F.normalize(old, dim=1), labels, 10.0)
    mixed = CompatibilityLoss(lam=0.1, mu=10.0)(logits, new, old, labels)
    assert mixed.item() == pytest.approx(0.1 * ce.item() + 0.9 * hoc.item(), rel=1e-5)
    # no anchor (first generation): plain simplex CE
    assert CompatibilityLoss()(logits, new, None, labels).item() == pytest.approx(ce.item(), rel=1e-6)
    assert SimplexCrossEntropy()(logits, labels).item() == pytest.approx(ce.item(), rel=1e-6)


def test_bct_influence_is_ce_through_old_classifier() -> None:
    torch.manual_seed(2)
    weight, bias = torch.randn(5, 4), torch.randn(5)
    feats = torch.randn(3, 4, requires_grad=True)
    labels = torch.tensor([4, 0, 2])
    loss = BCTInfluenceLoss(weight, bias)(feats, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(feats @ weight.t() + bias, labels).item(), rel=1e-6)
    loss.backward()
    module = BCTInfluenceLoss(weight)
    assert not list(module.parameters())  # the old classifier never trains


def test_vertex_alignment_is_zero_on_the_vertices_and_pulls_features_towards_them() -> None:
    from upgrader.training.losses import VertexAlignmentLoss
    from upgrader.training.simplex import d_simplex

    w = d_simplex(8)  # [8, 7]
    labels = torch.tensor([0, 3, 5])
    align = VertexAlignmentLoss(w)
    assert align(3.0 * w[labels], labels).item() == pytest.approx(0.0, abs=1e-6)  # scale does not matter
    assert align(-w[labels], labels).item() == pytest.approx(2.0, abs=1e-6)  # opposite: cosine distance 2
    feats = torch.randn(3, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    before = align(feats, labels)
    before.backward()
    with torch.no_grad():
        after = align(feats - 0.1 * feats.grad, labels)
    assert after.item() < before.item()


@pytest.mark.parametrize("mu", [1.0, 2.0])
def test_own_negatives_add_the_new_models_other_class_features_to_the_denominator(mu: float) -> None:
    new, old, labels = _hand_case()
    # <n_i, n_j> for other classes:  row0: j=2 (-1)   row1: j=2 (0)   row2: j=0 (-1), j=1 (0)
    l0 = -mu * 1 + math.log(math.exp(mu * 1) + math.exp(mu * -1) + math.exp(mu * -1))
    l1 = -mu * 0 + math.log(math.exp(0.0) + math.exp(mu * -1) + math.exp(0.0))
    l2 = -mu * 0 + math.log(math.exp(0.0) + math.exp(0.0) + math.exp(mu * 1) + math.exp(mu * -1) + math.exp(0.0))
    got = hoc_loss(new, old, labels, mu=mu, own_negatives=True)
    assert got.item() == pytest.approx((l0 + l1 + l2) / 3, abs=1e-6)
    assert got.item() > hoc_loss(new, old, labels, mu=mu).item()
    # the module and the combined loss carry the option
    logits = torch.zeros(3, 4)
    both = CompatibilityLoss(lam=0.0, mu=mu, own_negatives=True)(logits, new, old, labels)
    assert both.item() == pytest.approx(got.item(), abs=1e-6)
