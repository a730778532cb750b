"""Pretrained weights a run starts from: a whole encoder's or only its backbone's, told apart by keys.

A weights file is a ``torch.save`` state dict (read with ``weights_only=True``: a file that holds
pickled Python objects is refused, never run), an upgrader checkpoint (which brings its input
normalisation too), or a safetensors file when the ``safetensors`` package is installed. Its keys can
be mapped first (:func:`parse_prefix_map`: ``module.`` stripped from a DistributedDataParallel save,
``backbone.`` taken out of a bigger model, ``-fc.`` a classification head dropped), then must fit exactly: the error lists what is missing,
unexpected or of another shape, so a wrong file or a wrong mapping says so at once.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from upgrader.core.errors import ModelError
from upgrader.core.vocabulary import architecture_kind
from upgrader.training.checkpoint import CHECKPOINT_FORMAT
from upgrader.training.models import Encoder, build_model

#: How many keys of each kind an error quotes before it gives the count of the rest.
QUOTED_KEYS = 5

WeightsPath = str | Path


class WeightsError(ModelError):
    """A weights file that cannot be read, is refused, or does not fit the model."""


def parse_prefix_map(spec: str | None) -> list[tuple[str, str | None]]:
    """``OLD[=NEW],-DROP,...`` -> [(OLD, NEW), (DROP, None), ...]: ``OLD`` alone strips OLD (NEW "").

    Raises:
        WeightsError: an entry with an empty prefix.
    """
    if not spec:
        return []
    pairs: list[tuple[str, str | None]] = []
    for entry in spec.split(","):
        entry = entry.strip()
        old, _, new = entry.removeprefix("-").partition("=")
        if not old or (entry.startswith("-") and "=" in entry):
            raise WeightsError(f"key prefix mapping {spec!r}: each entry is OLD, OLD=NEW or -DROP with a prefix not "
                               "empty", subject="init_prefix")
        pairs.append((old, None if entry.startswith("-") else new))
    return pairs


def map_keys(state: Mapping[str, torch.Tensor], pairs: list[tuple[str, str | None]]) -> tuple[dict[str, torch.Tensor], int]:
    """Map keys by the first pair whose prefix they start with: renamed (NEW None: dropped). Where any
    pair renames, keys that match no pair are left out too (the prefix selects a part of a bigger model).

    Returns:
        (the mapped state, how many keys were left out).
    """
    selects = any(new is not None for _, new in pairs)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = next(((old, new) for old, new in pairs if key.startswith(old)), None)
        if match is None:
            if not selects:
                out[key] = value
        elif match[1] is not None:
            out[match[1] + key[len(match[0]):]] = value
    return out, len(state) - len(out)


def read_weights(path: WeightsPath) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The tensors of a weights file, and the upgrader checkpoint's payload when it is one.

    Raises:
        WeightsError: no such file, safetensors without its package, pickled objects, not a state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"initial weights {p}: no such file", subject="init_weights")
    if p.suffix == ".safetensors" or _looks_like_safetensors(p):
        return _read_safetensors(p), None
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"initial weights {p}: refused, the file holds pickled Python objects besides tensors (loading it could "
            "run code); save a plain state dict, torch.save(model.state_dict(), path), or a safetensors file",
            subject="init_weights") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"initial weights {p}: not a readable weights file ({type(exc).__name__}); "
                           "save it with torch.save(model.state_dict(), path)", subject="init_weights") from None
    checkpoint = payload if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT else None
    if checkpoint is not None or (isinstance(payload, dict) and isinstance(payload.get("state_dict"), Mapping)):
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not payload or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
        raise WeightsError(f"initial weights {p}: not a state dict (a mapping of names to tensors); "
                           "save it with torch.save(model.state_dict(), path)", subject="init_weights")
    return dict(payload), checkpoint


def _looks_like_safetensors(p: Path) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and a JSON object."""
    with p.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < p.stat().st_size


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(f"initial weights {p}: a safetensors file needs the 'safetensors' package, which is not "
                           "installed here; install it (pip install safetensors) or save the weights with torch.save",
                           subject="init_weights") from None
    try:
        return dict(load_file(str(p), device="cpu"))
    except Exception as exc:  # the package raises its own error types for a damaged file
        raise WeightsError(f"initial weights {p}: not a readable safetensors file ({type(exc).__name__})",
                           subject="init_weights") from None


def _quote(keys: set[str]) -> str:
    shown = sorted(keys)[:QUOTED_KEYS]
    more = f", … {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return ", ".join(shown) + more


def load_init_weights(model: Encoder, path: WeightsPath, prefix: str | None = None) -> str:
    """Load a weights file into ``model``'s backbone or into the whole encoder, whichever its keys fit.

    An upgrader checkpoint must be of ``model``'s architecture and brings its normalisation (mean and
    std) along. The classifier is never taken from a file unless both are learnable and agree: the
    simplex one is fixed by K.

    Args:
        model: a freshly built encoder.
        path: the weights file.
        prefix: key mapping ``OLD[=NEW],...`` applied first (see :func:`parse_prefix_map`).

    Returns:
        "backbone" or "encoder": what the file was loaded into.

    Raises:
        WeightsError: unreadable or refused file; keys that do not fit (listed, with counts).
    """
    state, checkpoint = read_weights(path)
    if checkpoint is not None and checkpoint.get("arch") != model.arch:
        raise WeightsError(f"initial weights {path}: an upgrader checkpoint of architecture {checkpoint.get('arch')!r}, "
                           f"not {model.arch!r}; start from a checkpoint of {model.arch!r}", subject="init_weights")
    state, left_out = map_keys(state, parse_prefix_map(prefix))
    encoder_keys = {k for k in model.state_dict() if not k.startswith("classifier.")}
    backbone_keys = set(model.backbone.state_dict())
    as_encoder = sum(k in encoder_keys for k in state)
    as_backbone = sum(k in backbone_keys for k in state)
    target = "encoder" if as_encoder > as_backbone or (as_encoder == as_backbone and any(
        k.startswith("backbone.") for k in state)) else "backbone"
    module = model if target == "encoder" else model.backbone
    wanted = encoder_keys if target == "encoder" else backbone_keys
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in wanted}
    if target == "encoder" and model.classifier_kind == "learnable":
        usable.update({k: v for k, v in state.items()
                       if k.startswith("classifier.") and k in own and own[k].shape == v.shape})
    ignored = {k for k in state if k.startswith("classifier.")} if target == "encoder" else set()
    missing, unexpected = wanted - set(state), set(state) - wanted - ignored
    reshaped = {k for k, v in usable.items() if own[k].shape != v.shape}
    if missing or unexpected or reshaped:
        parts = [f"{len(s)} {what} ({_quote(s)})" for s, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")) if s]
        dropped = f"; {left_out} keys matched no prefix and were left out" if left_out else ""
        raise WeightsError(f"initial weights {path} do not fit the {target} of {model.arch}: {', '.join(parts)}"
                           f"{dropped}; map the keys' leading part to the model's (e.g. strip 'module.') or use weights "
                           "of this architecture", subject="init_weights")
    module.load_state_dict(usable, strict=False)
    if checkpoint is not None:
        _adopt_normalisation(model, checkpoint)
    return target


def _adopt_normalisation(model: Encoder, checkpoint: dict) -> None:
    """An upgrader checkpoint's weights were trained on inputs normalised its way: keep that way."""
    kwargs = checkpoint.get("kwargs") or {}
    mean, std = kwargs.get("mean"), kwargs.get("std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == model.in_channels):
        return
    model.arch_kwargs["mean"], model.arch_kwargs["std"] = [float(m) for m in mean], [float(s) for s in std]
    model.mean.copy_(torch.tensor(model.arch_kwargs["mean"]).view(1, -1, 1, 1))
    model.std.copy_(torch.tensor(model.arch_kwargs["std"]).view(1, -1, 1, 1))


def check_start(arch: str, backbone_kwargs: dict, classifier: str, num_classes: int, image_shape: tuple[int, ...],
                init_weights: WeightsPath | None, prefix: str | None) -> None:
    """Build the model a run will train and load its initial weights, then drop both: what a user
    backbone or a weights file gets wrong is said before the run changes anything (the workspace's
    interface grows when a run starts).

    Args:
        image_shape: (H, W, C) of the training images.

    Raises:
        ModelError: the backbone cannot be built (``BackboneUnavailable``: its module is not installed);
            ``WeightsError``: the weights are refused or do not fit.
    """
    if init_weights is None and architecture_kind(arch) == "builtin":
        return
    h, w, c = image_shape
    with torch.random.fork_rng(devices=[]):
        model = build_model(arch, num_classes, in_channels=c, image_size=min(h, w), classifier=classifier,
                            backbone_kwargs=backbone_kwargs)
    if init_weights is not None:
        load_init_weights(model, init_weights, prefix)
