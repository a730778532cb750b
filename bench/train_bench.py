"""Training throughput per architecture, side by side in one run.

CPU: fp32 eager images/s for each architecture. CUDA (when available): bf16 autocast +
channels_last against fp32 eager, and their ratio. Prints a table and writes JSON to
bench/results/train_bench.json. Never run as a test.

    .venv/bin/python bench/train_bench.py --steps 8 --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from upgrader.training.config import TrainConfig, TrainProgress
from upgrader.training.loop import train_generation

# architecture -> (H, W, C) it is benchmarked at
SHAPES = {"small_cnn": (28, 28, 1), "resnet_narrow": (28, 28, 1), "resnet18": (32, 32, 3)}


def measure(arch: str, device: str, amp: bool, channels_last: bool, steps: int, batch: int, warmup: int) -> dict:
    """Images/s of ``train_generation`` over ``steps`` timed steps after ``warmup`` steps."""
    h, w, c = SHAPES[arch]
    n = batch * (steps + warmup)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64)
    stamps: list[float] = []

    def tick(_: TrainProgress) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    config = TrainConfig(arch=arch, epochs=1, batch_size=batch, device=device, amp=amp, channels_last=channels_last)
    train_generation(config, (images, labels), num_classes=16, progress=tick)
    timed = stamps[warmup - 1 :]  # first `warmup` steps include allocation / autotuning
    seconds = timed[-1] - timed[0]
    return {
        "arch": arch, "device": device, "amp_bf16": amp, "channels_last": channels_last,
        "batch_size": batch, "image_shape": [h, w, c], "timed_steps": len(timed) - 1,
        "images_per_second": batch * (len(timed) - 1) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="small_cnn,resnet_narrow,resnet18", help="comma-separated architectures")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=128, help="batch for small_cnn / resnet_narrow")
    parser.add_argument("--resnet18-cpu-batch", type=int, default=16, help="resnet18 batch on CPU (~20 img/s)")
    parser.add_argument("--resnet18-cpu-steps", type=int, default=3, help="resnet18 timed steps on CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cuda-batch-size", type=int, default=256, help="batch on CUDA")
    parser.add_argument("--cuda-steps", type=int, default=30, help="timed steps on CUDA")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU measurements")
    parser.add_argument("--out", default="bench/results/train_bench.json", help="JSON output path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for arch in args.archs.split(","):
        if not args.no_cpu:
            big = arch == "resnet18"
            rows.append(measure(arch, "cpu", False, False, args.resnet18_cpu_steps if big else args.steps,
                                args.resnet18_cpu_batch if big else args.batch_size, args.warmup))
            print(json.dumps(rows[-1]), flush=True)
        if torch.cuda.is_available():
            fast = measure(arch, "cuda", True, True, args.cuda_steps, args.cuda_batch_size, 5)
            eager = measure(arch, "cuda", False, False, args.cuda_steps, args.cuda_batch_size, 5)
            fast["speedup_vs_fp32_eager"] = fast["images_per_second"] / eager["images_per_second"]
            rows += [eager, fast]
            print(json.dumps(eager), flush=True)
            print(json.dumps(fast), flush=True)
    report = {
        "bench": "train",
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "results": rows,
    }
    print(f"{'arch':<15}{'device':<7}{'bf16+CL':<9}{'batch':>6}{'img/s':>10}")
    for r in rows:
        print(f"{r['arch']:<15}{r['device']:<7}{str(r['amp_bf16']):<9}{r['batch_size']:>6}{r['images_per_second']:>10.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
