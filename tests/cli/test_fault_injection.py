"""SIGKILL at the worst moments of ``register``, ``train``, ``export`` and ``gallery add``.

Each command runs in its own process with ``UPGRADER_FAULT_AT`` naming a fault point
(:mod:`upgrader.core.faults`): the process kills itself there, so no ``finally``, ``atexit`` or
rollback handler runs — as when the machine loses power. Afterwards every read command must still
work on the workspace, and running the same command again (without the fault) must complete.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import run_cli
from upgrader.core.faults import FAULT_ENV

#: The read commands a user would try first on a workspace after a crash.
READS: tuple[tuple[str, ...], ...] = (
    ("status", "--json"),
    ("generations", "--json"),
    ("history", "--json"),
    ("matrix", "--json"),
    ("gallery", "stats", "--json"),
    ("search", "--item", "0", "--json"),
)


def run_killed(home: Path, point: str, *args: str) -> None:
    """Run ``upgrader ARGS --home HOME`` in a child that SIGKILLs itself at ``point``."""
    env = {**os.environ, FAULT_ENV: point}
    proc = subprocess.run(
        [sys.executable, "-c", "from upgrader.cli import main; main()", *args, "--home", str(home)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, (
        f"the command did not reach fault point {point!r} (exit {proc.returncode}): {proc.stderr[-2000:]}"
    )


def assert_reads_work(home: Path) -> None:
    """Every read command exits 0 and prints its JSON."""
    for args in READS:
        res = run_cli(*args, home=home)
        assert res.exit_code == 0, (args, res.stdout[-500:], res.stderr[-1000:])
        res.json()


def generation_names(home: Path) -> list[str]:
    return [row["generation"]["name"] for row in run_cli("generations", "--json", home=home).json()]


@pytest.mark.parametrize("point", ["register:copied", "register:embedded"])
def test_a_register_killed_midway_leaves_a_readable_workspace_and_can_be_rerun(
    seeded: Path, tmp_path: Path, point: str
) -> None:
    artifact = tmp_path / "elsewhere.onnx"
    shutil.copyfile(seeded / "artifacts" / "g2" / "model.onnx", artifact)
    before = generation_names(seeded)

    run_killed(seeded, point, "register", str(artifact), "--name", "imported", "--kind", "finetune")
    assert_reads_work(seeded)
    assert generation_names(seeded) == before  # all or nothing: no half-registered generation

    again = run_cli("register", str(artifact), "--name", "imported", "--kind", "finetune", "--json", home=seeded)
    assert again.exit_code == 0, again.stderr
    assert generation_names(seeded) == [*before, "imported"]
    assert run_cli("verify", "imported", "--json", home=seeded).exit_code in (0, 3)  # a verdict, not a crash


def test_a_train_killed_after_export_leaves_a_readable_workspace_and_can_be_rerun(seeded: Path) -> None:
    before = generation_names(seeded)
    args = ("train", "--classes", "6", "--finetune", "--epochs", "1", "--per-class", "50", "--name", "g4")

    run_killed(seeded, "train:exported", *args)
    assert_reads_work(seeded)
    assert generation_names(seeded) == before

    again = run_cli(*args, "--json", home=seeded)
    assert again.exit_code == 0, again.stderr
    assert generation_names(seeded) == [*before, "g4"]


def test_an_export_killed_after_writing_the_file_can_be_rerun(seeded: Path) -> None:
    run_killed(seeded, "export:written", "export", "g2")
    assert_reads_work(seeded)
    again = run_cli("export", "g2", "--json", home=seeded)
    assert again.exit_code == 0, again.stderr
    assert run_cli("verify", "g2", "--json", home=seeded).exit_code in (0, 3)


def test_a_gallery_add_killed_between_batches_resumes(seeded: Path) -> None:
    before = run_cli("gallery", "stats", "--json", home=seeded).json()
    args = ("gallery", "add", "--classes", "0-3", "--per-class", "40", "--batch-size", "16", "--id-prefix", "resumed-")

    run_killed(seeded, "gallery:batch", *args)
    assert_reads_work(seeded)
    partial = run_cli("gallery", "stats", "--json", home=seeded).json()
    assert partial["total"] > before["total"]  # the batches committed before the kill stay

    again = run_cli(*args, "--json", home=seeded)
    assert again.exit_code == 0, again.stderr
    after = run_cli("gallery", "stats", "--json", home=seeded).json()
    assert after["total"] - before["total"] == 4 * 40  # every item once: none lost, none twice
    assert again.json()["skipped"] == partial["total"] - before["total"]
