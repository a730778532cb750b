"""Creating a workspace (``upgrader init``) and what it drew: the probe set, its sizes and, for a dataset
without a test split, the held-out gallery split.

What init drew besides the registry's probe set is recorded in ``DIR/splits.json`` (:data:`SPLITS_FILE`):
the probe sizes (given, or chosen from the smallest class) and the held-out gallery split, as the pixel
sha256 of each of its items. The record is a file of the workspace, not a registry table, because it
describes the dataset on disk the workspace was made from; a workspace made before it has none and
keeps working (:func:`read_splits` says so, and ``gallery add`` draws as it did then).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from registry import PROBE_SPLITS

from upgrader.core.errors import DataError, InvalidRequest, WorkspaceError
from upgrader.core.files import write_atomic
from upgrader.data.dataset import ImageDataset, pixel_digests
from upgrader.data.items import draw_per_class, has_splits, item_uris, load_items, parse_classes
from upgrader.data.readers import FASHION_ALIASES
from upgrader.services.workspace import CONFIG_FILE, Workspace, WorkspaceConfig, create_workspace, resolve_home, save_config

SPLITS_FILE = "splits.json"
#: Probe queries (and as many probe gallery items) per class when not given: this share of the smallest
#: class of the split the probe is drawn from, at most PROBE_MAX. Fashion-MNIST's test split (1,000 a
#: class) gives the 100 it always had; a class of 100 images gives 10, leaving 80 for the rest.
PROBE_SHARE, PROBE_MAX = 0.1, 100
#: Share of each class (after the probe) held out for the gallery of a dataset without a test split.
HELDOUT_SHARE = 0.2
#: Items a class of a dataset without a test split keeps beyond the probe: one held out, one to train.
MIN_LEFT = 2


@dataclass(frozen=True)
class ProbeSizing:
    """The probe set's size per class and where it came from."""

    query_per_class: int
    gallery_per_class: int
    chosen: bool  # True: sized from the smallest class; False: given
    smallest_class: str  # the smallest class of the split the probe is drawn from
    smallest_count: int  # its items

    def describe(self) -> str:
        """One line for people (the CLI adds the flags that change it)."""
        how = (f"chosen from the smallest class ({self.smallest_class!r}, {self.smallest_count} items)"
               if self.chosen else "as given")
        return f"probe set: {self.query_per_class} queries + {self.gallery_per_class} gallery items per class, {how}"


@dataclass(frozen=True)
class GallerySplit:
    """Where ``gallery add`` takes a dataset's items from by default (its ``test`` split)."""

    kind: str  # "test": the dataset's own test split; "held-out": drawn at init; "none": not recorded (older)
    digests: frozenset[str] = frozenset()  # held-out: the pixel sha256 of every item held out
    per_class: dict[str, int] = field(default_factory=dict)  # held-out: items per class
    share: float | None = None  # held-out: the share of each class (after the probe) held out

    def describe(self) -> str:
        """One line for people."""
        if self.kind == "test":
            return "gallery split: the dataset's test split (never trained on)"
        if self.kind == "held-out":
            sizes = sorted(set(self.per_class.values()))
            each = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
            return (f"gallery split: {len(self.digests)} items held out at init ({each} per class, never trained "
                    "on); `gallery add` takes them")
        return ("gallery split: none (the workspace was made before init drew one): `gallery add` takes items "
                "from the whole dataset, training images included")


@dataclass(frozen=True)
class WorkspaceSplits:
    """What init drew besides the registry's probe set."""

    probe: ProbeSizing | None  # None: not recorded (a workspace made before the record)
    gallery: GallerySplit


def probe_uris(ws: Workspace) -> list[str]:
    """Item URIs of the whole probe set (both splits), to keep them out of training and galleries."""
    reg = ws.registry
    return [u for split in PROBE_SPLITS for u in reg.probe_set(split).source_uris if u]


def probe_pixels(ws: Workspace) -> np.ndarray:
    """The pixels of the whole probe set (both splits), uint8 NHWC: what training and galleries must
    never contain (see ``upgrader.data.items.probe_mask``)."""
    return np.concatenate([ws.registry.probe_set(split).images for split in PROBE_SPLITS])


def read_splits(ws: Workspace) -> WorkspaceSplits:
    """What init recorded in ``splits.json``; for a workspace made before the record, no probe sizing and
    a gallery split of kind ``test`` (a dataset with one) or ``none``.

    Raises:
        WorkspaceError: the file is there but unreadable.
    """
    path = ws.home / SPLITS_FILE
    if not path.is_file():
        return WorkspaceSplits(None, GallerySplit("test" if has_splits(ws.config.dataset) else "none"))
    try:
        body = json.loads(path.read_text())
        probe = ProbeSizing(**body["probe"])
        g = body["gallery"]
        gallery = GallerySplit(g["kind"], frozenset(g.get("digests", [])), dict(g.get("per_class", {})), g.get("share"))
    except (ValueError, KeyError, TypeError) as exc:
        raise WorkspaceError(f"{path} is not a valid split record ({exc.__class__.__name__}); restore it from a "
                             "backup or re-create the workspace") from None
    return WorkspaceSplits(probe, gallery)


def excluded_items(ws: Workspace, ds: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """(probe, held-out) bool masks [N] over ``ds``: items with the pixels of a probe item, and items of
    the held-out gallery split. Training leaves out both; a gallery leaves out the probe items.

    Items are known by their pixels, so any spelling or copy of the dataset is matched. ``ds`` must be
    loaded at the probe set's shape (image folders: ``load_items(..., image_shape=...)``); items of
    another shape cannot be either.
    """
    probe = probe_pixels(ws)
    none = np.zeros(len(ds), dtype=bool)
    if len(ds) == 0 or len(probe) == 0 or tuple(probe.shape[1:]) != ds.image_shape:
        return none, none.copy()
    digests = ds.item_digests()
    probe_set = set(pixel_digests(probe))
    held = read_splits(ws).gallery.digests
    return (np.array([d in probe_set for d in digests], dtype=bool),
            np.array([d in held for d in digests], dtype=bool))


def init_workspace(
    home: str | Path | None,
    *,
    dataset: str = "fashion-mnist",
    num_classes: int = 64,
    classes: str = "all",
    query_per_class: int | None = None,
    gallery_per_class: int | None = None,
    seed: int = 0,
    db_url: str | None = None,
    embedding_dtype: str = "float32",
) -> Workspace:
    """Create a workspace: registry migrated to head, interface K, a labelled probe set and, for a dataset
    without a test split, a held-out gallery split.

    The probe set is drawn per class from the dataset's test split (IDX folders) or from the whole
    dataset (image folders, .npz), in a seeded order of each item's identity (relative path and pixel
    hash, never its position: adding a file moves no probe item); its pixels and URIs are stored, and
    training and gallery ingestion leave out every item with a probe item's pixels. Sizes not given are
    chosen from the smallest class (:data:`PROBE_SHARE`). A dataset without a test split also has
    :data:`HELDOUT_SHARE` of each class held out for the gallery, recorded by pixel hash in
    ``splits.json``: no generation trains on it. Everything is checked before anything is written; a
    failure removes what was created.

    Raises:
        InvalidRequest: K too small for the classes, bad sizes, or a class too small for the sizes asked.
        WorkspaceError: a workspace exists at ``home`` already.
        DataError: the dataset cannot be read.
    """
    if dataset.lower() not in FASHION_ALIASES and Path(dataset).exists():
        dataset = str(Path(dataset).resolve())  # recorded whole: later commands may run from anywhere
    drawn = _draw(dataset, classes, num_classes, query_per_class, gallery_per_class, seed)
    root = resolve_home(home)
    created_root = not root.exists()
    config = WorkspaceConfig(
        dataset=dataset,
        num_classes=num_classes,
        probe_query_per_class=drawn.sizing.query_per_class,
        probe_gallery_per_class=drawn.sizing.gallery_per_class,
        probe_split=drawn.split,
        seed=seed,
        db_url=db_url,
    )
    ws = create_workspace(root, config)
    try:
        reg = ws.registry
        reg.set_interface(num_classes, embedding_dtype=embedding_dtype)
        reg.assign_classes(drawn.names)
        for which, idx in (("query", drawn.query), ("gallery", drawn.gallery)):
            part = drawn.ds.take(idx)
            reg.add_probe_items(which, part.images, part.class_names(), item_uris(dataset, drawn.split, idx, drawn.ds))
        write_atomic(root / SPLITS_FILE, json.dumps(drawn.record(), indent=1).encode())
        save_config(ws)
    except BaseException:
        ws.close()
        _remove_partial(root, created_root)
        raise
    return ws


@dataclass
class _Drawn:
    """What init drew, before anything is written."""

    ds: ImageDataset
    split: str  # the split the probe set came from ("test" or "all")
    names: list[str]
    query: np.ndarray
    gallery: np.ndarray
    sizing: ProbeSizing
    heldout: dict[str, np.ndarray] | None  # class -> item indices held out; None: the dataset has a test split

    def record(self) -> dict[str, Any]:
        """The body of splits.json."""
        probe = asdict(self.sizing)
        if self.heldout is None:
            return {"version": 1, "probe": probe, "gallery": {"kind": "test"}}
        every = np.concatenate(list(self.heldout.values())) if self.heldout else np.zeros(0, dtype=np.int64)
        digests = sorted(set(pixel_digests(self.ds.images[np.sort(every)]))) if len(every) else []
        return {"version": 1, "probe": probe, "gallery": {
            "kind": "held-out", "share": HELDOUT_SHARE, "per_class": {c: int(len(i)) for c, i in self.heldout.items()},
            "digests": digests}}


def _draw(dataset: str, classes: str, num_classes: int, query_per_class: int | None, gallery_per_class: int | None,
          seed: int) -> _Drawn:
    """Check the request, size the probe set and draw it (and the held-out gallery split)."""
    if num_classes < 2:
        raise InvalidRequest("K (the interface's class count) must be at least 2", subject="num_classes")
    if (query_per_class is not None and query_per_class < 1) or (gallery_per_class is not None and gallery_per_class < 1):
        raise InvalidRequest("the probe set needs at least 1 query and 1 gallery item per class", subject="probe_sizes")
    splits = has_splits(dataset)
    split = "test" if splits else "all"
    ds = load_items(dataset, split)
    names = list(parse_classes(classes, ds.classes))
    if len(names) > num_classes:
        raise InvalidRequest(
            f"the dataset has {len(names)} classes but K is {num_classes}; choose K >= {len(names)} "
            "(preallocate room for future classes too)",
            subject="num_classes",
        )
    labels = np.array([names.index(ds.classes[i]) if ds.classes[i] in names else -1 for i in ds.labels], dtype=np.int64)
    sizing = _size_probe(names, labels, query_per_class, gallery_per_class, 0 if splits else MIN_LEFT, split)
    keys = ds.item_keys()
    q_idx = draw_per_class(keys, labels, len(names), sizing.query_per_class, seed)
    g_idx = draw_per_class(keys, labels, len(names), sizing.gallery_per_class, seed + 1, exclude=q_idx)
    heldout = None if splits else _draw_heldout(keys, labels, names, np.concatenate([q_idx, g_idx]), seed + 2)
    return _Drawn(ds, split, names, q_idx, g_idx, sizing, heldout)


def _size_probe(names: list[str], labels: np.ndarray, query: int | None, gallery: int | None, keep: int,
                split: str) -> ProbeSizing:
    """The probe sizes: as given, or chosen from the smallest class; refused, naming the class, its true
    count and the most it allows, when a class cannot hold them (plus ``keep`` items left over)."""
    counts = {name: int((labels == c).sum()) for c, name in enumerate(names)}
    present = {n: k for n, k in counts.items() if k > 0}
    if not present:
        raise DataError(f"no items of classes {names} in the dataset ({split}); check the classes asked for and the dataset")
    smallest = min(present, key=lambda n: (present[n], names.index(n)))
    n_min = present[smallest]
    auto = max(1, min(PROBE_MAX, int(n_min * PROBE_SHARE)))
    q = query if query is not None else auto
    g = gallery if gallery is not None else auto
    for name, n in sorted(present.items(), key=lambda kv: kv[1]):
        if q + g + keep > n:
            what = f"{q + g} the probe set asks for ({q} queries + {g} gallery items per class)"
            room = (n - keep) // 2
            extra = f", and {keep} more must stay for the gallery and training" if keep else ""
            fix = (f"ask for at most {room} of each" if room >= 1 else "leave the class out")
            where = " in the test split" if split == "test" else ""
            raise InvalidRequest(
                f"class {name!r} has {n} items{where}, fewer than the {what}{extra}; {fix}, or leave "
                "the sizes out to have them chosen from the smallest class",
                subject="probe_sizes",
            )
    return ProbeSizing(q, g, query is None or gallery is None, smallest, n_min)


def _draw_heldout(keys: list[str], labels: np.ndarray, names: list[str], probe: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """HELDOUT_SHARE of each class outside the probe, in the seeded order of item identities (like the
    probe draw: adding an item moves no other class's items)."""
    allowed = np.ones(len(labels), dtype=bool)
    allowed[probe] = False
    out: dict[str, np.ndarray] = {}
    for c, name in enumerate(names):
        idx = np.flatnonzero((labels == c) & allowed)
        if len(idx) < MIN_LEFT:
            continue
        take = max(1, int(round(HELDOUT_SHARE * len(idx))))
        ranked = sorted(idx.tolist(), key=lambda i: (hashlib.sha256(f"{seed}\0{keys[i]}".encode()).hexdigest(), keys[i], i))
        out[name] = np.sort(np.asarray(ranked[:take], dtype=np.int64))
    return out


def _remove_partial(root: Path, created_root: bool) -> None:
    """Undo a failed init: the folder it created, or the files it wrote into an existing one."""
    if created_root:
        shutil.rmtree(root, ignore_errors=True)
        return
    for leftover in ("registry.db", "registry.db-wal", "registry.db-shm", SPLITS_FILE, CONFIG_FILE):
        (root / leftover).unlink(missing_ok=True)


#: The splits ``gallery add`` takes: a dataset's own (IDX), or for a dataset without one, the held-out
#: split (``test``) and the items outside it (``train``).
GALLERY_SPLITS: tuple[str, ...] = ("test", "train")


@dataclass(frozen=True)
class GalleryPool:
    """Which items of a dataset one ``gallery add`` may take, and how to speak of them."""

    mask: np.ndarray  # bool [N]: items of the dataset the add may take (never a probe item)
    words: str  # what the items are called in messages, with a trailing space: "held-out ", "test-split ", or ""
    prefix: str  # the default prefix of their external ids
    notes: tuple[str, ...] = ()  # what the caller should tell the user about where the items come from


def check_gallery_split(split: str) -> None:
    """Refuse a split ``gallery add`` does not know, before any dataset is read.

    Raises:
        InvalidRequest: not one of :data:`GALLERY_SPLITS` (subject ``split``).
    """
    if split not in GALLERY_SPLITS:
        raise InvalidRequest(f"unknown split {split!r}; use test (items never trained on) or train", subject="split")


def gallery_pool(ws: Workspace, spec: str, split: str, ds: ImageDataset) -> GalleryPool:
    """The items of ``ds`` (``spec``'s ``split`` as loaded) a gallery add may take.

    A dataset with a test split: that split's items, the probe items left out. The workspace's own
    dataset without one: ``test`` is the held-out split init drew (``train`` the items outside it, which
    generations train on); in a workspace made before init drew one, both take the whole dataset, as
    they did then. Another dataset without a test split: all of its items. A note says which.

    Raises:
        InvalidRequest: an unknown split.
    """
    check_gallery_split(split)
    probe, held = excluded_items(ws, ds)
    if has_splits(spec):
        return GalleryPool(~probe, f"{split}-split ", f"{split}-")
    record = read_splits(ws).gallery
    if record.kind == "held-out" and held.any():  # the workspace's dataset (any copy: matched by pixels)
        if split == "train":
            note = "these items are outside the held-out gallery split: generations train on them"
            return GalleryPool(~probe & ~held, "training ", "train-", (note,))
        return GalleryPool(held & ~probe, "held-out ", "heldout-")
    if record.kind == "none" and _same_path(spec, ws.config.dataset):
        note = ("this workspace has no held-out gallery split (it was made before init drew one): the items come "
                "from the whole dataset, the images its generations trained on included; a new workspace draws one")
    else:
        note = f"{spec} has no test split and init held none of its items out: all of them are added, probe items left out"
    return GalleryPool(~probe, "", f"{split}-", (note,))


def _same_path(a: str, b: str) -> bool:
    """Whether two dataset specs name the same file or folder."""
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b
