"""A real workspace, trained once per session on a tiny CPU configuration, copied per test.

g1: initial small CNN on classes 0-3 (one epoch), promoted, with a gallery of classes 0-3 and a
rehearsal memory of all its training images. g2: a fine-tune of g1 on classes 4-5 with the
compatibility loss (three epochs: it also keeps training the old classes), not yet verified. g3-er: an `er` replacement trained from scratch with no anchor (incompatible by design). Tests copy the folder so each one can promote, tamper or roll back on its own.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from upgrader.cli import app

runner = CliRunner()


class CliResult:
    """Exit code and both output streams of one CLI run."""

    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr

    def json(self):
        return json.loads(self.stdout)


def run_cli(*args: str, home: Path | None = None) -> CliResult:
    """Run the CLI in-process; ``home`` is passed as --home."""
    argv = [*args, *(["--home", str(home)] if home is not None else [])]
    res = runner.invoke(app, argv, catch_exceptions=False)
    return CliResult(res.exit_code, res.stdout, res.stderr)


@pytest.fixture(scope="session")
def seeded_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("seeded") / "ws"
    steps = [
        ("init", "--num-classes", "16", "--probe-queries", "20", "--probe-gallery", "20"),
        ("train", "--classes", "0-3", "--initial", "--epochs", "1", "--per-class", "1000", "--memory-per-class", "1000",
         "--name", "g1", "--json"),
        ("promote", "g1", "--reason", "first generation", "--json"),
        ("gallery", "add", "--classes", "0-3", "--per-class", "25", "--json"),
        ("train", "--classes", "4,5", "--finetune", "--epochs", "3", "--per-class", "1000", "--name", "g2", "--json"),
        ("replace", "--arch", "small_cnn", "--method", "er", "--no-anchor", "--classes", "0-6", "--per-class", "100",
         "--epochs", "1", "--name", "g3-er", "--json"),
    ]
    for step in steps:
        res = run_cli(*step, home=home)
        assert res.exit_code == 0, (step, res.stdout, res.stderr)
    return home


@pytest.fixture
def seeded(seeded_master: Path, tmp_path: Path) -> Path:
    """A private copy of the seeded workspace."""
    dest = tmp_path / "ws"
    shutil.copytree(seeded_master, dest)
    return dest


@pytest.fixture
def invoke():
    """The CLI runner: ``invoke("promote", "g2", home=path)`` -> CliResult."""
    return run_cli
