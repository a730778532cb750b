"""Registry benchmark: gallery ingest rate, gallery load time, and alias-move time vs gallery size.

Side by side in one run:
  * ingest: embeddings/s adding ``--items`` gallery items (dim ``--dim``) in batches of ``--batch``;
  * load: seconds to load ``--load-items`` embeddings into a float32 search matrix (the gallery of
    the ingest workspace is grown to that size first);
  * alias move: median seconds per ``production`` move on a ``--small`` item gallery and on the
    ``--load-items`` gallery; the ratio large/small should be ~1 (a promotion never touches gallery
    rows).

Prints a summary and writes JSON (default bench/results/registry_bench.json). Never run as a test.

    .venv/bin/python bench/registry_bench.py                       # the full run (100k / 1M)
    .venv/bin/python bench/registry_bench.py --items 5000 --load-items 20000 --moves 10   # quick
    .venv/bin/python bench/registry_bench.py --backend postgres     # against UPGRADER_TEST_PG_URL
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry import NewGeneration, Registry  # noqa: E402


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _machine() -> dict[str, object]:
    import sqlite3

    import sqlalchemy

    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "numpy": np.__version__,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


@contextmanager
def _workspaces(backend: str, pg_url: str | None, workdir: Path | None) -> Iterator[tuple[str, str]]:
    """Two empty workspace locations (small, large) on the chosen backend, removed afterwards."""
    if backend == "sqlite":
        root = Path(tempfile.mkdtemp(prefix="registry-bench-", dir=workdir))
        try:
            yield str(root / "small"), str(root / "large")
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    if not pg_url:
        raise SystemExit("--backend postgres needs --pg-url or UPGRADER_TEST_PG_URL")
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    names = [f"bench_{uuid.uuid4().hex[:10]}_{kind}" for kind in ("small", "large")]
    urls = []
    with admin.connect() as conn:
        for name in names:
            conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
            url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={name}"})
            urls.append(url.render_as_string(hide_password=False))
    try:
        yield urls[0], urls[1]
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.dispose()


def _setup(location: str, dim: int, dtype: str) -> tuple[Registry, list[tuple[int, int]]]:
    """A workspace with two generations, each with a passing gate report."""
    reg = Registry.open(location, create=True)
    reg.set_interface(dim + 1, embedding_dtype=dtype)
    targets = []
    for name in ("g1", "g2"):
        gen = reg.add_generation(
            NewGeneration(
                name=name,
                kind="initial",
                method="hoc",
                architecture="bench",
                onnx_path=f"/models/{name}.onnx",
                onnx_sha256=f"{name}".ljust(64, "0"),
                num_classes=dim + 1,
            )
        )
        report = reg.add_gate_report(gen.id, gen.onnx_sha256, True, "promote", {"bench": True})
        targets.append((gen.id, report.id))
    return reg, targets


def _ingest(
    reg: Registry, gen_id: int, start: int, count: int, batch: int, dim: int, seed: int
) -> tuple[float, float]:
    """Add ``count`` items (ids ``item-{start}``...) in batches.

    Returns:
        (wall seconds, CPU seconds of this process) spent inside the registry calls.
    """
    rng = np.random.default_rng(seed)
    spent = 0.0
    cpu = 0.0
    done = 0
    while done < count:
        n = min(batch, count - done)
        x = rng.standard_normal((n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        ids = [f"item-{start + done + i}" for i in range(n)]
        labels = [f"class-{(start + done + i) % 100}" for i in range(n)]
        t0, c0 = time.perf_counter(), time.process_time()
        reg.add_gallery_items(gen_id, ids, x, labels=labels)
        spent += time.perf_counter() - t0
        cpu += time.process_time() - c0
        done += n
    return spent, cpu


def _moves(reg: Registry, targets: list[tuple[int, int]], moves: int) -> list[float]:
    times = []
    for m in range(moves):
        gen, report = targets[m % 2]
        t0 = time.perf_counter()
        reg.move_alias(gen, actor="bench", reason=f"move {m}", gate_report_id=report)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark and write its JSON.

    Args:
        argv: command-line arguments (``None``: ``sys.argv``).

    Returns:
        The results written.
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="gallery items for the ingest rate")
    parser.add_argument("--load-items", type=int, default=1_000_000, help="gallery size for the load and large-move tests")
    parser.add_argument("--small", type=int, default=1_000, help="gallery size of the small alias-move workspace")
    parser.add_argument("--batch", type=int, default=10_000, help="items per add_gallery_items call")
    parser.add_argument("--dim", type=int, default=127, help="embedding dimension (K-1)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="gallery storage dtype")
    parser.add_argument("--moves", type=int, default=200, help="alias moves timed per gallery size")
    parser.add_argument("--loads", type=int, default=2, help="gallery loads timed (best and all reported)")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-url", default=os.environ.get("UPGRADER_TEST_PG_URL"), help="PostgreSQL URL (postgres backend)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the SQLite workspaces go (default: temp)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "registry_bench.json"
    )
    args = parser.parse_args(argv)
    if args.load_items < args.items:
        parser.error("--load-items must be at least --items")

    results: dict[str, object] = {
        "benchmark": "registry",
        "machine": _machine(),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "pg_url"},
    }
    with _workspaces(args.backend, args.pg_url, args.workdir) as (small_loc, large_loc):
        # 1. Ingest rate on a fresh workspace.
        large, large_targets = _setup(large_loc, args.dim, args.dtype)
        gen_a = large_targets[0][0]
        secs, cpu = _ingest(large, gen_a, 0, args.items, args.batch, args.dim, seed=1)
        results["ingest"] = {
            "items": args.items,
            "batch": args.batch,
            "seconds": round(secs, 3),
            "cpu_seconds": round(cpu, 3),
            "embeddings_per_s": round(args.items / secs, 1),
        }
        print(f"ingest  {args.items:>9,} items: {secs:7.2f} s  {args.items / secs:>10,.0f} embeddings/s (cpu {cpu:.2f} s)")

        # 2. Grow the same gallery to --load-items (second generation, a mixed gallery), then load it.
        rest = args.load_items - args.items
        grow = _ingest(large, large_targets[1][0], args.items, rest, args.batch, args.dim, seed=2)[0] if rest else 0.0
        load_times = []
        load_cpu = []
        shape: tuple[int, ...] = ()
        for _ in range(args.loads):
            t0, c0 = time.perf_counter(), time.process_time()
            gm = large.load_gallery()
            load_times.append(time.perf_counter() - t0)
            load_cpu.append(time.process_time() - c0)
            shape = gm.matrix.shape
            assert gm.matrix.flags.c_contiguous and gm.matrix.dtype == np.float32
            del gm
        results["load"] = {
            "items": args.load_items,
            "matrix_shape": list(shape),
            "seconds_first": round(load_times[0], 3),
            "seconds_best": round(min(load_times), 3),
            "seconds_all": [round(t, 3) for t in load_times],
            "cpu_seconds_all": [round(t, 3) for t in load_cpu],
            "embeddings_per_s_best": round(args.load_items / min(load_times), 1),
            "grow_seconds": round(grow, 3),
            "grow_embeddings_per_s": round(rest / grow, 1) if rest else None,
        }
        print(
            f"load    {args.load_items:>9,} items: {min(load_times):7.2f} s best "
            f"({', '.join(f'{t:.2f}' for t in load_times)}; cpu {', '.join(f'{t:.2f}' for t in load_cpu)})"
        )

        # 3. Alias moves, small gallery vs large gallery.
        small, small_targets = _setup(small_loc, args.dim, args.dtype)
        _ingest(small, small_targets[0][0], 0, args.small, args.batch, args.dim, seed=3)
        small_t: list[float] = []
        large_t: list[float] = []
        # Alternate small and large two moves at a time, so machine noise hits both alike.
        for r in range((args.moves + 1) // 2):
            small_t += _moves(small, small_targets, 2)
            large_t += _moves(large, large_targets, 2)
        med_s, med_l = statistics.median(small_t), statistics.median(large_t)
        results["alias_move"] = {
            "moves_each": len(small_t),
            "small_gallery_items": args.small,
            "large_gallery_items": args.load_items,
            "small_median_ms": round(med_s * 1e3, 3),
            "large_median_ms": round(med_l * 1e3, 3),
            "small_mean_ms": round(statistics.fmean(small_t) * 1e3, 3),
            "large_mean_ms": round(statistics.fmean(large_t) * 1e3, 3),
            "ratio_large_over_small": round(med_l / med_s, 3),
            "history_entries_large": len(large.alias_history()),
        }
        print(
            f"move    median {med_s * 1e3:.2f} ms on {args.small:,} items vs {med_l * 1e3:.2f} ms on "
            f"{args.load_items:,} items (ratio {med_l / med_s:.2f})"
        )
        small.close()
        large.close()

    results["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
