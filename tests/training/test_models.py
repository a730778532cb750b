"""Encoders: shapes, the frozen simplex classifier, and rebuilding from arch + kwargs."""

from __future__ import annotations

import pytest
import torch

from upgrader.core.errors import ModelError
from upgrader.training.models import ARCHITECTURES, build_model, rebuild_model
from upgrader.training.simplex import d_simplex


@pytest.mark.parametrize(
    ("arch", "channels", "size"),
    [("small_cnn", 1, 28), ("small_cnn", 3, 40), ("resnet_narrow", 1, 28), ("resnet_narrow", 3, 32), ("resnet18", 3, 32)],
)
def test_architectures_give_features_and_logits(arch: str, channels: int, size: int) -> None:
    model = build_model(arch, num_classes=12, in_channels=channels, image_size=size).eval()
    feats, logits = model(torch.randn(2, channels, size, size))
    assert feats.shape == (2, 11) and logits.shape == (2, 12)
    assert torch.allclose(logits, feats @ d_simplex(12).t(), atol=1e-5)


def test_three_architectures_registered() -> None:
    assert {"small_cnn", "resnet_narrow", "resnet18"} <= set(ARCHITECTURES)


def test_simplex_classifier_is_a_frozen_buffer_without_bias() -> None:
    model = build_model("small_cnn", 8)
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("classifier") for n in names)
    assert "classifier.weight" in dict(model.named_buffers())
    assert "classifier.weight" in model.state_dict()
    assert torch.equal(model.classifier.weight, d_simplex(8))


def test_learnable_classifier_for_baselines() -> None:
    model = build_model("small_cnn", 8, classifier="learnable")
    params = dict(model.named_parameters())
    assert params["classifier.weight"].shape == (8, 7)
    assert "classifier.bias" in params


def test_resnet_narrow_is_bigger_than_small_cnn() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_model("resnet_narrow", 10)) > count(build_model("small_cnn", 10))
    assert count(build_model("resnet18", 10, 3, 32)) > 10 * count(build_model("resnet_narrow", 10))


def test_model_rebuilds_from_arch_and_kwargs() -> None:
    torch.manual_seed(0)
    model = build_model("resnet_narrow", 10, in_channels=3, image_size=32, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5])
    twin = rebuild_model(model.arch, model.arch_kwargs)
    twin.load_state_dict(model.state_dict())
    x = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    model.eval(), twin.eval()
    assert torch.equal(model.embed(x), twin.embed(x))
    assert twin.arch_kwargs["mean"] == pytest.approx([0.1, 0.2, 0.3])


def test_embed_is_unit_norm() -> None:
    model = build_model("small_cnn", 10).eval()
    emb = model.embed(torch.randint(0, 256, (4, 28, 28, 1), dtype=torch.uint8))
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "vgg"}, "unknown architecture"),
        ({"image_size": 16}, "below 28"),
        ({"in_channels": 2}, "in_channels"),
        ({"classifier": "cosine"}, "unknown classifier"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_bad_model_requests_are_refused(kwargs: dict, message: str) -> None:
    args = {"arch": "small_cnn", "num_classes": 10, **kwargs}
    with pytest.raises(ModelError, match=message):
        build_model(**args)
