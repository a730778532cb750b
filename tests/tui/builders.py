"""Workspaces for the dashboard tests, built from real services without training.

Generations are untrained small CNNs (fixed seeds) exported to ONNX once and imported, so building is
quick and the same on every run: the snapshot tests can compare pixels.

- ``snapshot``: g1-initial (production first), g2-finetune (production now, forced), g3-replacement
  (rejected by the gate); a gallery written by g1 and g2; two moves in the alias history.
- ``fresh``: g1-initial in production with an empty gallery and g2-finetune, a candidate whose
  self-test beats g1's, so the gate passes it without any override (there is no live generation to
  be incompatible with, and it is an improvement).
- ``hostile``: the snapshot workspace with stored text that looks like markup (:func:`make_hostile`).

Run as a script to build one for a manual session: ``python tests/tui/builders.py snapshot|fresh|hostile DIR``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

ACTOR = "alice"
SEEDS = {"g1-initial": 1, "g2-finetune": 2, "g3-replacement": 3}


def export_artifacts(folder: Path) -> Path:
    """Export one untrained small CNN per generation name into ``folder`` (K=16, 28x28 grey)."""
    import torch

    from upgrader.training.export import export_onnx
    from upgrader.training.models import build_model

    folder.mkdir(parents=True, exist_ok=True)
    for name, seed in SEEDS.items():
        torch.manual_seed(seed)
        model = build_model("small_cnn", num_classes=16, in_channels=1, image_size=28)
        export_onnx(model, folder / f"{name}.onnx")
    return folder


def _import(ws, artifacts: Path, name: str, kind: str, method: str, parent: str | None = None):
    from upgrader.services.registration import import_artifact

    # A relative source path, so the recorded "imported_from" does not name a temporary folder.
    with contextlib.chdir(artifacts):
        return import_artifact(ws, Path(f"{name}.onnx"), name=name, kind=kind, method=method, parent=parent)


def build_snapshot_workspace(home: Path, artifacts: Path) -> Path:
    """Three generations, two productions in the history, a mixed gallery, one refusal."""
    from upgrader.services.gallery import add_dataset
    from upgrader.services.workspace_init import init_workspace
    from upgrader.services.promotion import promote, verify

    with init_workspace(home, num_classes=16, query_per_class=5, gallery_per_class=5) as ws:
        _import(ws, artifacts, "g1-initial", "initial", "hoc")
        promote(ws, "g1-initial", force=True, reason="first generation", actor=ACTOR)
        add_dataset(ws, "fashion-mnist", classes="0-3", per_class=5)
        _import(ws, artifacts, "g2-finetune", "finetune", "hoc", parent="g1-initial")
        promote(ws, "g2-finetune", force=True, reason="adds classes 4-5", actor=ACTOR)
        add_dataset(ws, "fashion-mnist", classes="4-5", per_class=5)
        _import(ws, artifacts, "g3-replacement", "replacement", "er", parent="g2-finetune")
        verify(ws, "g3-replacement")
    return home


def build_fresh_workspace(home: Path, artifacts: Path) -> Path:
    """g1 in production (forced, first generation), empty gallery, g2 a candidate the gate passes."""
    from upgrader.services.workspace_init import init_workspace
    from upgrader.services.promotion import promote

    with init_workspace(home, num_classes=16, query_per_class=5, gallery_per_class=5) as ws:
        _import(ws, artifacts, "g1-initial", "initial", "hoc")
        promote(ws, "g1-initial", force=True, reason="first generation", actor=ACTOR)
        _import(ws, artifacts, "g2-finetune", "finetune", "hoc", parent="g1-initial")
    return home


#: Text a user may type that Rich markup would misread: closing tags, an opening tag, a trailing backslash.
HOSTILE = {
    "g1-initial": "[/]first\\",  # renamed in the database: new names with brackets are refused
    "g3-replacement": "[/]evil",
    "reason": "[/]why",
    "actor": "[b]mallory",
    "item": "[/]x",
}


def make_hostile(home: Path) -> Path:
    """Turn a copy of the snapshot workspace into one whose stored text is all markup look-alikes.

    g1 and g3 get names with brackets (written straight into the database, the way an older
    registry stored them), production moves to g1 and back to g2 with a bracketed reason and actor,
    and the gallery gets an item whose external id is bracketed.
    """
    import sqlite3

    import numpy as np

    from upgrader.services.gallery import add_images
    from upgrader.services.promotion import promote
    from upgrader.services.workspace import open_workspace

    with open_workspace(home) as ws:
        promote(ws, "g1-initial", force=True, reason=HOSTILE["reason"], actor=HOSTILE["actor"])
        promote(ws, "g2-finetune", force=True, reason="back to g2 after [/]why", actor=ACTOR)
        add_images(ws, np.zeros((1, 28, 28, 1), dtype=np.uint8) + 7, [HOSTILE["item"]])
    with contextlib.closing(sqlite3.connect(home / "registry.db")) as db, db:
        for old in ("g1-initial", "g3-replacement"):
            db.execute("UPDATE generations SET name = ? WHERE name = ?", (HOSTILE[old], old))
    return home


if __name__ == "__main__":
    which, target = sys.argv[1], Path(sys.argv[2])
    arts = export_artifacts(target.parent / f"{target.name}-artifacts")
    if which == "fresh":
        build_fresh_workspace(target, arts)
    else:
        build_snapshot_workspace(target, arts)
        if which == "hostile":
            make_hostile(target)
    print(target)
