"""Serving benchmark: requests/s and latency of ``POST /search`` under concurrent load, across a promotion.

It builds its own temporary workspace (no training: untrained small CNNs exported to ONNX with
different seeds, registered like any artifact), fills the gallery with Fashion-MNIST items embedded by
generation 1, starts the server as a subprocess (``python -m upgrader.server``) on a free loopback
port, and runs ``--clients`` client threads for ``--seconds``. Halfway through, production is moved
to generation 2 through the Python API (forced: the gate rightly refuses random models); the server
picks it up by polling. Reported: requests/s, p50/p99 latency (overall, before and after the switch),
failures (must be 0), the switch lag (promotion -> first answer from the new generation) and how many
answers each generation gave.

    .venv/bin/python bench/serve_bench.py                        # 16 clients, 20 s, 2000 gallery items
    .venv/bin/python bench/serve_bench.py --clients 4 --seconds 8 --out /tmp/s.json

Clients and server share the machine, so on a small box the figures are a floor. Writes JSON
(default bench/results/serve_bench.json). Not a test. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sample:
    """One request as the client saw it."""

    started: float  # monotonic seconds
    latency_s: float
    status: int | None  # None: the request raised (refused, reset, timeout)
    generation: str | None
    error: str | None


def build_workspace(home: Path, gallery_items: int, seed: int) -> dict[str, Any]:
    """Workspace with generations g1 (production, wrote the gallery) and g2 (candidate)."""
    import torch

    from upgrader.data.items import load_items
    from upgrader.training.export import export_onnx
    from upgrader.services.gallery import add_images
    from upgrader.services.registration import import_artifact
    from upgrader.training.models import build_model
    from upgrader.services.workspace_init import init_workspace
    from upgrader.services.promotion import promote

    t0 = time.perf_counter()
    ws = init_workspace(home, num_classes=16, query_per_class=5, gallery_per_class=5, seed=seed)
    try:
        for i, name in enumerate(("g1", "g2")):
            torch.manual_seed(seed + i + 1)
            path = home.parent / f"{name}.onnx"
            export_onnx(build_model("small_cnn", 16).eval(), path, metadata={"generation_name": name})
            import_artifact(ws, path, name=name, kind="initial" if i == 0 else "replacement")
        promote(ws, "g1", force=True, reason="serve_bench: first generation")
        data = load_items("fashion-mnist", "test")
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(data), size=min(gallery_items, len(data)), replace=False))
        part = data.take(idx)
        add_images(ws, part.images, [f"test-{i}" for i in idx], labels=part.class_names())
        queries = data.images[rng.choice(len(data), size=64, replace=False)]
    finally:
        ws.close()
    return {"queries": queries, "build_s": time.perf_counter() - t0}


def png_b64(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not healthy after {timeout_s}s")


def percentiles(lat: list[float]) -> dict[str, float | None]:
    if not lat:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None}
    ms = np.array(lat) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    from upgrader.services.promotion import promote
    from upgrader.services.workspace import open_workspace

    tmp = Path(tempfile.mkdtemp(prefix="serve_bench."))
    proc: subprocess.Popen[bytes] | None = None
    try:
        home = tmp / "ws"
        built = build_workspace(home, args.gallery, args.seed)
        print(f"workspace ready in {built['build_s']:.1f}s ({args.gallery} gallery items by g1)", flush=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(tmp / "server.log", "wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "upgrader.server", "--home", str(home), "--host", "127.0.0.1", "--port", str(port),
             "--poll-seconds", str(args.poll_seconds), "--threads", str(args.server_threads), "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
        )
        wait_healthy(url, proc, 120)
        bodies = [{"images": [png_b64(q)], "k": args.k} for q in built["queries"]]

        stop = threading.Event()
        hard_stop = time.monotonic() + args.seconds + 30  # bound even if the promotion stalls
        samples: list[list[Sample]] = [[] for _ in range(args.clients)]

        def client(i: int) -> None:
            with httpx.Client(base_url=url, timeout=30.0) as c:
                j = i
                while not stop.is_set() and time.monotonic() < hard_stop:
                    body = bodies[j % len(bodies)]
                    j += args.clients
                    t = time.monotonic()
                    try:
                        r = c.post("/search", json=body)
                        dt = time.monotonic() - t
                        ok = r.status_code == 200
                        samples[i].append(Sample(t, dt, r.status_code, r.json()["generation"]["name"] if ok else None,
                                                 None if ok else r.text[:200]))
                    except Exception as exc:  # noqa: BLE001 - counted as a failure
                        samples[i].append(Sample(t, time.monotonic() - t, None, None, repr(exc)[:200]))

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(args.seconds / 2)
        with open_workspace(home) as ws:
            t_promote = time.monotonic()
            promote(ws, "g2", force=True, reason="serve_bench: promotion under load")
        print(f"promoted g2 at t={t_promote - t_start:.1f}s", flush=True)
        time.sleep(max(0.0, t_start + args.seconds - time.monotonic()))
        stop.set()
        for t in threads:
            t.join(timeout=60)
        t_end = time.monotonic()
        health = httpx.get(f"{url}/generation", timeout=5).json()
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    flat = sorted((s for per in samples for s in per), key=lambda s: s.started)
    ok = [s for s in flat if s.status == 200]
    failures = [s for s in flat if s.status != 200]
    first_new = next((s for s in ok if s.generation == "g2"), None)
    switch_lag = (first_new.started + first_new.latency_s - t_promote) if first_new else None
    before = [s.latency_s for s in ok if s.started < t_promote]
    after = [s.latency_s for s in ok if first_new is not None and s.started >= first_new.started]
    last_old = max((s.started for s in ok if s.generation == "g1"), default=None)
    elapsed = t_end - t_start
    return {
        "benchmark": "serve: POST /search under concurrent load across a promotion",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_end": os.getloadavg(), "note": "clients and server share the machine"},
        "args": {k: v for k, v in vars(args).items()},
        "requests": len(flat),
        "failures": len(failures),
        "failure_examples": [s.error for s in failures[:3]],
        "seconds": elapsed,
        "requests_per_s": len(ok) / elapsed,
        "latency": percentiles([s.latency_s for s in ok]),
        "latency_before_promotion": percentiles(before),
        "latency_after_switch": percentiles(after),
        "promotion_at_s": t_promote - t_start,
        "switch_lag_s": switch_lag,
        "answers_by_generation": {g: sum(1 for s in ok if s.generation == g) for g in ("g1", "g2")},
        "old_generation_answers_started_after_first_new_answer": (
            sum(1 for s in ok if s.generation == "g1" and first_new is not None and s.started > first_new.started)),
        "last_old_answer_started_after_promotion_s": (last_old - t_promote) if last_old is not None else None,
        "serving_at_end": health.get("serving", {}).get("name"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16, help="concurrent client threads")
    p.add_argument("--seconds", type=float, default=20.0, help="load duration; the promotion happens halfway")
    p.add_argument("--gallery", type=int, default=2000, help="gallery items (Fashion-MNIST test images)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--poll-seconds", type=float, default=1.0, help="server's alias poll period")
    p.add_argument("--server-threads", type=int, default=max(1, os.cpu_count() or 1), help="server worker threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "serve_bench.json"))
    args = p.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0:
        p.error("--clients >= 1 and --seconds > 0")
    report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    lat = report["latency"]
    print(f"{report['requests']} requests in {report['seconds']:.1f}s: {report['requests_per_s']:.1f} req/s, "
          f"p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, failures {report['failures']}, "
          f"switch lag {report['switch_lag_s']:.2f}s, answers {report['answers_by_generation']}")
    print(f"wrote {out}")
    return 0 if report["failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
