"""Bring your own backbone through the CLI (issue 17): a user's module, written here into tmp_path, trains
an initial generation on an RGB image folder at 64 px, is registered with its spec and arguments,
verified, promoted and served; a replacement starts from pretrained backbone weights saved with a
``module.`` prefix and, frozen, keeps them bit for bit; a fresh process re-exports it when the module
is on PYTHONPATH and says in one line which module to install when it is not. A malformed spec is a
usage error (exit 2), a module that is not installed a failure (exit 1), both before any work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from upgrader.cli import app
from upgrader.serving import QueryService, ServingConfig
from upgrader.services.workspace import open_workspace

MODULE = "ubk_cli_nets"
ARCH = f"{MODULE}:tiny"
BACKBONE = '''
import torch
from torch import nn


def tiny(in_channels, image_size, width=8):
    """Two strided convs with batch norm, pooled: features [N, width]."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
'''
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 230), (230, 220, 40)]
PER_CLASS, SIZE = 16, 64


def cli(*args: str, home: Path) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, [*args, "--home", str(home)], catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def fresh_cli(*args: str, home: Path, pythonpath: Path | None) -> subprocess.CompletedProcess[str]:
    """The CLI in a new process: the backbone module must be found again by its spec alone."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, "-c", "from upgrader.cli import main; main()", *args, "--home", str(home)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=home.parent)


@pytest.fixture
def photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An RGB image folder at 64 px (a colour per class, noise on top) and the backbone module on sys.path."""
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / f"{MODULE}.py").write_text(BACKBONE)
    monkeypatch.syspath_prepend(str(tmp_path / "nets"))
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for c, colour in enumerate(COLOURS):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / f"class{c}" / f"{i}.png")
    return root


def test_user_backbone_end_to_end(photos: Path, tmp_path: Path) -> None:
    home = tmp_path / "ws"
    nets = tmp_path / "nets"
    code, out, err = cli("init", "--dataset", str(photos), "--num-classes", "8", "--probe-queries", "2",
                         "--probe-gallery", "2", home=home)
    assert code == 0, (out, err)
    short = ("--steps", "4", "--batch-size", "8")

    # malformed spec: a usage error; a package not installed: a failure; neither leaves anything behind
    code, _, err = cli("train", "--classes", "0-3", "--initial", "--arch", "nets.py", *short, home=home)
    assert code == 2 and "package.module:function" in err
    code, _, err = cli("train", "--classes", "0-3", "--initial", "--arch", "ubk_not_installed.nets:tiny", *short, home=home)
    assert code == 1 and "'ubk_not_installed'" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("train", "--classes", "0-3", "--initial", "--arch", ARCH, "--arch-kwargs", "[6]", *short, home=home)
    assert code == 2 and "JSON object" in err
    with open_workspace(home) as ws:
        assert ws.registry.list_generations() == [] and not any(ws.generation_dir("g1").parent.iterdir())

    code, out, err = cli("train", "--classes", "0-3", "--initial", "--arch", ARCH, "--arch-kwargs", '{"width": 6}',
                         *short, "--name", "g1", "--json", home=home)
    assert code == 0, (out, err)
    g1 = json.loads(out)["generation"]
    assert g1["architecture"] == ARCH
    assert g1["train_config"]["arch"] == ARCH and g1["train_config"]["backbone_kwargs"] == {"width": 6}
    assert g1["onnx_metadata"]["architecture"] == ARCH and g1["onnx_metadata"]["input_shape"] == "64,64,3"
    assert json.loads(g1["onnx_metadata"]["arch_kwargs"])["backbone_kwargs"] == {"width": 6}

    for step in (("verify", "g1"), ("promote", "g1", "--reason", "own backbone"), ("gallery", "add", "--classes", "0-3")):
        code, out, err = cli(*step, home=home)
        assert code == 0, (step, out, err)
    image = np.asarray(Image.open(photos / "class2" / "0.png"))[None]  # uint8 [1, 64, 64, 3]
    with QueryService(home, ServingConfig(poll_seconds=0)) as svc:
        hits = svc.search(image, k=3)
    assert hits.generation.name == "g1" and len(hits.hits[0]) == 3

    # pretrained backbone weights, saved as a DistributedDataParallel model would (keys under "module.")
    import torch

    from upgrader.training.checkpoint import load_checkpoint

    with open_workspace(home) as ws:
        g1_model, _ = load_checkpoint(ws.resolve(ws.registry.get_generation("g1").checkpoint_path))
    pretrained = {f"module.{k}": v for k, v in g1_model.backbone.state_dict().items()}
    torch.save(pretrained, tmp_path / "pretrained.pt")
    code, _, err = cli("replace", "--arch", ARCH, "--arch-kwargs", '{"width": 6}', "--classes", "0-3", *short,
                       "--init-weights", str(tmp_path / "pretrained.pt"), "--name", "g2-bad", home=home)
    assert code == 1 and "14 missing (0.bias" in err and "14 unexpected (module.0.bias" in err  # prefix not mapped
    code, out, err = cli("replace", "--arch", ARCH, "--arch-kwargs", '{"width": 6}', "--classes", "0-3", *short,
                         "--init-weights", str(tmp_path / "pretrained.pt"), "--init-prefix", "module.",
                         "--freeze-backbone", "--name", "g2", "--json", home=home)
    assert code == 0, (out, err)
    assert json.loads(out)["generation"]["train_config"]["freeze_backbone"] is True
    with open_workspace(home) as ws:
        g2_model, _ = load_checkpoint(ws.resolve(ws.registry.get_generation("g2").checkpoint_path))
    frozen = g2_model.backbone.state_dict()
    assert all(torch.equal(frozen[k.removeprefix("module.")], v) for k, v in pretrained.items())

    # a fresh process finds the backbone by its spec, or names the module to install
    missing = fresh_cli("export", "g2", home=home, pythonpath=None)
    assert missing.returncode == 1, missing.stderr
    assert f"backbone '{ARCH}' needs module '{MODULE}'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    done = fresh_cli("export", "g2", "--json", home=home, pythonpath=nets)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["onnx_metadata"]["architecture"] == ARCH
