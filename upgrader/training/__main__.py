"""``python -m upgrader.training --config cfg.json``: train one generation from files, also under
``torchrun`` (``torchrun --nproc_per_node N -m upgrader.training --config cfg.json``).

The JSON config: {"train": {TrainConfig fields}, "data": "new.npz", "memory": "mem.npz" | null,
"num_classes": K, "output": "ckpt.pt", "anchor_checkpoint": path | null,
"init_checkpoint": path | null, "meta": {...}}. The npz files hold "images" (uint8 NHWC) and
"labels" (vertex indices). Rank 0 writes the checkpoint and prints a JSON summary.

A user backbone (``"arch": "package.module:function"``) is imported again by every rank, so its module
must be importable there (installed, or its folder on PYTHONPATH); where it is not, or the request
cannot run, each rank says why in one line on stderr and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from upgrader.core.errors import TrainingError, UpgraderError
from upgrader.training import distributed
from upgrader.training.checkpoint import save_checkpoint
from upgrader.training.config import TrainConfig
from upgrader.training.loop import ArrayPair, train_generation


def _load_pair(path: str | None) -> ArrayPair | None:
    if not path:
        return None
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z.files or "labels" not in z.files:
            raise TrainingError(f"{path}: needs 'images' and 'labels' (vertex indices) arrays")
        return np.array(z["images"]), np.array(z["labels"]).astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    """Train as the JSON config says, save the checkpoint on rank 0, leave the process group.

    Args:
        argv: the command line (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 1 when the request cannot run (said in one line on stderr).
    """
    try:
        return _run(argv)
    except UpgraderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upgrader.training", description=__doc__)
    parser.add_argument("--config", required=True, help="JSON training config")
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.config).read_text())
    config = TrainConfig(**spec.get("train", {}))
    if config.threads is None:
        config.threads = distributed.cpu_threads_per_rank()
    result = train_generation(
        config,
        _load_pair(spec["data"]),  # type: ignore[arg-type]
        memory=_load_pair(spec.get("memory")),
        anchor_checkpoint=spec.get("anchor_checkpoint"),
        init_checkpoint=spec.get("init_checkpoint"),
        num_classes=int(spec["num_classes"]),
    )
    if distributed.rank() == 0:
        save_checkpoint(result.model, spec["output"], {**result.meta, **spec.get("meta", {})})
        print(json.dumps({"output": spec["output"], "seconds": result.seconds,
                          "images_per_second": result.images_per_second, "history": result.history}))
    distributed.teardown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
