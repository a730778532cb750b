"""A refusal of a backbone option names the flag that sets it (issue 17): the training plan speaks of
the architecture, its arguments, the initial weights, their key mapping and the backbone's learning
rate; the CLI adds --arch, --arch-kwargs, --init-weights, --init-prefix or --backbone-lr-mult. Each
request here is refused before any training (no torch work), with the exit code of its kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from upgrader.cli import app
from upgrader.data.readers import save_npz


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty workspace over four classes of twelve 28x28 grey images."""
    root = tmp_path_factory.mktemp("flags")
    data = root / "tiny.npz"
    rng = np.random.default_rng(0)
    save_npz(data, rng.integers(0, 256, size=(48, 28, 28), dtype=np.uint8), np.repeat(np.arange(4), 12),
             ["a", "b", "c", "d"])
    made = CliRunner().invoke(app, ["init", "--home", str(root / "ws"), "--dataset", str(data), "-k", "8",
                                    "--probe-queries", "2", "--probe-gallery", "2"])
    assert made.exit_code == 0, made.stderr
    return root / "ws"


@pytest.mark.parametrize("args, flag, code", [
    (["--arch", "9bad:spec"], "--arch", 2),  # a malformed spec: a usage error
    (["--arch", "nosuchpkg_h17.mod:fn"], "--arch", 1),  # well formed, not installed here: a failure
    (["--arch-kwargs", '{"width": NaN}'], "--arch-kwargs", 2),  # not storable as JSON
    (["--init-prefix", "module."], "--init-prefix", 2),  # a mapping without weights to apply it to
    (["--backbone-lr-mult", "0"], "--backbone-lr-mult", 2),
    (["--freeze-backbone", "--backbone-lr-mult", "0.1"], "--backbone-lr-mult", 2),
])
def test_a_refused_backbone_option_names_its_flag(home: Path, args: list[str], flag: str, code: int) -> None:
    res = CliRunner().invoke(app, ["train", "--home", str(home), "--classes", "0-1", *args])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == code, res.stderr
    assert len(lines) == 1 and lines[0].endswith(f"({flag})"), res.stderr
    assert not list(home.glob("artifacts/*")), "refused before any training"

