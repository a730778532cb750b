"""Which items of a dataset are probe, training or gallery data: stable item URIs and the probe draw.

Every item is named ``<spec>#<split>#<index>`` (split "train"/"test" for IDX folders, "all" for image
folders and .npz files). The probe set's URIs are stored in the registry at ``init``, and training and
gallery ingestion leave those items out, so the probe set stays held out whatever the dataset layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from upgrader.core.errors import DataError, InvalidRequest
from upgrader.data.dataset import ImageDataset
from upgrader.data.readers import FASHION_ALIASES, is_idx_folder, load_dataset


def has_splits(spec: str) -> bool:
    """Whether the dataset comes with train/test splits (IDX folders do)."""
    return spec.lower() in FASHION_ALIASES or is_idx_folder(spec)


def split_name(spec: str, split: str) -> str:
    """The split label used in item URIs: the split for IDX folders, "all" otherwise."""
    return split if has_splits(spec) else "all"


def item_uris(spec: str, split: str, indices: Iterable[int]) -> list[str]:
    """``<spec>#<split>#<index>`` for each index."""
    label = split_name(spec, split)
    return [f"{spec}#{label}#{int(i)}" for i in indices]


def load_items(spec: str, split: str) -> ImageDataset:
    """Load ``split`` of ``spec`` (the split is ignored by datasets without splits)."""
    return load_dataset(spec, split=split if has_splits(spec) else "train")


def draw_per_class(labels: np.ndarray, num_classes: int, per_class: int, seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of ``per_class`` random items of every class present (sorted), skipping ``exclude``.

    Raises:
        DataError: a class with fewer items than asked for.
    """
    rng = np.random.default_rng(seed)
    allowed = np.ones(len(labels), dtype=bool)
    if exclude is not None and len(exclude):
        allowed[exclude] = False
    chosen: list[np.ndarray] = []
    for c in range(num_classes):
        idx = np.flatnonzero((labels == c) & allowed)
        if len(idx) == 0:
            continue
        if len(idx) < per_class:
            raise DataError(f"class {c} has {len(idx)} items, fewer than the {per_class} asked for; ask for fewer per class")
        chosen.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def excluded_indices(spec: str, split: str, probe_uris: Iterable[str | None]) -> np.ndarray:
    """Indices of ``spec``/``split`` that belong to the probe set (to leave out of training or a gallery)."""
    prefix = f"{spec}#{split_name(spec, split)}#"
    return np.array(
        sorted(int(u[len(prefix):]) for u in probe_uris if u and u.startswith(prefix)), dtype=np.int64
    )


def parse_classes(spec: str | Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    """Turn "0-3", "4,5", "Sandal,Shirt" or ["all"] into class names of ``known``.

    Raises:
        InvalidRequest: a name or index that the dataset does not have.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    parts = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    if parts == ["all"]:
        return tuple(known)
    names: list[str] = []
    for part in parts:
        if part in known:
            names.append(part)
            continue
        lo, sep, hi = part.partition("-")
        if lo.isdigit() and (not sep or hi.isdigit()):
            start, stop = int(lo), int(hi) if sep else int(lo)
            if stop < start or stop >= len(known):
                raise InvalidRequest(f"class range {part!r} is outside 0-{len(known) - 1}; the dataset has {len(known)} classes")
            names.extend(known[start : stop + 1])
            continue
        raise InvalidRequest(f"unknown class {part!r}; give indices (0-3, 4,5) or names from {list(known)}")
    if not names:
        raise InvalidRequest("no classes given; name the classes to learn, e.g. 0-3 or Sandal,Shirt")
    return tuple(dict.fromkeys(names))
