"""Fixtures of the dashboard tests: real workspaces built once per session, copied per test."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from builders import build_fresh_workspace, build_snapshot_workspace, export_artifacts, make_hostile  # noqa: E402


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_artifacts(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="session")
def snapshot_master(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_snapshot_workspace(tmp_path_factory.mktemp("snapshot") / "ws", artifacts)


@pytest.fixture(scope="session")
def fresh_master(artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fresh_workspace(tmp_path_factory.mktemp("fresh") / "ws", artifacts)


@pytest.fixture
def snapshot_ws(snapshot_master: Path, tmp_path: Path) -> Path:
    """A private copy of the snapshot workspace (always named ``ws``: the header shows the name)."""
    return Path(shutil.copytree(snapshot_master, tmp_path / "ws"))


@pytest.fixture
def fresh_ws(fresh_master: Path, tmp_path: Path) -> Path:
    """A private copy of the fresh workspace."""
    return Path(shutil.copytree(fresh_master, tmp_path / "ws"))


@pytest.fixture(scope="session")
def hostile_master(snapshot_master: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hostile(Path(shutil.copytree(snapshot_master, tmp_path_factory.mktemp("hostile") / "ws")))


@pytest.fixture
def hostile_ws(hostile_master: Path, tmp_path: Path) -> Path:
    """A private copy of the workspace whose names, reasons, actor and item id look like markup."""
    return Path(shutil.copytree(hostile_master, tmp_path / "ws"))
