"""The backbone the ``pretrained`` scenario's replacement starts from, pretrained once per seed elsewhere.

The paper's scenario is a model fine-tuned in sequence and now and then replaced by an improved
pre-trained one. For a self-contained run the "elsewhere" is the dataset's classes the lineage never
sees (:data:`upgrader.study.scenario.PRETRAIN_CLASSES`): a larger backbone is trained on them with plain
cross-entropy in a workspace of its own, through the product's training, and its checkpoint is kept
under ``<out>/pretrained``. The replacement then loads only the checkpoint's backbone
(``--init-weights FILE --init-prefix backbone.``, :mod:`upgrader.training.weights`), exactly as a user
brings a backbone pretrained on other data.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from upgrader.core.vocabulary import arch_label
from upgrader.study.scenario import PRETRAIN_CLASSES, ScenarioConfig

PRETRAINED_DIR = "pretrained"


def pretrained_path(out: str | Path, arch: str, seed: int) -> Path:
    """Where the pretrained checkpoint of ``arch`` for ``seed`` is kept."""
    return Path(out) / PRETRAINED_DIR / f"{arch_label(arch)}-classes{'-'.join(map(str, PRETRAIN_CLASSES))}-s{seed}.pt"


def pretrain_backbone(out: str | Path, dataset: str, arch: str, config: ScenarioConfig, *, num_classes: int,
                      log: Callable[[str], None] = lambda _: None) -> Path:
    """Train ``arch`` on :data:`PRETRAIN_CLASSES` once (cached per seed) and return its checkpoint.

    It trains as long as a replacement of ``config`` does, on as many images per class, with ``ce``
    (no anchor, no lineage): weights pretrained on other classes, nothing more.
    """
    from upgrader.data.items import load_items
    from upgrader.services.training_plan import TrainRequest
    from upgrader.services.workspace_init import init_workspace
    from upgrader.training.pipeline import train_and_register

    path = pretrained_path(out, arch, config.seed)
    if path.is_file():
        return path
    names = load_items(dataset, "test").classes
    classes = tuple(names[c] for c in PRETRAIN_CLASSES)
    log(f"pretraining {arch} on {', '.join(classes)} (seed {config.seed}) for the pretrained scenario")
    tmp = Path(tempfile.mkdtemp(prefix="upgrader-pretrain-"))
    try:
        with init_workspace(tmp / "ws", dataset=dataset, num_classes=num_classes, query_per_class=10,
                            gallery_per_class=10, seed=config.seed) as ws:
            done = train_and_register(ws, TrainRequest(
                kind="initial", classes=classes, arch=arch, method="ce", epochs=config.replacement_epochs,
                arch_kwargs=dict(config.replacement_arch_kwargs) if arch == config.replacement_arch else {},
                batch_size=config.batch_size, lr=config.lr, per_class=config.train_per_class,
                seed=config.seed + 1000, device=config.device, name=f"pretrain-{arch_label(arch)}",
            ))
            assert done.generation.checkpoint_path
            checkpoint = ws.resolve(done.generation.checkpoint_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            shutil.copyfile(checkpoint, partial)
            partial.replace(path)  # a killed study never leaves half a checkpoint to reuse
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


__all__ = ["PRETRAINED_DIR", "pretrain_backbone", "pretrained_path"]
