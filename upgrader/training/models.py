"""Encoders: backbone -> linear projection to K-1 -> features, with a fixed d-Simplex classifier.

The backbone is a built-in network or one the user brings (``package.module:function``,
:mod:`upgrader.training.backbones`). Every ``Encoder`` carries its architecture and construction kwargs (``arch``, ``arch_kwargs``)
so a checkpoint can rebuild it, and its input normalisation (``mean``/``std`` per channel) so the
ONNX export bakes in exactly what training used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upgrader.core.errors import InvalidRequest, ModelError
from upgrader.core.vocabulary import ARCHITECTURES as ARCHITECTURE_NAMES
from upgrader.core.vocabulary import architecture_kind
from upgrader.training.backbones import build_backbone, resolve_factory
from upgrader.training.simplex import d_simplex

MIN_IMAGE_SIZE = 28


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias: BN follows) + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Three conv layers 32-64-128 with pooling and global average pooling; fast on CPU."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64, 128)) -> None:
        """Args: in_channels: 1 or 3; widths: channels of the three conv layers."""
        super().__init__()
        w1, w2, w3 = widths
        self.features = nn.Sequential(
            _conv_bn(in_channels, w1),
            nn.MaxPool2d(2),
            _conv_bn(w1, w2),
            nn.MaxPool2d(2),
            _conv_bn(w2, w3),
        )
        self.out_dim = w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] -> pooled features [N, out_dim]."""
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)  # [N, out_dim]


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with a 1x1 projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        """Args: cin/cout: channels; stride: of the first conv."""
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, cin, H, W] -> [N, cout, H/stride, W/stride]."""
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem (no max-pool), stages of basic blocks, global average pooling."""

    def __init__(self, in_channels: int, widths: Sequence[int], blocks: Sequence[int]) -> None:
        """Args: in_channels: 1 or 3; widths: channels per stage; blocks: blocks per stage."""
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ModelError("ResNet widths and blocks must be non-empty and of equal length")
        self.stem = _conv_bn(in_channels, widths[0])
        layers: list[nn.Module] = []
        cin = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            for b in range(count):
                # downsample at the first block of every stage but the first
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(BasicBlock(cin, width, stride))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] -> pooled features [N, out_dim]."""
        x = self.layers(self.stem(x))  # [N, out_dim, h, w]
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # [N, out_dim]


def _small_cnn(in_channels: int, **kw: Any) -> nn.Module:
    return SmallCNN(in_channels, **kw)


def _resnet_narrow(in_channels: int, **kw: Any) -> nn.Module:
    # ResNet-14-ish at widths 16-32-64: a bit bigger than small_cnn, still trainable on 2 CPU cores.
    return ResNet(in_channels, kw.get("widths", (16, 32, 64)), kw.get("blocks", (2, 2, 2)))


def _resnet_wide(in_channels: int, **kw: Any) -> nn.Module:
    # Twice resnet_narrow's widths: the second, larger replacement of the long scenario on CPU.
    return ResNet(in_channels, kw.get("widths", (32, 64, 128)), kw.get("blocks", (2, 2, 2)))


def _resnet18(in_channels: int, **kw: Any) -> nn.Module:
    return ResNet(in_channels, kw.get("widths", (64, 128, 256, 512)), kw.get("blocks", (2, 2, 2, 2)))


# name (one of core.vocabulary.ARCHITECTURES, in its order) -> factory(in_channels, **kwargs) -> backbone
_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": _small_cnn,
    "resnet_narrow": _resnet_narrow,
    "resnet_wide": _resnet_wide,
    "resnet18": _resnet18,
}
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {name: _FACTORIES[name] for name in ARCHITECTURE_NAMES}


class SimplexClassifier(nn.Module):
    """Fixed d-Simplex classifier: logits = features @ W.T, W a buffer (never a Parameter), no bias."""

    def __init__(self, num_classes: int) -> None:
        """Args: num_classes: K; the weight is [K, K-1]."""
        super().__init__()
        self.register_buffer("weight", d_simplex(num_classes))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [N, K-1] -> logits [N, K]."""
        return feats @ self.weight.t()  # [N, K]


class Encoder(nn.Module):
    """backbone -> linear projection to K-1 (features) -> classifier (logits).

    Attributes:
        arch: architecture: a key of ``ARCHITECTURES``, ``package.module:function`` or a registered name.
        arch_kwargs: the keyword arguments of ``build_model`` that rebuild this model.
        num_classes: K.
        embedding_dim: K-1.
        classifier_kind: "simplex" or "learnable".
        backbone_frozen: the backbone neither learns nor leaves eval mode (see ``freeze_backbone``).
    """

    def __init__(
        self,
        arch: str,
        num_classes: int,
        in_channels: int,
        image_size: int,
        classifier: str,
        mean: Sequence[float],
        std: Sequence[float],
        backbone_kwargs: dict[str, Any],
    ) -> None:
        """See ``build_model``."""
        super().__init__()
        self.arch = arch
        self.arch_kwargs: dict[str, Any] = {
            "num_classes": int(num_classes),
            "in_channels": int(in_channels),
            "image_size": int(image_size),
            "classifier": classifier,
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
            "backbone_kwargs": dict(backbone_kwargs),
        }
        self.num_classes = int(num_classes)
        self.embedding_dim = int(num_classes) - 1
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.classifier_kind = classifier
        self.backbone, self.feature_dim = build_backbone(
            arch, resolve_factory(arch, ARCHITECTURES), int(in_channels), int(image_size), dict(backbone_kwargs)
        )
        self.backbone_frozen = False
        self.projection = nn.Linear(self.feature_dim, self.embedding_dim)
        self.classifier: nn.Module
        if classifier == "simplex":
            self.classifier = SimplexClassifier(num_classes)
        else:
            self.classifier = nn.Linear(self.embedding_dim, num_classes)
        # Normalisation constants are part of arch_kwargs, so not persistent in the state_dict.
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    def freeze_backbone(self) -> Encoder:
        """Stop the backbone learning: its parameters get no gradients and it stays in eval mode even
        when the encoder is put in training mode, so its batch-norm statistics stay as loaded."""
        self.backbone_frozen = True
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        return self

    def train(self, mode: bool = True) -> Encoder:
        """``nn.Module.train``, except that a frozen backbone stays in eval mode."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW, exactly as the ONNX graph does it.

        Args:
            images: uint8 [N, H, W, C] (or float in [0, 255]).
        """
        x = images.to(self.mean.dtype).div(255.0)  # [N, H, W, C] in [0, 1]
        return self.normalize(x.permute(0, 3, 1, 2))  # [N, C, H, W]

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Float NCHW in [0, 1] -> (x - mean) / std."""
        return (x01 - self.mean) / self.std  # [N, C, H, W]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float NCHW [N, C, H, W] -> (raw features [N, K-1], logits [N, K])."""
        feats = self.projection(self.backbone(x))  # [N, K-1]
        return feats, self.classifier(feats)  # [N, K-1], [N, K]

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC images -> L2-normalised features [N, K-1] (eval mode is the caller's job)."""
        feats, _ = self(self.preprocess(images))
        return F.normalize(feats.float(), dim=1)  # [N, K-1]


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int = 1,
    image_size: int = 28,
    classifier: str = "simplex",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
) -> Encoder:
    """Build an encoder.

    Args:
        arch: one of ``ARCHITECTURES`` (``core.vocabulary.ARCHITECTURES``), a user backbone as
            ``package.module:function`` (``function(in_channels, image_size, **kwargs) -> nn.Module``
            mapping [N, C, H, W] to [N, F]), or a name registered in the ``upgrader.backbones`` group.
        num_classes: K, the preallocated class count; features are K-1 dimensional.
        in_channels: 1 or 3.
        image_size: input side in pixels (>= 28); global pooling makes any size work.
        classifier: "simplex" (fixed, the method) or "learnable" (the er / bct baselines).
        mean: per-channel normalisation mean in [0, 1] units (default 0.5).
        std: per-channel normalisation std (default 0.25).
        backbone_kwargs: extra arguments of the backbone (e.g. widths); plain JSON values, since they
            are stored with the checkpoint and the artifact.

    Returns:
        An ``Encoder`` in training mode, on the CPU.

    Raises:
        ModelError: unknown architecture or classifier, bad channel count or image size; a user
            backbone that cannot be built (``BackboneUnavailable``: its module is not installed).
    """
    try:
        architecture_kind(arch)
    except InvalidRequest as exc:
        raise ModelError(str(exc), subject="arch") from None
    if classifier not in ("simplex", "learnable"):
        raise ModelError(f"unknown classifier {classifier!r}; use 'simplex' or 'learnable'")
    if in_channels not in (1, 3):
        raise ModelError(f"in_channels must be 1 or 3, got {in_channels}")
    if image_size < MIN_IMAGE_SIZE:
        raise ModelError(f"image_size {image_size} is below {MIN_IMAGE_SIZE}; resize the images")
    if num_classes < 2:
        raise ModelError(f"num_classes must be >= 2, got {num_classes}")
    mean = list(mean) if mean is not None else [0.5] * in_channels
    std = list(std) if std is not None else [0.25] * in_channels
    if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
        raise ModelError("mean/std need one value per channel and std > 0")
    return Encoder(
        arch, num_classes, in_channels, image_size, classifier, mean, std, backbone_kwargs or {}
    )


def rebuild_model(arch: str, kwargs: dict[str, Any]) -> Encoder:
    """Rebuild an encoder from ``model.arch`` and ``model.arch_kwargs`` (checkpoint round-trip)."""
    return build_model(arch, **kwargs)
