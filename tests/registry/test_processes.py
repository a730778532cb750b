"""Several OS processes on one registry: concurrent writers, a writer killed mid-batch, and a follower of
the gallery's change sequence while two writers add, re-embed and delete."""

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


def _replay(state: dict[int, tuple[str, int, bytes]], changes) -> None:  # noqa: ANN001
    """Apply one ``gallery_changes`` answer to a follower's copy of the gallery (row id -> row)."""
    assert not set(changes.deleted_row_ids.tolist()) & set(changes.upserts.row_ids.tolist())
    for row_id in changes.deleted_row_ids.tolist():
        state.pop(row_id, None)
    up = changes.upserts
    for i, row_id in enumerate(up.row_ids.tolist()):
        state[row_id] = (up.external_ids[i], int(up.generation_ids[i]), up.matrix[i].tobytes())


def test_two_gallery_writers_take_disjoint_ordered_versions_and_a_follower_misses_nothing(
    ready: Registry, make_gen, tmp_path: Path, raw_sql
) -> None:
    ga, gb = make_gen("ga"), make_gen("gb")
    sync = tmp_path / "sync"
    sync.mkdir()
    rounds, size = 6, 24
    procs = [_spawn("versioned", ready.url, sync, w, ga.id, gb.id, rounds, size) for w in ("w0", "w1")]
    for name in ("w0", "w1"):
        _wait_for(sync / f"{name}.ready", procs)
    # The follower polls while both write: each answer is applied on top of the last.
    state: dict[int, tuple[str, int, bytes]] = {}
    cursor, polls = 0, 0
    (sync / "go").touch()
    while any(p.poll() is None for p in procs) or polls == 0:
        changes = ready.gallery_changes(cursor)
        assert changes.version >= cursor
        _replay(state, changes)
        cursor, polls = changes.version, polls + 1
        time.sleep(0.002)  # leave the writers some CPU
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    _replay(state, ready.gallery_changes(cursor))
    final = ready.load_gallery()
    assert state == {
        int(r): (e, int(g), final.matrix[i].tobytes())
        for i, (r, e, g) in enumerate(zip(final.row_ids, final.external_ids, final.generation_ids))
    }

    # Every write took one contiguous run of versions, no two runs overlap, and together they cover
    # 1..clock: an add's run from its untouched rows (i % 4 == 3), a re-embed's from its rows (the
    # even i), a delete's from its tombstones.
    versions = {str(e): int(v) for e, v in raw_sql.run("SELECT external_id, version FROM gallery_items")}
    buried = {str(e): int(v) for v, e in raw_sql.run("SELECT version, external_id FROM gallery_tombstones")}
    runs: list[tuple[int, int]] = []
    for w in ("w0", "w1"):
        for r in range(rounds):
            key = [f"{w}-{r}-{i}" for i in range(size)]
            start = {versions[key[i]] - i for i in range(3, size, 4)}
            assert len(start) == 1  # the add's versions are consecutive, in batch order
            runs.append((start.pop(), size))
            even = [versions[k] for k in key[0::2]]
            assert even == list(range(even[0], even[0] + len(even)))
            runs.append((even[0], len(even)))
            gone = sorted(buried[k] for k in key[1::4])
            assert gone == list(range(gone[0], gone[0] + len(gone)))
            runs.append((gone[0], len(gone)))
            assert runs[-3][0] < runs[-2][0] < runs[-1][0]  # one writer's writes, in its order
    runs.sort()
    assert runs[0][0] == 1
    for (a, n), (b, _) in zip(runs, runs[1:]):
        assert a + n == b  # no overlap, no gap
    assert runs[-1][0] + runs[-1][1] - 1 == ready.gallery_version()
    assert polls > 1
