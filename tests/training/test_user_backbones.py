"""Bring your own backbone (issue 17): a user's ``package.module:function`` trains, exports with parity
and round-trips through a checkpoint; pretrained weights load by their keys (prefix mapped, wrong keys
listed, pickled objects refused); a frozen backbone comes out bit-identical; what cannot work is said in
one line that names the module, the key or the op.

Each test writes its backbone module into its own tmp_path under a name of its own, so the modules
Python caches cannot leak from one test into the next.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from upgrader.core.errors import ExportError, InvalidRequest, ModelError, TrainingError
from upgrader.core.vocabulary import BackboneUnavailable, architecture_kind
from upgrader.training.checkpoint import load_checkpoint, save_checkpoint
from upgrader.training.config import TrainConfig
from upgrader.training.export import export_onnx
from upgrader.training.loop import _param_groups, train_generation
from upgrader.training.models import build_model
from upgrader.training.schedule import set_lr
from upgrader.training.weights import WeightsError, load_init_weights

#: A small user backbone with batch norm (running statistics are what freezing must keep).
TINY = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, in_channels, width):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


def tiny(in_channels, image_size, width=8):
    assert image_size >= 28
    return Tiny(in_channels, width)
"""

K = 6


def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str = TINY) -> str:
    """Write ``source`` as module ``name`` in tmp_path and put tmp_path on sys.path."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def data(n: int = 24, size: int = 32, channels: int = 3, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    images = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    images[..., 0] = np.where(labels[:, None, None] == 0, 255, images[..., 0])  # something to learn
    return images, labels.astype(np.int64)


def config(arch: str, **kw) -> TrainConfig:
    return TrainConfig(arch=arch, steps=3, batch_size=8, augment=False, device="cpu", **kw)


def test_user_backbone_trains_exports_with_parity_and_round_trips(tmp_path, monkeypatch) -> None:
    mod = user_module(tmp_path, monkeypatch, "ubk_round_trip")
    arch = f"{mod}:tiny"
    result = train_generation(config(arch, backbone_kwargs={"width": 5}), data(), num_classes=K)
    model = result.model
    assert model.arch == arch and model.feature_dim == 5  # F found by the dry forward, not declared
    assert model.projection.in_features == 5 and model.embedding_dim == K - 1
    assert result.meta["config"]["backbone_kwargs"] == {"width": 5}
    exported = export_onnx(model, tmp_path / "g.onnx")
    assert exported.min_cosine >= 0.9999 and exported.max_abs_diff < 1e-3
    assert exported.metadata["architecture"] == arch
    assert '"backbone_kwargs": {"width": 5}' in exported.metadata["arch_kwargs"]
    assert exported.metadata["input_shape"] == "32,32,3"  # channels and size from the data
    save_checkpoint(model, tmp_path / "g.pt")
    again, _ = load_checkpoint(tmp_path / "g.pt")
    x = torch.from_numpy(data()[0][:4])
    assert torch.equal(again.embed(x), model.eval().embed(x))


def test_malformed_spec_and_missing_module_are_one_line(tmp_path, monkeypatch) -> None:
    with pytest.raises(InvalidRequest, match="package.module:function"):
        architecture_kind("not a spec:")
    with pytest.raises(BackboneUnavailable) as missing:
        build_model("ubk_nowhere.nets:tiny", K)
    assert "'ubk_nowhere'" in str(missing.value) and "\n" not in str(missing.value)
    # a module that exists but imports one that does not: the missing one is named
    mod = user_module(tmp_path, monkeypatch, "ubk_needs_dep", "import ubk_absent_dependency\n" + TINY)
    with pytest.raises(BackboneUnavailable, match="'ubk_absent_dependency'"):
        build_model(f"{mod}:tiny", K)
    mod = user_module(tmp_path, monkeypatch, "ubk_no_function")
    with pytest.raises(ModelError, match="has no function 'nope'"):
        build_model(f"{mod}:nope", K)


def test_backbone_returning_a_feature_map_is_refused(tmp_path, monkeypatch) -> None:
    source = "from torch import nn\n\ndef maps(in_channels, image_size):\n    return nn.Conv2d(in_channels, 4, 3)\n"
    mod = user_module(tmp_path, monkeypatch, "ubk_maps", source)
    with pytest.raises(ModelError, match=r"returned \[2, 4, 26, 26\].*\[N, F\]"):
        build_model(f"{mod}:maps", K)


def test_checkpoint_of_a_missing_backbone_names_the_module(tmp_path, monkeypatch) -> None:
    mod = user_module(tmp_path, monkeypatch, "ubk_gone")
    save_checkpoint(build_model(f"{mod}:tiny", K, 3, 32), tmp_path / "g.pt")
    (tmp_path / f"{mod}.py").unlink()
    monkeypatch.delitem(__import__("sys").modules, mod)
    with pytest.raises(BackboneUnavailable) as err:
        load_checkpoint(tmp_path / "g.pt")
    assert str(err.value).startswith(f"{tmp_path / 'g.pt'}: its backbone") and f"'{mod}'" in str(err.value)


def test_weights_with_a_prefix_load_into_backbone_or_encoder(tmp_path, monkeypatch) -> None:
    mod = user_module(tmp_path, monkeypatch, "ubk_prefix")
    arch = f"{mod}:tiny"
    torch.manual_seed(1)
    source = build_model(arch, K, 3, 32)
    # a bigger model's save: its backbone under "backbone.", a head we do not want
    bigger = {f"backbone.{k}": v for k, v in source.backbone.state_dict().items()} | {"head.weight": torch.ones(3, 8)}
    torch.save(bigger, tmp_path / "bigger.pt")
    model = build_model(arch, K, 3, 32)
    assert load_init_weights(model, tmp_path / "bigger.pt", "backbone.") == "backbone"
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v)
    # a classification model's save: its head dropped, every other key kept as it is
    torch.save(source.backbone.state_dict() | {"fc.weight": torch.ones(3, 8)}, tmp_path / "classifier.pt")
    with pytest.raises(WeightsError, match=r"1 unexpected \(fc.weight\)"):
        load_init_weights(build_model(arch, K, 3, 32), tmp_path / "classifier.pt")
    assert load_init_weights(build_model(arch, K, 3, 32), tmp_path / "classifier.pt", "-fc.") == "backbone"
    # a DistributedDataParallel save of a whole encoder
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "ddp.pt")
    model = build_model(arch, K, 3, 32)
    assert load_init_weights(model, tmp_path / "ddp.pt", "module.") == "encoder"
    assert torch.equal(model.projection.weight, source.projection.weight)


def test_wrong_keys_are_listed_with_counts(tmp_path, monkeypatch) -> None:
    mod = user_module(tmp_path, monkeypatch, "ubk_wrong_keys")
    model = build_model(f"{mod}:tiny", K, 3, 32)
    torch.save({f"module.{k}": v for k, v in model.backbone.state_dict().items()}, tmp_path / "w.pt")
    with pytest.raises(WeightsError) as err:
        load_init_weights(build_model(f"{mod}:tiny", K, 3, 32), tmp_path / "w.pt")  # prefix not stripped
    message = str(err.value)
    assert "\n" not in message
    assert "7 missing (bn.bias, bn.num_batches_tracked, bn.running_mean, bn.running_var, bn.weight, … 2 more)" in message
    assert "7 unexpected (module.bn.bias" in message
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "shape.pt")
    with pytest.raises(WeightsError, match=r"1 of another shape \(conv.weight\)"):
        load_init_weights(build_model(f"{mod}:tiny", K, 3, 32), tmp_path / "shape.pt")


class Payload:
    """An arbitrary object: unpickling one runs code, so a weights file holding it is refused."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what an attacker's file does: call something on load
        return (Path.touch, (self.marker,))


def test_pickle_payload_is_refused_without_running(tmp_path) -> None:
    marker = tmp_path / "ran"
    torch.save({"conv.weight": torch.zeros(1), "x": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="pickled Python objects") as err:
        load_init_weights(build_model("small_cnn", K), tmp_path / "evil.pt")
    assert "\n" not in str(err.value) and not marker.exists()


def test_safetensors_without_its_package_is_refused(tmp_path) -> None:
    try:
        import safetensors  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("safetensors is installed here: the refusal cannot happen")
    (tmp_path / "w.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(WeightsError, match="needs the 'safetensors' package"):
        load_init_weights(build_model("small_cnn", K), tmp_path / "w.safetensors")


def test_frozen_backbone_state_is_bit_identical_after_training(tmp_path, monkeypatch) -> None:
    mod = user_module(tmp_path, monkeypatch, "ubk_frozen")
    arch = f"{mod}:tiny"
    torch.manual_seed(3)
    pretrained = build_model(arch, K, 3, 32).backbone
    with torch.no_grad():  # non-trivial running statistics, as a pretrained model has
        pretrained.bn.running_mean.uniform_(-1, 1)
        pretrained.bn.running_var.uniform_(0.5, 2)
        pretrained.bn.num_batches_tracked.fill_(1000)
    saved = {k: v.clone() for k, v in pretrained.state_dict().items()}
    torch.save({f"module.{k}": v for k, v in saved.items()}, tmp_path / "pre.pt")
    common = {"init_weights": str(tmp_path / "pre.pt"), "init_prefix": "module."}
    frozen = train_generation(config(arch, freeze_backbone=True, **common), data(), num_classes=K).model
    state = frozen.backbone.state_dict()
    assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    assert frozen.projection.weight.requires_grad  # the projection did train
    free = train_generation(config(arch, **common), data(), num_classes=K).model.backbone.state_dict()
    assert not torch.equal(free["bn.running_mean"], saved["bn.running_mean"])  # what freezing prevents
    assert not torch.equal(free["conv.weight"], saved["conv.weight"])


def test_backbone_learning_rate_multiplier(tmp_path, monkeypatch) -> None:
    model = build_model("small_cnn", K)
    optimizer = torch.optim.SGD(_param_groups(model, 5e-4, 0.1), lr=1.0)
    set_lr(optimizer, 0.2)
    backbone = {id(p) for p in model.backbone.parameters()}
    for group in optimizer.param_groups:
        in_backbone = {id(p) in backbone for p in group["params"]}
        assert len(in_backbone) == 1
        assert group["lr"] == pytest.approx(0.02 if in_backbone == {True} else 0.2)
    with pytest.raises(TrainingError, match="not both"):
        TrainConfig(freeze_backbone=True, backbone_lr_mult=0.5).validate()


#: A backbone whose custom op has no ONNX translation: traceable, but not exportable.
CUSTOM_OP = TINY + """

@torch.library.custom_op("ubk_test::wobble", mutates_args=())
def wobble(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@wobble.register_fake
def _(x):
    return torch.empty_like(x)


class Wobbly(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.inner = Tiny(in_channels, 4)

    def forward(self, x):
        return wobble(self.inner(x))


def wobbly(in_channels, image_size):
    return nn.Sequential(Wobbly(in_channels))
"""


def test_non_exportable_backbone_names_the_op_and_module(tmp_path, monkeypatch, capfd) -> None:
    mod = user_module(tmp_path, monkeypatch, "ubk_wobbly", CUSTOM_OP)
    model = build_model(f"{mod}:wobbly", K, 3, 32)
    with pytest.raises(ExportError) as err:
        export_onnx(model, tmp_path / "w.onnx")
    message = str(err.value)
    assert "\n" not in message
    assert f"op ubk_test.wobble in backbone.0 ({mod}.Wobbly) has no ONNX translation" in message
    assert not (tmp_path / "w.onnx").exists()
    assert capfd.readouterr().out == ""  # the legacy exporter's graph dump stays off stdout


def test_entry_point_names_a_backbone(tmp_path, monkeypatch) -> None:
    mod = user_module(tmp_path, monkeypatch, "ubk_entry")
    dist = tmp_path / "ubk_entry-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ubk-entry\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[upgrader.backbones]\nubk_tiny = {mod}:tiny\n")
    assert architecture_kind("ubk_tiny") == "entry-point"
    model = build_model("ubk_tiny", K, 3, 32, backbone_kwargs={"width": 3})
    assert model.arch == "ubk_tiny" and model.feature_dim == 3


def test_training_entry_point_finds_the_backbone_or_names_its_module(tmp_path, monkeypatch) -> None:
    """``python -m upgrader.training`` (what every torchrun rank runs) imports the spec again."""
    import json
    import os
    import subprocess
    import sys

    mod = user_module(tmp_path, monkeypatch, "ubk_ranks")
    images, labels = data(n=12)
    np.savez(tmp_path / "new.npz", images=images, labels=labels)
    spec = {"train": {"arch": f"{mod}:tiny", "backbone_kwargs": {"width": 4}, "steps": 2, "batch_size": 4,
                      "augment": False, "device": "cpu", "calibration": None},
            "data": str(tmp_path / "new.npz"), "num_classes": K, "output": str(tmp_path / "out.pt")}
    (tmp_path / "cfg.json").write_text(json.dumps(spec))

    def run(pythonpath: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | ({"PYTHONPATH": pythonpath} if pythonpath else {})
        return subprocess.run([sys.executable, "-m", "upgrader.training", "--config", str(tmp_path / "cfg.json")],
                              capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).parents[2])

    missing = run(None)
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"error: backbone '{mod}:tiny' needs module '{mod}', which is not installed here; install the package that "
        "provides it in this environment, or put its folder on PYTHONPATH"]
    done = run(str(tmp_path))
    assert done.returncode == 0, done.stderr
    model, _ = load_checkpoint(tmp_path / "out.pt")
    assert model.arch == f"{mod}:tiny" and model.feature_dim == 4
