"""Labelled images in memory, deterministic per-class splits and the rehearsal memory of fine-tuning.

:class:`ImageDataset` is what every reader in :mod:`upgrader.data.readers` returns: uint8 NHWC images,
int labels and class names, checked on construction; image folders also name each item by its
relative path. An item's identity (:meth:`ImageDataset.item_keys`) is its pixels' hash plus that name,
never its position. The splits here are seeded draws by position over one dataset in memory (tests and
benchmarks); a workspace's probe set is drawn by identity (:func:`upgrader.data.items.draw_per_class`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from upgrader.core.errors import DataError


@dataclass
class ImageDataset:
    """Labelled images in memory.

    Attributes:
        images: uint8 [N, H, W, C], C in (1, 3).
        labels: int64 [N], index into ``classes``.
        classes: class names; ``labels`` index this list.
        source: where the data came from (a path or a description), for provenance.
        item_names: where each item lies inside ``source`` (the relative path of an image folder's
            file), or None where an item has no name but its position. With the pixels it makes the
            item's stable identity (:meth:`item_keys`), which survives files being added or removed.
    """

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    classes: list[str]  # label index -> class name
    source: str = ""  # path or description of the origin
    item_names: list[str] | None = None  # [N] relative path of each item, if it has one

    def __post_init__(self) -> None:
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8:
            raise DataError(f"{self.source}: images must be a uint8 numpy array; convert with astype(np.uint8)")
        if self.images.ndim == 3:
            self.images = self.images[..., None]
        if self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise DataError(
                f"{self.source}: images must be N,H,W or N,H,W,C with C 1 or 3, got shape {self.images.shape}"
            )
        self.labels = np.asarray(self.labels).astype(np.int64, copy=False).reshape(-1)
        if len(self.labels) != len(self.images):
            raise DataError(
                f"{self.source}: {len(self.images)} images but {len(self.labels)} labels; "
                "give one label per image"
            )
        self.classes = [str(c) for c in self.classes]
        if len(set(self.classes)) != len(self.classes):
            raise DataError(f"{self.source}: duplicate class names; class names must be unique")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError(
                f"{self.source}: labels must lie in 0..{len(self.classes) - 1} (one per class name), "
                f"found {self.labels.min()}..{self.labels.max()}"
            )
        if self.item_names is not None:
            self.item_names = [str(n) for n in self.item_names]
            if len(self.item_names) != len(self.images):
                raise DataError(
                    f"{self.source}: {len(self.images)} images but {len(self.item_names)} item names; "
                    "give one name per image"
                )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        _, h, w, c = self.images.shape
        return int(h), int(w), int(c)

    def class_names(self) -> list[str]:
        """Class name of every item, [N]."""
        return [self.classes[i] for i in self.labels]

    def select(self, class_names: Sequence[str]) -> ImageDataset:
        """Keep only the given classes; labels re-index ``class_names`` in the order given.

        Raises:
            DataError: a name that is not a class of this dataset.
        """
        names = [str(c) for c in class_names]
        unknown = [c for c in names if c not in self.classes]
        if unknown:
            raise DataError(f"{self.source}: unknown classes {unknown}; known: {self.classes}")
        old_to_new = np.full(len(self.classes), -1, dtype=np.int64)
        for new, name in enumerate(names):
            old_to_new[self.classes.index(name)] = new
        keep = np.flatnonzero(old_to_new[self.labels] >= 0)
        return ImageDataset(self.images[keep], old_to_new[self.labels[keep]], names, self.source, self._names_at(keep))

    def take(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """Subset by item index (all classes kept)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(self.images[idx], self.labels[idx], list(self.classes), self.source, self._names_at(idx))

    def _names_at(self, idx: np.ndarray) -> list[str] | None:
        return None if self.item_names is None else [self.item_names[int(i)] for i in idx]

    def item_digests(self) -> list[str]:
        """sha256 of each item's pixels (and shape), [N]: what an item *is*, wherever it sits.

        Why: positions shift when a file is added to a folder, names can be copied; the pixels are
        what a model would learn from, so a probe item is recognised by them in any dataset.
        """
        return pixel_digests(self.images)

    def item_keys(self) -> list[str]:
        """The stable identity of each item, [N]: ``<relative path>#<pixel digest>`` for named items
        (image folders), the pixel digest alone otherwise. Never the position."""
        digests = self.item_digests()
        if self.item_names is None:
            return digests
        return [f"{name}#{d}" for name, d in zip(self.item_names, digests)]

    def fingerprint(self) -> str:
        """sha256 over images, labels and class names: identifies the exact training data."""
        h = hashlib.sha256()
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        h.update("\n".join(self.classes).encode())
        return h.hexdigest()

    def vertices(self, label_map: dict[str, int]) -> np.ndarray:
        """Map labels to interface vertex indices through ``label_map`` (class name -> vertex).

        Raises:
            DataError: a class without a vertex.
        """
        missing = [c for c in self.classes if c not in label_map]
        if missing:
            raise DataError(f"classes {missing} have no vertex; assign them in the interface first")
        lut = np.array([label_map[c] for c in self.classes], dtype=np.int64)
        return lut[self.labels] if len(self.labels) else np.zeros(0, dtype=np.int64)


def pixel_digests(images: np.ndarray) -> list[str]:
    """sha256 hex of each uint8 image's shape and bytes, [N]; equal pixels give equal digests."""
    arr = np.ascontiguousarray(images)
    shape = "x".join(str(int(d)) for d in arr.shape[1:]).encode()
    return [hashlib.sha256(shape + b"\0" + arr[i].tobytes()).hexdigest() for i in range(len(arr))]


def split_per_class(
    ds: ImageDataset, counts: dict[str, int] | int, seed: int
) -> tuple[ImageDataset, ImageDataset]:
    """Take ``counts`` random items per class (deterministic in ``seed``); return (taken, rest).

    Args:
        ds: the dataset.
        counts: items per class, one number for all classes or per class name (classes not named
            give none).
        seed: random seed.

    Raises:
        DataError: a class with fewer items than asked for.
    """
    rng = np.random.default_rng(seed)
    taken: list[np.ndarray] = []
    for label, name in enumerate(ds.classes):
        want = counts if isinstance(counts, int) else int(counts.get(name, 0))
        if want <= 0:
            continue
        idx = np.flatnonzero(ds.labels == label)
        if len(idx) < want:
            raise DataError(f"class {name!r} has {len(idx)} items, fewer than the {want} asked for")
        taken.append(rng.choice(idx, size=want, replace=False))
    chosen = np.sort(np.concatenate(taken)) if taken else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(ds)), chosen)
    return ds.take(chosen), ds.take(rest)


def subsample_per_class(ds: ImageDataset, per_class: int, seed: int) -> ImageDataset:
    """At most ``per_class`` random items of every class (all items of smaller classes)."""
    counts = {name: min(per_class, int((ds.labels == i).sum())) for i, name in enumerate(ds.classes)}
    return split_per_class(ds, counts, seed)[0]


def probe_splits(
    ds: ImageDataset, query_per_class: int, gallery_per_class: int, seed: int
) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """Deterministic (train, probe queries, probe gallery) split; probe items never train.

    Returns:
        (train, query, gallery), disjoint.
    """
    query, rest = split_per_class(ds, query_per_class, seed)
    gallery, train = split_per_class(rest, gallery_per_class, seed + 1)
    return train, query, gallery


def steps_per_epoch(n_new: int, batch_size: int, with_memory: bool) -> int:
    """Optimiser steps of one pass over ``n_new`` new images: batches of ``batch_size`` (half of it new
    data when a rehearsal memory fills the other half), the incomplete last batch dropped.

    The one rule both the training loop (``upgrader.training.batches``) and the training plan follow.
    """
    per_batch = max(1, batch_size // 2 if with_memory else batch_size)
    return max(1, n_new // per_batch)


@dataclass
class RehearsalMemory:
    """Images kept from earlier classes for fine-tuning (labels are vertex indices).

    Attributes:
        images: uint8 [M, H, W, C].
        vertices: int64 [M].
    """

    images: np.ndarray  # uint8 [M, H, W, C]
    vertices: np.ndarray  # int64 [M]

    @classmethod
    def build(cls, images: np.ndarray, vertices: np.ndarray, per_class: int, seed: int) -> RehearsalMemory:
        """Keep ``per_class`` random items of every vertex (all of a smaller class), seeded."""
        rng = np.random.default_rng(seed)
        keep: list[np.ndarray] = []
        for v in np.unique(vertices):
            idx = np.flatnonzero(vertices == v)
            keep.append(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        chosen = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
        return cls(images[chosen], np.asarray(vertices, dtype=np.int64)[chosen])

    def merge(self, other: RehearsalMemory) -> RehearsalMemory:
        """Concatenate two memories (e.g. the old one and the classes just learnt)."""
        return RehearsalMemory(
            np.concatenate([self.images, other.images]), np.concatenate([self.vertices, other.vertices])
        )

    def __len__(self) -> int:
        return len(self.images)
