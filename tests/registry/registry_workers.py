"""Worker processes for the concurrency and crash tests (run as a script, one OS process each).

    python registry_workers.py ingest URL SYNC_DIR NAME GEN_ID BATCHES BATCH_SIZE
    python registry_workers.py mover  URL SYNC_DIR NAME MOVES GEN_A:REPORT_A GEN_B:REPORT_B
    python registry_workers.py crash  URL SYNC_DIR GEN_ID BIG_BATCH
    python registry_workers.py versioned URL SYNC_DIR NAME GEN_A GEN_B ROUNDS SIZE

Workers write SYNC_DIR/<name>.ready once imported and connected, then wait for SYNC_DIR/go so they
all start together. Any exception propagates: the process exits non-zero with a traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from registry import Registry


def _ready_and_wait(sync: Path, name: str) -> None:
    (sync / f"{name}.ready").touch()
    deadline = time.monotonic() + 60
    while not (sync / "go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never told to go")
        time.sleep(0.01)


def _rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ingest(url: str, sync: Path, name: str, gen_id: int, batches: int, size: int) -> None:
    """Add ``batches`` batches of ``size`` items with ids ``{name}-{batch}-{i}``."""
    with Registry.open(url) as reg:
        dim = reg.interface().embedding_dim
        _ready_and_wait(sync, name)
        for b in range(batches):
            ids = [f"{name}-{b}-{i}" for i in range(size)]
            assert reg.add_gallery_items(gen_id, ids, _rows(size, dim, b)) == size


def mover(url: str, sync: Path, name: str, moves: int, a: str, b: str) -> None:
    """Move production back and forth between two generations ``moves`` times."""
    targets = [tuple(int(v) for v in spec.split(":")) for spec in (a, b)]
    with Registry.open(url) as reg:
        _ready_and_wait(sync, name)
        for m in range(moves):
            gen, report = targets[m % 2]
            reg.move_alias(gen, actor=name, reason=f"move {m}", gate_report_id=report)


def crash(url: str, sync: Path, gen_id: int, big: int) -> None:
    """Commit a small batch, then start a large one and stop for good inside its transaction.

    Once the first INSERT of the large batch has executed (rows written, not committed), the worker
    says so and sleeps until the test kills it: the kill lands mid-transaction on every machine,
    however fast, instead of depending on how long the batch takes.
    """
    from sqlalchemy import event

    with Registry.open(url) as reg:
        dim = reg.interface().embedding_dim
        reg.add_gallery_items(gen_id, [f"small-{i}" for i in range(100)], _rows(100, dim, 0))
        rows = _rows(big, dim, 1)

        # Test-only hook: reaches into the registry's engine to stop right after the big INSERT runs.
        @event.listens_for(reg._uow.engine, "after_cursor_execute")
        def _inserted(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
            if statement.lstrip().upper().startswith("INSERT INTO GALLERY_ITEMS"):
                (sync / "inserted").touch()
                time.sleep(600)  # killed here; the sleep only bounds a test that forgot to kill

        reg.add_gallery_items(gen_id, [f"big-{i}" for i in range(big)], rows)
        (sync / "finished").touch()


def versioned(url: str, sync: Path, name: str, gen_a: int, gen_b: int, rounds: int, size: int) -> None:
    """Per round ``r``: add ``{name}-{r}-{i}`` (i < size) by ``gen_a``, re-embed the even ``i`` by
    ``gen_b``, delete those with ``i % 4 == 1``: three gallery write transactions per round."""
    with Registry.open(url) as reg:
        dim = reg.interface().embedding_dim
        _ready_and_wait(sync, name)
        for r in range(rounds):
            ids = [f"{name}-{r}-{i}" for i in range(size)]
            labels = [f"c{i % 3}" for i in range(size)]
            assert reg.add_gallery_items(gen_a, ids, _rows(size, dim, 2 * r), labels=labels) == size
            even = ids[0::2]
            assert reg.reembed_gallery_items(even, gen_b, _rows(len(even), dim, 2 * r + 1)) == len(even)
            assert reg.delete_gallery_items(ids[1::4]) == len(ids[1::4])


def main(argv: list[str]) -> None:
    mode, url, sync = argv[0], argv[1], Path(argv[2])
    if mode == "ingest":
        ingest(url, sync, argv[3], int(argv[4]), int(argv[5]), int(argv[6]))
    elif mode == "mover":
        mover(url, sync, argv[3], int(argv[4]), argv[5], argv[6])
    elif mode == "crash":
        crash(url, sync, int(argv[3]), int(argv[4]))
    elif mode == "versioned":
        versioned(url, sync, argv[3], int(argv[4]), int(argv[5]), int(argv[6]), int(argv[7]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
