"""Dataset readers: MNIST-layout IDX folders, image folders and ``.npz`` files -> :class:`ImageDataset`.

Readers: Fashion-MNIST / MNIST-layout IDX ``.gz`` folders, image folders ``root/<class>/<file>``
(Pillow) and ``.npz`` files (``images`` uint8 N,H,W[,C]; ``labels``; optional ``classes``); a spec
string picks one (:func:`load_dataset`). Nothing here downloads. Every input problem raises
``DataError`` with a one-line message.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from upgrader.core.errors import DataError, InvalidRequest
from upgrader.core.images import fit_image
from upgrader.data.dataset import ImageDataset

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
#: Spellings of the Fashion-MNIST spec that name the Debian folder.
FASHION_ALIASES = ("fashion-mnist", "fashion_mnist", "fashionmnist")
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

# IDX type byte -> numpy dtype (big-endian as the format stores it)
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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


#: Largest image (width * height) an image-folder dataset may hold: about 120 MB decoded as RGB.
#: Checked from the file's header before any pixel is decoded, so a decompression bomb (a small
#: PNG that inflates to gigabytes) costs nothing. Dataset images are small; this leaves room for
#: any camera photo.
MAX_DATASET_IMAGE_PIXELS = 40_000_000


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

    Returns:
        The images, with each file's path relative to ``root`` as its ``item_names`` entry.

    Raises:
        DataError: empty folder, a class without images, a file Pillow cannot read, or an image
            over ``MAX_DATASET_IMAGE_PIXELS``.
    """
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{r}: not a folder; give a folder of class sub-folders")
    class_dirs = sorted(d for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{r}: no class sub-folders; lay images out as root/<class>/<file>")
    pil: list[Image.Image] = []
    labels: list[int] = []
    names: list[str] = []
    for label, d in enumerate(class_dirs):
        files = sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise DataError(f"{d}: class folder has no images; remove it or add images")
        for f in files:
            pil.append(_read_image_file(f))
            labels.append(label)
            names.append(f.relative_to(r).as_posix())
    if channels is None:
        channels = 3 if any(im.mode not in ("L", "1", "I", "I;16", "F", "LA") for im in pil) else 1
    if image_size is None:
        image_size = (pil[0].height, pil[0].width)
    shape = (image_size[0], image_size[1], channels)
    arrays = [fit_image(im, shape) for im in pil]
    return ImageDataset(np.stack(arrays), np.array(labels), [d.name for d in class_dirs], str(r), names)


def _read_image_file(f: Path) -> Image.Image:
    """Decode one dataset image, its size checked from the header first (see MAX_DATASET_IMAGE_PIXELS).

    Raises:
        DataError: not an image Pillow can read, or too large.
    """
    from PIL import Image, UnidentifiedImageError

    limit = f"the limit for a dataset image is {MAX_DATASET_IMAGE_PIXELS:,} pixels; resize or remove it"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as im:
                width, height = im.size  # from the header: nothing decoded yet
                if width * height > MAX_DATASET_IMAGE_PIXELS:
                    raise DataError(f"{f}: image is {width}x{height} ({width * height:,} pixels); {limit}")
                im.load()
                return im.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{f}: image is a decompression bomb (Pillow refused its size); {limit}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{f}: not a readable image ({exc.__class__.__name__}); remove or replace it") from None


def load_npz(path: str | os.PathLike[str]) -> ImageDataset:
    """Load an ``.npz`` with ``images`` (uint8 N,H,W[,C]), ``labels`` and optional ``classes``.

    Raises:
        DataError: unreadable file, missing keys, wrong dtype or mismatched lengths.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidRequest(f"{p}: no such file; give an existing .npz", subject="dataset")
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


def dataset_classes(spec: str | os.PathLike[str]) -> list[str]:
    """The class names ``load_dataset(spec)`` would give, read cheaply: no image is decoded.

    Why: a front end checks the classes a user typed (a form, a flag) before any work starts, and
    loading a whole dataset for that would make the check as slow as the run.

    Raises:
        InvalidRequest: the spec names no file or folder. DataError: what it names is unusable.
    """
    s = str(spec)
    if s.lower() in FASHION_ALIASES:
        return list(FASHION_MNIST_CLASSES)
    p = Path(s)
    if p.suffix == ".npz":
        if not p.is_file():
            raise InvalidRequest(f"{p}: no such file; give an existing .npz", subject="dataset")
        try:
            with np.load(p, allow_pickle=False) as z:
                if "classes" in z.files:
                    return [str(c) for c in z["classes"]]
                labels = np.array(z["labels"]) if "labels" in z.files else None
        except Exception as exc:  # zipfile/pickle/value errors: the file is not a usable npz
            raise DataError(f"{p}: not a readable .npz ({exc.__class__.__name__}); re-save it with numpy.savez") from None
        if labels is None or not len(labels):
            return load_npz(p).classes  # the full reader says what is wrong
        return [str(i) for i in range(int(labels.max()) + 1)]
    if not p.exists():
        raise InvalidRequest(f"{p}: no such file or folder; give 'fashion-mnist', an IDX folder, an image folder or an .npz",
                             subject="dataset")
    if p.is_dir() and is_idx_folder(p):
        labels = read_idx(_find_idx(p, "train", "labels"))
        n = int(labels.max()) + 1 if len(labels) else 0
        if "fashion" in p.resolve().name.lower() and n <= len(FASHION_MNIST_CLASSES):
            return list(FASHION_MNIST_CLASSES)
        return [str(i) for i in range(max(n, 10))]
    if p.is_dir():
        return sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    raise DataError(f"{p}: unsupported dataset file; use an .npz, an IDX folder or an image folder")


def load_dataset(
    spec: str | os.PathLike[str],
    split: str = "train",
    classes: Sequence[str] | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> ImageDataset:
    """Load a dataset from a spec.

    Args:
        spec: "fashion-mnist" (the Debian folder), a folder of IDX files, an image folder
            ``root/<class>/<file>``, or an ``.npz`` file.
        split: "train" | "test" for IDX folders; ignored otherwise.
        classes: class-name override for IDX folders.
        image_shape: (H, W, C) an image folder's files are fitted to (a workspace passes its probe
            set's, so the same file always gives the same pixels); default the first file's size.
            Arrays (IDX, .npz) are returned as stored.

    Raises:
        InvalidRequest: the spec names no file or folder. DataError: what it names is unusable.
    """
    s = str(spec)
    if s.lower() in FASHION_ALIASES:
        return load_idx_folder(DEFAULT_FASHION_DIR, split, classes or FASHION_MNIST_CLASSES)
    p = Path(s)
    if p.suffix == ".npz":
        return load_npz(p)
    if not p.exists():
        # A path that names nothing is a value the user typed wrong (exit 2), not a broken file.
        raise InvalidRequest(f"{p}: no such file or folder; give 'fashion-mnist', an IDX folder, an image folder or an .npz",
                             subject="dataset")
    if p.is_dir():
        if is_idx_folder(p):
            return load_idx_folder(p, split, classes)
        if image_shape is not None:
            return load_image_folder(p, image_size=(image_shape[0], image_shape[1]), channels=image_shape[2])
        return load_image_folder(p)
    raise DataError(f"{p}: unsupported dataset file; use an .npz, an IDX folder or an image folder")
