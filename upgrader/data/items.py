"""Which items of a dataset are probe, training or gallery data: stable item identities, URIs and the probe draw.

An item is known by what it is, never by where it sits: its pixels' sha256, plus its relative path
in an image folder (:meth:`ImageDataset.item_keys`). Positions shift when a file is added that sorts
first; identities do not. So the probe draw orders each class by a seeded hash of the identity (an
added item joins the probe set or not, and moves no other item), and training and gallery ingestion
leave out every item whose pixels are a probe item's (:func:`probe_mask`, against the pixels the
registry stores), whatever the dataset layout or the spelling of its path.

Item URIs, for provenance, are ``<spec>#<split>#<where>#<pixel sha256>``: split "train"/"test" for
IDX folders, "all" for image folders and .npz files; ``<where>`` is the relative path of an image
folder's file, else the index (informative only). Workspaces made before identities have
``<spec>#<split>#<index>``; :func:`excluded_indices` still reads them.

A URI also brings an item back (:class:`SourceReader`, what ``gallery backfill`` re-embeds from): the
image folder's file fitted to the workspace's shape, or the array dataset's item; the pixels are
checked against the URI's sha256 (an array item that moved is found again by its pixels). What cannot
be brought back as it was stored raises :class:`UnreadableSource` naming why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from upgrader.core.errors import DataError, InvalidRequest, UpgraderError
from upgrader.core.images import fit_image
from upgrader.data.dataset import ImageDataset, pixel_digests
from upgrader.data.readers import FASHION_ALIASES, _read_image_file, is_idx_folder, load_dataset

_HEX = frozenset("0123456789abcdef")


def has_splits(spec: str) -> bool:
    """Whether the dataset comes with train/test splits (IDX folders do)."""
    return spec.lower() in FASHION_ALIASES or is_idx_folder(spec)


def split_name(spec: str, split: str) -> str:
    """The split label used in item URIs: the split for IDX folders, "all" otherwise."""
    return split if has_splits(spec) else "all"


def item_uris(spec: str, split: str, indices: Iterable[int], ds: ImageDataset | None = None) -> list[str]:
    """The URI of each item ``indices`` names in ``ds`` (``<spec>#<split>#<where>#<sha256>``).

    Without ``ds``, the positional form ``<spec>#<split>#<index>`` (for callers that hold no pixels).
    """
    label = split_name(spec, split)
    idx = [int(i) for i in indices]
    if ds is None:
        return [f"{spec}#{label}#{i}" for i in idx]
    digests = pixel_digests(ds.images[np.asarray(idx, dtype=np.int64)]) if idx else []
    where = [ds.item_names[i] for i in idx] if ds.item_names is not None else [str(i) for i in idx]
    return [f"{spec}#{label}#{w}#{d}" for w, d in zip(where, digests)]


def load_items(spec: str, split: str, image_shape: tuple[int, int, int] | None = None) -> ImageDataset:
    """Load ``split`` of ``spec`` (the split is ignored by datasets without splits); image folders
    are fitted to ``image_shape`` when given (the workspace's, so a file always gives the same pixels)."""
    return load_dataset(spec, split=split if has_splits(spec) else "train", image_shape=image_shape)


def draw_per_class(
    keys: Sequence[str],
    labels: np.ndarray,
    num_classes: int,
    per_class: int,
    seed: int,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of ``per_class`` items of every class present (sorted), skipping ``exclude``.

    Each class is ordered by ``sha256(seed, key)`` of its items' identities (``keys``, e.g.
    :meth:`ImageDataset.item_keys`) and the first ``per_class`` are taken. The draw depends on the
    items, not on their positions: adding an item can only put that item in (pushing out the one
    ranked last in its class) and leaves every other class as it was.

    Raises:
        DataError: a class with fewer items than asked for, or keys and labels of different lengths.
    """
    if len(keys) != len(labels):
        raise DataError(f"{len(keys)} item keys but {len(labels)} labels; give one key per item")
    allowed = np.ones(len(labels), dtype=bool)
    if exclude is not None and len(exclude):
        allowed[exclude] = False
    rank = [hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest() for k in keys]
    chosen: list[np.ndarray] = []
    for c in range(num_classes):
        idx = np.flatnonzero((labels == c) & allowed)
        if len(idx) == 0:
            continue
        if len(idx) < per_class:
            left = f" left after the {int((labels == c).sum()) - len(idx)} drawn before" if len(idx) < int((labels == c).sum()) else ""
            raise DataError(f"class {c} has {len(idx)} items{left}, fewer than the {per_class} asked for; ask for fewer per class")
        ordered = sorted(idx.tolist(), key=lambda i: (rank[i], keys[i], i))  # ties (equal items): by position
        chosen.append(np.asarray(ordered[:per_class], dtype=np.int64))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def probe_mask(ds: ImageDataset, probe_images: np.ndarray) -> np.ndarray:
    """bool [N]: which items of ``ds`` have the pixels of a probe item (``probe_images``, uint8 NHWC).

    Why pixels: they are what a model would learn from, and the registry holds the probe set's very
    pixels, so a probe item is recognised under any name, at any position, in any dataset spelling.
    Load image folders at the probe set's shape (``load_items(..., image_shape=...)``): items of
    another shape cannot hold a probe item's pixels, and none of them is marked.
    """
    if len(ds) == 0 or len(probe_images) == 0 or tuple(probe_images.shape[1:]) != ds.image_shape:
        return np.zeros(len(ds), dtype=bool)
    probe = set(pixel_digests(probe_images))
    return np.array([d in probe for d in ds.item_digests()], dtype=bool)


def excluded_indices(
    spec: str, split: str, probe_uris: Iterable[str | None], ds: ImageDataset | None = None
) -> np.ndarray:
    """Indices of ``spec``/``split`` that belong to the probe set (to leave out of training or a gallery).

    Items are matched by identity: the pixel sha256 in the URI, or an image folder's relative path.
    Positional URIs of older workspaces are taken as indices. ``ds`` is ``spec``/``split`` as loaded
    (loaded here when not given and a URI needs it). Prefer :func:`probe_mask` with the registry's
    probe pixels, which also catches a probe item reached through another spelling of ``spec``.
    """
    prefix = f"{spec}#{split_name(spec, split)}#"
    positions: set[int] = set()
    digests: set[str] = set()
    wheres: set[str] = set()
    for uri in probe_uris:
        if not uri or not uri.startswith(prefix):
            continue
        rest = uri[len(prefix):]
        where, sep, digest = rest.rpartition("#")
        if sep and len(digest) == 64 and set(digest) <= _HEX:
            digests.add(digest)
            wheres.add(where)
        elif rest.isdigit():
            positions.add(int(rest))
    if digests:
        ds = ds if ds is not None else load_items(spec, split)
        names = ds.item_names
        positions.update(
            i for i, d in enumerate(ds.item_digests()) if d in digests or (names is not None and names[i] in wheres)
        )
    return np.array(sorted(positions), dtype=np.int64)


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
            if stop < start:
                raise InvalidRequest(f"class range {part!r} is reversed; write it low to high ({stop}-{start})")
            if stop >= len(known):
                raise InvalidRequest(f"class range {part!r} is outside 0-{len(known) - 1}; the dataset has {len(known)} classes")
            names.extend(known[start : stop + 1])
            continue
        raise InvalidRequest(f"unknown class {part!r}; give indices (0-3, 4,5) or names from {list(known)}")
    if not names:
        raise InvalidRequest("no classes given; name the classes to learn, e.g. 0-3 or Sandal,Shirt")
    return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------
# Reading a stored item back from its URI

#: The split labels an item URI carries (see :func:`split_name`).
URI_SPLITS: tuple[str, ...] = ("train", "test", "all")


class UnreadableSource(DataError):
    """A stored item that cannot be brought back as it was stored; the item itself is left alone.

    ``reason`` names the case: ``no-source`` (nothing recorded), ``malformed`` (not an item URI),
    ``dataset-missing`` (the dataset cannot be opened: moved, deleted, unreadable), ``item-missing``
    (the file or index is not there), ``pixels-changed`` (the pixels are not the ones stored).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, subject="dataset")
        self.reason = reason


@dataclass(frozen=True)
class ItemSource:
    """Where a stored item came from, as its URI says."""

    spec: str  # the dataset as given to ``gallery add``
    split: str  # "train" | "test" (IDX folders) or "all"
    where: str  # an image folder's relative path, else the item's index
    digest: str | None  # sha256 of the pixels; None in the positional URIs of older workspaces


def _spec_exists(spec: str) -> bool:
    return spec.lower() in FASHION_ALIASES or Path(spec).exists()


def parse_item_uri(uri: str | None) -> ItemSource:
    """Split ``<spec>#<split>#<where>[#<sha256>]`` into its parts.

    A spec or a file name may itself hold ``#``: of the readings the URI allows, the first whose
    dataset exists wins (the first of all when none does: reading it then says the dataset is missing).

    Raises:
        UnreadableSource: no URI, or one that is not an item URI (``no-source`` / ``malformed``).
    """
    if not uri:
        raise UnreadableSource("the item has no source recorded; it was added without one", "no-source")
    body, sep, last = uri.rpartition("#")
    digest = last if sep and len(last) == 64 and set(last) <= _HEX else None
    rest = body if digest else uri
    readings: list[tuple[int, str, str, str]] = []
    for split in URI_SPLITS:
        marker = f"#{split}#"
        at = rest.find(marker)
        while at > 0:
            where = rest[at + len(marker):]
            if where and (digest is not None or where.isdigit()):
                readings.append((at, rest[:at], split, where))
            at = rest.find(marker, at + 1)
    if not readings:
        raise UnreadableSource(f"{uri!r} is not an item URI (<dataset>#<split>#<item>#<sha256>)", "malformed")
    readings.sort()
    found = [r for r in readings if _spec_exists(r[1])]
    _, spec, split, where = (found or readings)[0]
    return ItemSource(spec, split, where, digest)


class SourceReader:
    """Brings stored items back from their URIs, each dataset opened once.

    Args:
        image_shape: (H, W, C) that image-folder files are fitted to: the workspace's (its probe
            set's), as ``gallery add`` fitted them, so a file gives the pixels it gave then.
    """

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        self.image_shape = tuple(int(x) for x in image_shape)
        self._datasets: dict[tuple[str, str], ImageDataset | UnreadableSource] = {}
        self._by_digest: dict[tuple[str, str], dict[str, int]] = {}

    def read(self, uri: str | None) -> np.ndarray:
        """The item's pixels, uint8 [H, W, C], checked against the URI's sha256 when it has one.

        Raises:
            UnreadableSource: why the item cannot be brought back as stored (see its ``reason``).
        """
        src = parse_item_uri(uri)
        if not _spec_exists(src.spec):
            raise UnreadableSource(f"dataset {src.spec} is not there any more (moved or deleted); "
                                   "put it back where it was to re-embed its items", "dataset-missing")
        if Path(src.spec).is_dir() and not has_splits(src.spec):
            image = self._folder_file(src)
        else:
            image = self._array_item(src)
        if src.digest is not None and pixel_digests(image[None])[0] != src.digest:
            raise UnreadableSource(f"{src.spec}: {src.where} no longer has the pixels stored for it (the file "
                                   "was changed); restore it, or remove the item and add it again", "pixels-changed")
        return image

    def _folder_file(self, src: ItemSource) -> np.ndarray:
        root = Path(src.spec)
        path = root / src.where
        try:
            inside = path.resolve().is_relative_to(root.resolve())
        except OSError:
            inside = False
        if not inside:
            raise UnreadableSource(f"{src.where!r} is not a file inside {src.spec}", "malformed")
        if not path.is_file():
            raise UnreadableSource(f"{path}: the file is gone; put it back to re-embed the item", "item-missing")
        try:
            return fit_image(_read_image_file(path), self.image_shape)
        except DataError as exc:
            raise UnreadableSource(str(exc), "pixels-changed") from None

    def _array_item(self, src: ItemSource) -> np.ndarray:
        ds = self._dataset(src)
        at = int(src.where) if src.where.isdigit() else -1
        if src.digest is not None and not (0 <= at < len(ds) and pixel_digests(ds.images[at : at + 1])[0] == src.digest):
            at = self._digests(src, ds).get(src.digest, -1)  # the item moved: found again by its pixels
            if at < 0:
                raise UnreadableSource(f"{src.spec} ({src.split}) no longer holds the item stored from it "
                                       f"(index {src.where}, pixels changed or removed); restore the dataset, "
                                       "or remove the item and add it again", "pixels-changed")
        if not 0 <= at < len(ds):
            raise UnreadableSource(f"{src.spec} ({src.split}) has {len(ds)} items, no item {src.where}", "item-missing")
        return np.ascontiguousarray(ds.images[at])

    def _dataset(self, src: ItemSource) -> ImageDataset:
        key = (src.spec, src.split)
        if key not in self._datasets:
            split = src.split if src.split in ("train", "test") else "train"
            try:
                self._datasets[key] = load_items(src.spec, split)
            except UpgraderError as exc:
                self._datasets[key] = UnreadableSource(f"dataset {src.spec} cannot be read ({exc})", "dataset-missing")
        got = self._datasets[key]
        if isinstance(got, UnreadableSource):
            raise UnreadableSource(str(got), got.reason)
        return got

    def _digests(self, src: ItemSource, ds: ImageDataset) -> dict[str, int]:
        key = (src.spec, src.split)
        if key not in self._by_digest:
            self._by_digest[key] = {d: i for i, d in reversed(list(enumerate(ds.item_digests())))}
        return self._by_digest[key]
