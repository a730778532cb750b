"""The compatibility study as a benchmark: the same code as `upgrader study` (upgrader.study.runner.run_study).

Runs the sequential scenario for each method and seed in its own workspace through the real registry,
ONNX export, embedder and gate, and writes results.json, report.md and PNG figures to --out
(default bench/results/compat_study). Never run as a test.

    .venv/bin/python bench/compat_study.py --scenario short --methods hoc,ce,er,bct --seeds 3
"""

from __future__ import annotations

import argparse
import json
import sys

from upgrader.core.vocabulary import METHODS
from upgrader.study.runner import StudyConfig, parse_methods, parse_scenarios, run_study


def main() -> None:
    """Parse flags, run the study, print the Markdown report's path and the targets."""
    defaults = StudyConfig(out="bench/results/compat_study")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=defaults.out, help="output folder")
    p.add_argument("--dataset", default=defaults.dataset, help="dataset spec the product reads")
    p.add_argument("--scenario", default="short", help="short, long or short,long")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    p.add_argument("--seeds", type=int, default=defaults.seeds, help="seeds per method")
    p.add_argument("--device", default=defaults.device, help="auto, cpu or cuda")
    p.add_argument("--initial-epochs", type=int, default=defaults.initial_epochs, help="epochs of the first generation")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs of a fine-tune step")
    p.add_argument("--replacement-epochs", type=int, default=None, help="epochs of a replacement (default 2 x --epochs)")
    p.add_argument("--train-per-class", type=int, default=defaults.train_per_class, help="training images per new class")
    p.add_argument("--gallery-per-class", type=int, default=defaults.gallery_per_class, help="gallery items per new class")
    p.add_argument("--probe-per-class", type=int, default=defaults.probe_per_class, help="probe queries / gallery items per class")
    p.add_argument("--no-keep-workspaces", action="store_true", help="remove each run's workspace afterwards")
    args = p.parse_args()
    config = StudyConfig(
        out=args.out, dataset=args.dataset, scenarios=parse_scenarios(args.scenario), methods=parse_methods(args.methods),
        seeds=args.seeds, device=args.device, initial_epochs=args.initial_epochs, epochs=args.epochs, replacement_epochs=args.replacement_epochs,
        train_per_class=args.train_per_class, gallery_per_class=args.gallery_per_class,
        probe_per_class=args.probe_per_class, keep_workspaces=not args.no_keep_workspaces,
    )
    data = run_study(config, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({"out": args.out, "summary_targets": data["targets"], "runs_failed": data["runs_failed"]}, indent=2))


if __name__ == "__main__":
    main()
