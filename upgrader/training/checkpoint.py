"""Checkpoints: an encoder's weights with its architecture and plain metadata, loadable with
``weights_only=True`` so a checkpoint from elsewhere cannot run code on load."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from upgrader.core.errors import CheckpointError, ModelError
from upgrader.core.files import replacing
from upgrader.core.jsonable import jsonable
from upgrader.core.vocabulary import BackboneUnavailable
from upgrader.training.models import Encoder, rebuild_model

CHECKPOINT_FORMAT = "upgrader-checkpoint/1"

CheckpointPath = str | os.PathLike[str]


def save_checkpoint(model: Encoder, path: CheckpointPath, meta: dict[str, Any] | None = None) -> Path:
    """Write {format, state_dict, arch, kwargs, meta} atomically (temp file + os.replace).

    ``meta`` must hold plain values (str, int, float, bool, None, lists, dicts) so the checkpoint
    loads with ``weights_only=True``.

    Args:
        model: the encoder (a DistributedDataParallel wrapper is unwrapped).
        path: where to write; parent folders are created.
        meta: plain metadata stored next to the weights.

    Returns:
        The path written.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # type: ignore[assignment]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "arch": model.arch,
        "kwargs": model.arch_kwargs,
        "meta": jsonable(meta or {}),
    }
    with replacing(p) as tmp:
        torch.save(payload, tmp)
    return p


def load_checkpoint(path: CheckpointPath, map_location: str = "cpu") -> tuple[Encoder, dict[str, Any]]:
    """Load a checkpoint with ``weights_only=True`` and rebuild its encoder (eval mode).

    Args:
        path: the checkpoint file.
        map_location: device the tensors load onto.

    Returns:
        (encoder in eval mode, metadata).

    Raises:
        CheckpointError: missing, corrupt or foreign file; a user backbone whose module is not
            installed here (``BackboneUnavailable``, naming the module).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"{p}: not a readable checkpoint ({exc.__class__.__name__}); re-train or re-copy it") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p}: not an upgrader checkpoint (format {CHECKPOINT_FORMAT} expected)")
    try:
        model = rebuild_model(payload["arch"], dict(payload["kwargs"]))
        model.load_state_dict(payload["state_dict"])
    except BackboneUnavailable as exc:  # not damage: the backbone's code is missing in this environment
        raise BackboneUnavailable.at(p, payload["arch"], exc.module) from None
    except (ModelError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{p}: cannot rebuild the model ({exc}); the checkpoint is damaged") from None
    return model.eval(), dict(payload.get("meta") or {})
