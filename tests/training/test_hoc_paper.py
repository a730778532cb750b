"""``hoc-paper``: the paper's loss exactly (lambda*CE + (1-lambda)*HOC), next to the product's ``hoc``."""

from __future__ import annotations

import numpy as np
import torch

from upgrader.core.vocabulary import ANCHORED_METHODS, METHODS
from upgrader.training.config import TrainConfig
from upgrader.training.loop import train_generation
from upgrader.training.losses import CompatibilityLoss
from upgrader.training.models import build_model
from upgrader.training.objective import build_objective


def _tiny(n: int = 64, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % k
    images = (rng.integers(0, 60, (n, 28, 28, 1)) + labels[:, None, None, None] * 50).astype(np.uint8)
    return images, labels.astype(np.int64)


def test_hoc_paper_is_a_method_everywhere_methods_are_offered_and_is_anchored() -> None:
    assert "hoc-paper" in METHODS and "hoc-paper" in ANCHORED_METHODS


def test_hoc_paper_minimises_exactly_the_papers_loss_with_no_stationarity_term() -> None:
    torch.manual_seed(0)
    images, labels = _tiny()
    config = TrainConfig(method="hoc-paper", stationarity=5.0)  # the stationarity weight is ignored by hoc-paper
    model = build_model(config.arch, num_classes=6, in_channels=1)
    objective = build_objective(config, model, torch.from_numpy(images), torch.from_numpy(labels), [0, 1, 2, 3],
                                None, 6, torch.contiguous_format)
    assert objective.align is None
    feats = torch.randn(8, 5)
    logits = feats @ model.classifier.weight.T + objective.class_mask
    y = torch.from_numpy(labels[:8])
    expected = CompatibilityLoss(config.lam, config.mu)(logits, feats, None, y, objective.anchor_knows[y])
    assert torch.equal(objective.loss(feats, logits, None, y), expected)
    hoc = build_objective(TrainConfig(method="hoc"), model, torch.from_numpy(images), torch.from_numpy(labels),
                          [0, 1, 2, 3], None, 6, torch.contiguous_format)
    assert hoc.align is not None  # the product's hoc adds the stationarity term on top


def test_hoc_paper_skips_the_vertex_calibration_that_hoc_folds_in() -> None:
    paper = train_generation(TrainConfig(method="hoc-paper", epochs=1, batch_size=16), _tiny(), num_classes=6)
    hoc = train_generation(TrainConfig(method="hoc", epochs=1, batch_size=16), _tiny(), num_classes=6)
    assert paper.meta["calibration"] is None and paper.meta["method"] == "hoc-paper"
    assert hoc.meta["calibration"] is not None
