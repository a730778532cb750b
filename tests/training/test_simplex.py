"""d-Simplex geometry: the fixed classifier every generation shares."""

from __future__ import annotations

import pytest
import torch

from upgrader.core.errors import ModelError
from upgrader.training.simplex import d_simplex


@pytest.mark.parametrize("k", [2, 3, 10, 64, 128])
def test_simplex_is_a_regular_centred_unit_simplex(k: int) -> None:
    w = d_simplex(k).double()
    assert w.shape == (k, k - 1)
    assert torch.allclose(w.norm(dim=1), torch.ones(k, dtype=torch.float64), atol=1e-6)
    cos = w @ w.t()
    off_diagonal = cos[~torch.eye(k, dtype=torch.bool)]
    assert torch.allclose(off_diagonal, torch.full_like(off_diagonal, -1.0 / (k - 1)), atol=1e-6)
    assert torch.allclose(w.sum(dim=0), torch.zeros(k - 1, dtype=torch.float64), atol=1e-5)


def test_simplex_is_deterministic_float32() -> None:
    assert d_simplex(16).dtype == torch.float32
    assert torch.equal(d_simplex(16), d_simplex(16))


@pytest.mark.parametrize("k", [0, 1])
def test_simplex_needs_two_classes(k: int) -> None:
    with pytest.raises(ModelError, match="at least 2"):
        d_simplex(k)
