"""Several OS processes on one registry: concurrent writers, and a writer killed mid-batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from registry import Registry

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKERS = HERE / "registry_workers.py"


def _spawn(*args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(WORKERS), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, procs: list[subprocess.Popen[str]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"worker exited early ({p.returncode}): {p.stderr.read() if p.stderr else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {path.name}")
        time.sleep(0.01)


def test_two_ingesters_and_an_alias_mover_in_parallel(ready: Registry, make_gen, passing_report, tmp_path: Path) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    r1, r2 = passing_report(g1), passing_report(g2)
    ready.move_alias(g1.id, actor="setup", reason="start", gate_report_id=r1.id)
    sync = tmp_path / "sync"
    sync.mkdir()
    batches, size, moves = 10, 150, 20
    procs = [
        _spawn("ingest", ready.url, sync, "w0", g1.id, batches, size),
        _spawn("ingest", ready.url, sync, "w1", g2.id, batches, size),
        # Starts on g2 so that every move really changes the alias.
        _spawn("mover", ready.url, sync, "mover", moves, f"{g2.id}:{r2.id}", f"{g1.id}:{r1.id}"),
    ]
    for name in ("w0", "w1", "mover"):
        _wait_for(sync / f"{name}.ready", procs)
    (sync / "go").touch()
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err  # no error reached any caller
    gallery = ready.load_gallery()
    expected = {f"{w}-{b}-{i}" for w in ("w0", "w1") for b in range(batches) for i in range(size)}
    assert len(gallery.external_ids) == len(expected)  # nothing duplicated ...
    assert set(gallery.external_ids) == expected  # ... and nothing lost
    assert ready.gallery_counts() == {g1.id: batches * size, g2.id: batches * size}
    history = ready.alias_history()
    assert len(history) == 1 + moves  # every move recorded
    for before, after in zip(history, history[1:]):
        assert after.from_gen == before.to_gen  # an unbroken chain: no lost update
    assert [m.reason for m in history[1:]] == [f"move {m}" for m in range(moves)]
    assert ready.get_alias() == history[-1].to_gen
    statuses = {g.id: g.status for g in ready.list_generations()}
    assert statuses[history[-1].to_gen] == "production"
    assert list(statuses.values()).count("production") == 1


def test_writer_killed_mid_batch_leaves_no_trace(ready: Registry, make_gen, tmp_path: Path) -> None:
    g = make_gen("g1")
    sync = tmp_path / "sync"
    sync.mkdir()
    (sync / "go").touch()
    proc = _spawn("crash", ready.url, sync, g.id, 5_000)
    _wait_for(sync / "inserted", [proc], timeout=120)  # rows written inside the open transaction
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (sync / "finished").exists()
    # The committed small batch is there, the killed batch wholly absent, and the database works.
    with Registry.open(ready.url) as reg:
        assert reg.gallery_counts() == {g.id: 100}
        assert set(reg.load_gallery().external_ids) == {f"small-{i}" for i in range(100)}
        reg.add_gallery_items(g.id, ["after-crash"], np.ones((1, 15), np.float32) / np.sqrt(15))
        assert reg.gallery_counts() == {g.id: 101}
    if ready.url.startswith("sqlite"):
        import sqlite3

        con = sqlite3.connect(ready.url.removeprefix("sqlite:///"))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
