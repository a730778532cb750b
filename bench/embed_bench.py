"""Embedding throughput and accuracy: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8
(static QDQ, per-channel, calibrated), at batch 1 and 64, side by side in one run.

Trains a model briefly on Fashion-MNIST (or loads --checkpoint), exports it, quantises it, and
reports images/s, ratios to PyTorch eager, and template top-1 on held-out probe data for each
(the top-1 change is what INT8 costs). Writes bench/results/embed_bench.json. Never run as a test.

    .venv/bin/python bench/embed_bench.py --arch small_cnn --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from upgrader.data.dataset import probe_splits, split_per_class
from upgrader.data.readers import load_dataset
from upgrader.runtime.embedder import Embedder
from int8_quantize import quantize_int8
from upgrader.training.export import export_onnx
from upgrader.training.checkpoint import load_checkpoint
from upgrader.training.config import TrainConfig
from upgrader.training.loop import train_generation


def template_top1(qf: np.ndarray, ql: np.ndarray, gf: np.ndarray, gl: np.ndarray) -> float:
    classes = np.unique(gl)
    t = np.stack([gf[gl == c].mean(0) for c in classes])
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return float((classes[(qf @ t.T).argmax(1)] == ql).mean())


def throughput(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int, seconds: float) -> float:
    """Images/s of fn on consecutive batches for about ``seconds`` (after one warm-up call)."""
    fn(images[:batch])
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        chunk = images[(i * batch) % (len(images) - batch) :][:batch]
        fn(chunk)
        done += len(chunk)
        i += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="small_cnn", help="architecture to train when no --checkpoint")
    parser.add_argument("--checkpoint", default=None, help="use this checkpoint instead of training")
    parser.add_argument("--train-per-class", type=int, default=500, help="training images per class")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs")
    parser.add_argument("--probe-per-class", type=int, default=100, help="probe query and gallery items per class")
    parser.add_argument("--calibration", type=int, default=512, help="INT8 calibration images")
    parser.add_argument("--threads", type=int, default=2, help="threads for torch and ONNX Runtime")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing window per measurement")
    parser.add_argument("--batches", default="1,64", help="batch sizes to time")
    parser.add_argument("--out", default="bench/results/embed_bench.json", help="JSON output path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ds = load_dataset("fashion-mnist", split="test")
    _, query, gallery = probe_splits(ds, args.probe_per_class, args.probe_per_class, seed=0)
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint)
    else:
        train = split_per_class(load_dataset("fashion-mnist"), args.train_per_class, seed=0)[0]
        model = train_generation(
            TrainConfig(arch=args.arch, epochs=args.epochs, threads=args.threads),
            (train.images, train.labels), num_classes=10,
        ).model
    model.eval()
    calib = split_per_class(load_dataset("fashion-mnist"), args.calibration // 10, seed=9)[0].images

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx")
        int8 = quantize_int8(fp32.path, Path(tmp) / "int8.onnx", calib)
        runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {}

        @torch.no_grad()
        def eager(x: np.ndarray) -> np.ndarray:
            return model.embed(torch.from_numpy(x)).numpy()

        runners["pytorch_eager"] = eager
        runners["onnxruntime_fp32"] = Embedder(fp32.path, threads=args.threads).embed
        runners["onnxruntime_int8"] = Embedder(int8.path, threads=args.threads).embed
        images = np.concatenate([query.images, gallery.images])
        results: dict[str, dict] = {}
        for name, fn in runners.items():
            row: dict = {"template_top1": template_top1(fn(query.images), query.labels, fn(gallery.images), gallery.labels)}
            for b in (int(s) for s in args.batches.split(",")):
                row[f"images_per_second_b{b}"] = throughput(fn, images, b, args.seconds)
            results[name] = row
            print(name, json.dumps(row), flush=True)
        sizes = {"fp32_bytes": fp32.path.stat().st_size, "int8_bytes": int8.path.stat().st_size}

    base = results["pytorch_eager"]
    for name, row in results.items():
        for key in list(row):
            if key.startswith("images_per_second_b"):
                row["speedup_" + key.rsplit("_", 1)[1]] = row[key] / base[key]
        row["top1_change_points"] = 100.0 * (row["template_top1"] - base["template_top1"])
    i8 = results["onnxruntime_int8"]
    report = {
        "bench": "embed",
        "arch": model.arch,
        "threads": args.threads,
        "probe_items": int(len(query) + len(gallery)),
        "artifact_sizes": sizes,
        "results": results,
        "targets": {
            "fp32_ge_1.2x_eager_b64": results["onnxruntime_fp32"].get("speedup_b64", 0) >= 1.2,
            "int8_ge_2x_eager_b64": i8.get("speedup_b64", 0) >= 2.0,
            "int8_top1_loss_le_1pt": i8["top1_change_points"] >= -1.0,
        },
    }
    report["int8_offered"] = report["targets"]["int8_ge_2x_eager_b64"] and report["targets"]["int8_top1_loss_le_1pt"]
    print(f"{'runtime':<18}{'top1':>7}" + "".join(f"{'img/s b' + b:>12}{'x':>6}" for b in args.batches.split(",")))
    for name, row in results.items():
        line = f"{name:<18}{row['template_top1']:>7.3f}"
        for b in args.batches.split(","):
            line += f"{row['images_per_second_b' + b]:>12.1f}{row['speedup_b' + b]:>6.2f}"
        print(line)
    print("targets:", json.dumps(report["targets"]), "int8 offered:", report["int8_offered"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
