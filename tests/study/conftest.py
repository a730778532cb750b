"""One tiny study, run once per session through the CLI: hoc and er, one seed, tiny sizes.

Sizes (train 60 per class, 1 epoch, probe 5 per class, gallery 10 per class, K=16) keep it near two
minutes on 2 CPU cores; the numbers are poor on purpose-small data, the plumbing is what is tested.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from upgrader.cli import app

TINY = ["--methods", "hoc,er", "--seeds", "1", "--epochs", "1", "--replacement-epochs", "1", "--train-per-class", "60",
        "--probe-per-class", "5", "--gallery-per-class", "10", "--num-classes", "16", "--device", "cpu"]


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """(out folder, results.json content, stdout of `upgrader study --json`)."""
    out = tmp_path_factory.mktemp("study") / "out"
    res = CliRunner().invoke(app, ["study", "--scenario", "short", *TINY, "--out", str(out), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, (res.stdout, res.stderr)
    return out, json.loads((out / "results.json").read_text()), res.stdout
