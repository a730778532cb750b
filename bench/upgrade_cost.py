"""What skipping the re-index saves: a compatible upgrade vs a full re-index, side by side, per gallery size.

For each gallery size N (default 10k, 100k, 1M items of the demo's image size, 28x28x1 uint8):

- compatible upgrade: in a fresh workspace whose production generation g1 already wrote N gallery
  items (random but valid, L2-normalised embeddings inserted through ``Registry.add_gallery_items``; the
  upgrade never touches them), time ``register`` of the new generation g2 (``import_artifact``: checks,
  copy, probe-set embedding) + ``verify`` (the gate) + ``promote``. Training is excluded: g1 and g2
  are trained once, up front, in a scratch workspace (g2 = a hoc fine-tune of g1 on two new classes,
  with the study's recipe and a seed whose g2 the gate passes: a g2 that only ties g1 on g1's classes
  is refused by the strict criterion; the JSON records the verdict).
- full re-index: ``Embedder.embed`` of N images with g2 (what a backfill must do). Above
  ``--max-measured`` items a sample of ``--sample`` images (>= 50k) is timed and extrapolated
  linearly; the JSON says so.

Wall time and CPU seconds (``time.process_time`` and ``getrusage``, both covering ONNX Runtime's
threads, which run inside this process) for both; the ratio re-index / upgrade is the headline.
Writes bench/results/upgrade_cost.json after every size. Never run as a test.

    .venv/bin/python bench/upgrade_cost.py --sizes 10000,100000,1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from upgrader.core.errors import GateRefused
from upgrader.runtime.embedder import Embedder
from upgrader.services.promotion import promote, verify
from upgrader.services.registration import import_artifact
from upgrader.services.workspace_init import init_workspace


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def cpu_now() -> float:
    """CPU seconds of this process (user + system, every thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    """Run ``fn`` once: its result and wall seconds, process_time and getrusage CPU seconds."""
    w0, p0, r0 = time.perf_counter(), time.process_time(), cpu_now()
    out = fn()
    return out, {
        "seconds": time.perf_counter() - w0,
        "cpu_seconds": time.process_time() - p0,
        "cpu_seconds_rusage": cpu_now() - r0,
    }


def train_generations(root: Path, args: argparse.Namespace) -> tuple[Path, Path, dict[str, Any]]:
    """Train g1 (initial, classes 0-3) and g2 (hoc fine-tune on 4-5) once; return their ONNX files (not timed)."""
    from upgrader.services.training_plan import TrainRequest
    from upgrader.training.pipeline import train_and_register

    ws = init_workspace(root / "scratch", dataset=args.dataset, num_classes=args.k,
                        query_per_class=args.probe_per_class, gallery_per_class=args.probe_per_class, seed=0)
    with ws:
        common = dict(epochs=args.epochs, per_class=args.train_per_class, memory_per_class=args.memory_per_class,
                      method="hoc", seed=args.seed, device="cpu")
        g1 = train_and_register(ws, TrainRequest(kind="initial", classes=("0", "1", "2", "3"), name="g1", **common)).generation
        promote(ws, g1.id, reason="bench", actor="bench")
        g2 = train_and_register(ws, TrainRequest(kind="finetune", classes=("4", "5"), name="g2", **common)).generation
        info = {"g1": {"name": g1.name, "architecture": g1.architecture}, "g2": {"name": g2.name, "architecture": g2.architecture,
                                                                                "kind": g2.kind, "method": g2.method}}
        return ws.resolve(g1.onnx_path), ws.resolve(g2.onnx_path), info


def random_embeddings(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """``n`` random L2-normalised float32 rows: valid gallery embeddings of any generation."""
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def upgrade_side(root: Path, n: int, g1_onnx: Path, g2_onnx: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A workspace with an N-item gallery written by g1; time register + verify + promote of g2."""
    home = root / f"ws-{n}"
    ws = init_workspace(home, dataset=args.dataset, num_classes=args.k,
                        query_per_class=args.probe_per_class, gallery_per_class=args.probe_per_class, seed=0)
    with ws:
        reg = ws.registry
        g1 = import_artifact(ws, g1_onnx, name="g1", kind="initial", method="hoc")
        promote(ws, g1.id, reason="bench: first production", actor="bench")
        dim = reg.interface().embedding_dim
        rng = np.random.default_rng(n)
        t0 = time.perf_counter()
        for start in range(0, n, args.batch):
            stop = min(n, start + args.batch)
            reg.add_gallery_items(g1.id, [f"item-{i}" for i in range(start, stop)], random_embeddings(rng, stop - start, dim))
        fill_seconds = time.perf_counter() - t0
        assert sum(reg.gallery_counts().values()) == n

        state: dict[str, Any] = {}

        def upgrade() -> None:
            g2 = import_artifact(ws, g2_onnx, name="g2", kind="finetune", method="hoc", parent="g1")  # register
            v = verify(ws, g2.id)  # the gate against every live generation (g1)
            state["gate_passed"] = v.verdict.passed
            state["gate_reasons"] = list(v.verdict.to_dict().get("reasons", []))
            try:
                p = promote(ws, g2.id, reason="bench: compatible upgrade", actor="bench")
            except GateRefused:
                # Still an upgrade's cost; recorded, so a reader sees the gate said no.
                p = promote(ws, g2.id, reason="bench: forced past a refusal", actor="bench", force=True)
            state["forced"] = p.forced
            state["reused_report"] = p.reused_report

        _, cost = measure(upgrade)
        untouched = reg.gallery_counts()
        production = reg.get_alias()
        result = {
            **cost,
            **state,
            "gallery_fill_seconds_untimed": fill_seconds,
            "gallery_items_by_generation_after": {str(k): v for k, v in untouched.items()},
            "production_after": reg.get_generation(production).name if production is not None else None,
            "probe_items_embedded": sum(reg.probe_counts().values()),
        }
    shutil.rmtree(home, ignore_errors=True)
    return result


def reindex_side(n: int, g2: Embedder, pool: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Time Embedder.embed over N images (or a sample, extrapolated linearly)."""
    measured = n if n <= args.max_measured else args.sample
    idx = np.arange(measured) % len(pool)
    images = pool[idx]  # uint8 [measured, 28, 28, 1]
    g2.embed(images[: args.embed_batch], batch_size=args.embed_batch)  # warm-up, not timed
    _, cost = measure(lambda: g2.embed(images, batch_size=args.embed_batch))
    scale = n / measured
    return {
        "measured_items": measured,
        "extrapolated": measured != n,
        "extrapolation": f"linear from {measured} timed images x {scale:g}" if measured != n else None,
        "measured_seconds": cost["seconds"],
        "measured_cpu_seconds": cost["cpu_seconds"],
        "seconds": cost["seconds"] * scale,
        "cpu_seconds": cost["cpu_seconds"] * scale,
        "cpu_seconds_rusage": cost["cpu_seconds_rusage"] * scale,
        "images_per_second": measured / cost["seconds"],
    }


def main() -> None:
    """Parse flags, train the two generations once, then measure both sides per size."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000", help="gallery sizes")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset spec (images of the demo's size by default)")
    p.add_argument("--k", type=int, default=64, help="interface K (embedding dim K-1)")
    p.add_argument("--probe-per-class", type=int, default=100, help="probe queries / gallery items per class (the demo's)")
    # The study's recipe (5 epochs, 600 images per class, 300 kept per old class): g2 is then a
    # compatible fine-tune the gate passes, so the bench times the upgrade a user would ship.
    p.add_argument("--epochs", type=int, default=5, help="training epochs of g1/g2 (not timed)")
    p.add_argument("--train-per-class", type=int, default=600, help="training images per class (not timed)")
    p.add_argument("--memory-per-class", type=int, default=300, help="rehearsal images per old class in g2 (not timed)")
    p.add_argument("--seed", type=int, default=3, help="training seed of g1/g2 (not timed; the JSON records the gate's verdict)")
    p.add_argument("--batch", type=int, default=20_000, help="gallery items per add_gallery_items call (fill, not timed)")
    p.add_argument("--embed-batch", type=int, default=256, help="images per ONNX Runtime call when re-indexing")
    p.add_argument("--max-measured", type=int, default=100_000, help="largest size whose re-index is timed in full")
    p.add_argument("--sample", type=int, default=50_000, help="images timed (then extrapolated) above --max-measured; >= 50000")
    p.add_argument("--workdir", default=None, help="scratch folder (default a temporary one, removed afterwards)")
    p.add_argument("--out", default="bench/results/upgrade_cost.json", help="JSON output path")
    args = p.parse_args()
    if args.sample < 50_000:
        p.error("--sample must be at least 50000")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="upgrade-cost-"))
    root.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "bench": "upgrade_cost",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "load_average_at_start": list(os.getloadavg()),
                    "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "ORT_NUM_THREADS") if os.environ.get(k)}},
        "params": {k: v for k, v in vars(args).items()},
        "method": {
            "upgrade": "register (import_artifact: checks, copy, probe-set embedding) + verify (gate) + promote of g2, "
                       "with an N-item gallery written by g1 in place; training excluded; gallery items untouched",
            "reindex": "Embedder.embed of N 28x28x1 uint8 images with g2 (ONNX Runtime, default threads)",
            "cpu": "time.process_time (all threads of this process, ONNX Runtime's included); getrusage alongside",
        },
        "sizes": [],
    }
    try:
        log("training g1 and g2 once (not timed)")
        g1_onnx, g2_onnx, report["generations"] = train_generations(root, args)
        from upgrader.data.items import load_items

        pool = load_items(args.dataset, "train").images
        g2 = Embedder(g2_onnx)
        report["image_shape"] = list(g2.image_shape)
        for n in sizes:
            log(f"N={n}: compatible upgrade (filling the gallery first)")
            up = upgrade_side(root, n, g1_onnx, g2_onnx, args)
            log(f"  upgrade {up['seconds']:.2f}s wall, {up['cpu_seconds']:.2f} CPU-s (gate {'passed' if up['gate_passed'] else 'REFUSED'})")
            log(f"N={n}: full re-index")
            rx = reindex_side(n, g2, pool, args)
            log(f"  re-index {rx['seconds']:.1f}s wall, {rx['cpu_seconds']:.1f} CPU-s{' (extrapolated)' if rx['extrapolated'] else ''}")
            report["sizes"].append({
                "gallery_items": n,
                "upgrade": up,
                "reindex": rx,
                "ratio_wall": rx["seconds"] / up["seconds"],
                "ratio_cpu": rx["cpu_seconds"] / up["cpu_seconds"],
            })
            big = max(report["sizes"], key=lambda s: s["gallery_items"])
            report["headline"] = {
                "gallery_items": big["gallery_items"],
                "reindex_over_upgrade_wall": big["ratio_wall"],
                "reindex_over_upgrade_cpu": big["ratio_cpu"],
                "target_100x_at_1M": (big["ratio_wall"] >= 100 and big["ratio_cpu"] >= 100) if big["gallery_items"] >= 1_000_000 else None,
            }
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
