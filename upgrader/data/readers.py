"""Datasets in memory (uint8 NHWC), readers, deterministic splits, rehearsal memory, batch sampling
and cheap batch augmentation.

Readers: Fashion-MNIST / MNIST-layout IDX ``.gz`` folders, image folders ``root/<class>/<file>``
(Pillow) and ``.npz`` files (``images`` uint8 N,H,W[,C]; ``labels``; optional ``classes``).
Nothing here downloads. Every input problem raises ``DataError`` with a one-line message.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from upgrader.core.errors import DataError

DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

# IDX type byte -> numpy dtype (big-endian as the format stores it)
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass
class ImageDataset:
    """Labelled images in memory.

    Attributes:
        images: uint8 [N, H, W, C], C in (1, 3).
        labels: int64 [N], index into ``classes``.
        classes: class names; ``labels`` index this list.
        source: where the data came from (a path or a description), for provenance.
    """

    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    classes: list[str]  # label index -> class name
    source: str = ""  # path or description of the origin

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
        return ImageDataset(self.images[keep], old_to_new[self.labels[keep]], names, self.source)

    def take(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """Subset by item index (all classes kept)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageDataset(self.images[idx], self.labels[idx], list(self.classes), self.source)

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


# ---------------------------------------------------------------------------------------------
# IDX readers


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (gzip-compressed or plain) into a writable numpy array.

    Raises:
        DataError: missing, truncated or corrupt file.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the dataset folder")
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{p}: not a valid gzip file ({exc}); re-copy the dataset file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{p}: not an IDX file (bad magic number); expected MNIST-layout IDX data")
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{p}: truncated IDX header; re-copy the dataset file")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{p}: IDX header says {dims} ({expected} bytes) but holds {len(raw) - header} bytes; "
            "the file is truncated or corrupt"
        )
    # frombuffer gives a read-only view; copy so torch.from_numpy and in-place ops are safe
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, prefix: str, kind: str) -> Path:
    """Find ``{prefix}-{kind}-idx?-ubyte[.gz]`` (also accepts ``{prefix}-{kind}.idx?-ubyte``)."""
    hits = sorted(folder.glob(f"{prefix}-{kind}*idx*"))
    if not hits:
        raise DataError(
            f"{folder}: no {prefix}-{kind}-idx*-ubyte[.gz] file; expected an MNIST-layout IDX folder"
        )
    gz = [h for h in hits if h.suffix == ".gz"]
    return (gz or hits)[0]


def is_idx_folder(folder: str | os.PathLike[str]) -> bool:
    """True if ``folder`` holds MNIST-layout IDX image files."""
    p = Path(folder)
    return p.is_dir() and any(p.glob("*-images*idx3*"))


def load_idx_folder(
    folder: str | os.PathLike[str], split: str = "train", classes: Sequence[str] | None = None
) -> ImageDataset:
    """Load the train or test split of an MNIST-layout IDX folder.

    Args:
        folder: holds ``train-images-idx3-ubyte.gz`` etc.
        split: "train" or "test" (``t10k-*`` files).
        classes: class names override; default Fashion-MNIST names when the folder name says
            "fashion", else "0".."9".

    Raises:
        DataError: missing or corrupt files, or images and labels that disagree.
    """
    p = Path(folder)
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find_idx(p, prefix, "images"))
    labels = read_idx(_find_idx(p, prefix, "labels"))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{p}: IDX images must be uint8 N,H,W, got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{p}: IDX labels must be one-dimensional, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{p}: {len(images)} images but {len(labels)} labels in the {split} split; "
            "the files do not belong together"
        )
    if len(images) == 0:
        raise DataError(f"{p}: the {split} split is empty")
    if classes is None:
        n = int(labels.max()) + 1
        if "fashion" in p.resolve().name.lower() and n <= len(FASHION_MNIST_CLASSES):
            classes = FASHION_MNIST_CLASSES
        else:
            classes = [str(i) for i in range(max(n, 10))]
    return ImageDataset(images[..., None], labels.astype(np.int64), list(classes), f"{p}:{split}")


# ---------------------------------------------------------------------------------------------
# Image folders and npz


def load_image_folder(
    root: str | os.PathLike[str],
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load ``root/<class>/<file>`` images with Pillow.

    Args:
        root: one sub-folder per class (sorted names become the classes).
        image_size: (H, W) to resize to; default the size of the first image.
        channels: 1 or 3; default 3 if any image has colour, else 1.

    Raises:
        DataError: empty folder, a class without images, or a file Pillow cannot read.
    """
    from PIL import Image, UnidentifiedImageError

    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{r}: not a folder; give a folder of class sub-folders")
    class_dirs = sorted(d for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{r}: no class sub-folders; lay images out as root/<class>/<file>")
    pil: list[Image.Image] = []
    labels: list[int] = []
    for label, d in enumerate(class_dirs):
        files = sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise DataError(f"{d}: class folder has no images; remove it or add images")
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    pil.append(im.copy())
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"{f}: not a readable image ({exc.__class__.__name__}); remove or replace it") from None
            labels.append(label)
    if channels is None:
        channels = 3 if any(im.mode not in ("L", "1", "I", "I;16", "F", "LA") for im in pil) else 1
    if image_size is None:
        image_size = (pil[0].height, pil[0].width)
    h, w = image_size
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for im in pil:
        im = im.convert(mode)
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        arrays.append(np.asarray(im, dtype=np.uint8).reshape(h, w, channels))
    return ImageDataset(np.stack(arrays), np.array(labels), [d.name for d in class_dirs], str(r))


def load_npz(path: str | os.PathLike[str]) -> ImageDataset:
    """Load an ``.npz`` with ``images`` (uint8 N,H,W[,C]), ``labels`` and optional ``classes``.

    Raises:
        DataError: unreadable file, missing keys, wrong dtype or mismatched lengths.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            missing = {"images", "labels"} - keys
            if missing:
                raise DataError(
                    f"{p}: missing arrays {sorted(missing)} (has {sorted(keys)}); save images= and labels="
                )
            images = np.array(z["images"])
            labels = np.array(z["labels"])
            classes = [str(c) for c in z["classes"]] if "classes" in keys else None
    except DataError:
        raise
    except Exception as exc:  # zipfile/pickle/value errors: the file is not a usable npz
        raise DataError(f"{p}: not a readable .npz ({exc.__class__.__name__}); re-save it with numpy.savez") from None
    if images.dtype != np.uint8:
        raise DataError(f"{p}: images are {images.dtype}, need uint8 0..255; convert before saving")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{p}: labels are {labels.dtype}, need integers")
    if len(images) == 0:
        raise DataError(f"{p}: holds no images")
    if classes is None:
        classes = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    return ImageDataset(images, labels, classes, str(p))


def save_npz(path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None = None) -> None:
    """Write an ``.npz`` that ``load_npz`` reads back (images, labels, optional classes)."""
    arrays: dict[str, np.ndarray] = {"images": images, "labels": np.asarray(labels, dtype=np.int64)}
    if classes is not None:
        arrays["classes"] = np.array([str(c) for c in classes])
    np.savez(path, **arrays)


def load_dataset(
    spec: str | os.PathLike[str], split: str = "train", classes: Sequence[str] | None = None
) -> ImageDataset:
    """Load a dataset from a spec.

    Args:
        spec: "fashion-mnist" (the Debian folder), a folder of IDX files, an image folder
            ``root/<class>/<file>``, or an ``.npz`` file.
        split: "train" | "test" for IDX folders; ignored otherwise.
        classes: class-name override for IDX folders.

    Raises:
        DataError: the spec names nothing usable.
    """
    s = str(spec)
    if s.lower() in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        return load_idx_folder(DEFAULT_FASHION_DIR, split, classes or FASHION_MNIST_CLASSES)
    p = Path(s)
    if p.suffix == ".npz":
        return load_npz(p)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder; give 'fashion-mnist', an IDX folder, an image folder or an .npz")
    if p.is_dir():
        if is_idx_folder(p):
            return load_idx_folder(p, split, classes)
        return load_image_folder(p)
    raise DataError(f"{p}: unsupported dataset file; use an .npz, an IDX folder or an image folder")


# ---------------------------------------------------------------------------------------------
# Splits and memory


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
