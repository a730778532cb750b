"""Fixtures shared by the training and runtime tests: a small Fashion-MNIST case trained once per session.

At the top of tests/ because tests/training and tests/runtime both use the one trained generation.
torch is imported where a fixture needs it, so a run of the torch-free tests never loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from upgrader.data.dataset import ImageDataset, probe_splits, split_per_class
from upgrader.data.readers import load_dataset

if TYPE_CHECKING:
    from upgrader.training.loop import TrainResult
    from upgrader.training.models import Encoder

# the first generation's classes: visually distinct, so 2-3 CPU epochs separate them well
FIRST_CLASSES = ["T-shirt/top", "Trouser", "Bag", "Sneaker", "Dress"]
INTERFACE_K = 10


def template_top1(q_feats: np.ndarray, q_labels: np.ndarray, g_feats: np.ndarray, g_labels: np.ndarray) -> float:
    """Template top-1: gallery class means (renormalised); a query is right if its nearest template is its class."""
    classes = np.unique(g_labels)
    templates = np.stack([g_feats[g_labels == c].mean(0) for c in classes])  # [C, D]
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    predicted = classes[(q_feats @ templates.T).argmax(1)]  # [Nq]
    return float((predicted == q_labels).mean())


def embed_torch(model: Encoder, images: np.ndarray) -> np.ndarray:
    """L2-normalised PyTorch features of uint8 NHWC images."""
    import torch

    return model.eval().embed(torch.from_numpy(images)).numpy()


@dataclass
class FashionCase:
    """Fashion-MNIST split into training data and a held-out probe set (all ten classes)."""

    train: ImageDataset
    query: ImageDataset
    gallery: ImageDataset
    label_map: dict[str, int]


@dataclass
class FirstGeneration:
    """The initial generation trained on FIRST_CLASSES."""

    result: TrainResult
    checkpoint: Path
    data: ImageDataset
    classes: list[str]
    num_classes: int


@pytest.fixture(scope="session")
def fashion() -> FashionCase:
    ds = load_dataset("fashion-mnist")
    train, query, gallery = probe_splits(ds, query_per_class=40, gallery_per_class=40, seed=0)
    return FashionCase(train, query, gallery, {c: i for i, c in enumerate(ds.classes)})


@pytest.fixture(scope="session")
def first_generation(fashion: FashionCase, tmp_path_factory: pytest.TempPathFactory) -> FirstGeneration:
    from upgrader.training.checkpoint import save_checkpoint
    from upgrader.training.config import TrainConfig
    from upgrader.training.loop import train_generation

    data = split_per_class(fashion.train.select(FIRST_CLASSES), 300, seed=1)[0]
    result = train_generation(
        TrainConfig(epochs=3, seed=0), (data.images, data.vertices(fashion.label_map)), num_classes=INTERFACE_K
    )
    path = tmp_path_factory.mktemp("gen0") / "gen0.pt"
    save_checkpoint(result.model, path, result.meta)
    return FirstGeneration(result, path, data, list(FIRST_CLASSES), INTERFACE_K)


@pytest.fixture(scope="session", name="template_top1")
def template_top1_fixture() -> Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]:
    """The template top-1 helper (fixtures, because test modules cannot import conftest reliably)."""
    return template_top1


@pytest.fixture(scope="session", name="embed_torch")
def embed_torch_fixture() -> Callable[[Encoder, np.ndarray], np.ndarray]:
    """The PyTorch embedding helper."""
    return embed_torch
