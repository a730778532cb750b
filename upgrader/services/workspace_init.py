"""Creating a workspace with its interface and held-out probe set (``upgrader init``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from registry import PROBE_SPLITS

from upgrader.data.items import draw_per_class, has_splits, item_uris, load_items, parse_classes
from upgrader.core.errors import InvalidRequest
from upgrader.services.workspace import CONFIG_FILE, Workspace, WorkspaceConfig, create_workspace, resolve_home, save_config


def probe_uris(ws: Workspace) -> list[str]:
    """Item URIs of the whole probe set (both splits), to keep them out of training and galleries."""
    reg = ws.registry
    return [u for split in PROBE_SPLITS for u in reg.probe_set(split).source_uris if u]


def probe_pixels(ws: Workspace) -> np.ndarray:
    """The pixels of the whole probe set (both splits), uint8 NHWC: what training and galleries must
    never contain (see ``upgrader.data.items.probe_mask``)."""
    return np.concatenate([ws.registry.probe_set(split).images for split in PROBE_SPLITS])


def init_workspace(
    home: str | Path | None,
    *,
    dataset: str = "fashion-mnist",
    num_classes: int = 64,
    classes: str = "all",
    query_per_class: int = 100,
    gallery_per_class: int = 100,
    seed: int = 0,
    db_url: str | None = None,
    embedding_dtype: str = "float32",
) -> Workspace:
    """Create a workspace: registry migrated to head, interface K, and a labelled probe set.

    The probe set is drawn per class from the dataset's test split (IDX folders) or from the whole
    dataset (image folders, .npz), in a seeded order of each item's identity (relative path and pixel
    hash, never its position: adding a file moves no probe item); its pixels and URIs are stored, and
    training and gallery ingestion leave out every item with a probe item's pixels.
    Everything is checked before anything is written; a failure removes what was created.

    Raises:
        InvalidRequest: K too small for the classes, or bad sizes.
        WorkspaceError: a workspace exists at ``home`` already.
        DataError: the dataset cannot be read or has too few items per class.
    """
    ds, split, names, q_idx, g_idx = _draw_probe(dataset, classes, num_classes, query_per_class, gallery_per_class, seed)
    root = resolve_home(home)
    created_root = not root.exists()
    config = WorkspaceConfig(
        dataset=dataset,
        num_classes=num_classes,
        probe_query_per_class=query_per_class,
        probe_gallery_per_class=gallery_per_class,
        probe_split=split,
        seed=seed,
        db_url=db_url,
    )
    ws = create_workspace(root, config)
    try:
        reg = ws.registry
        reg.set_interface(num_classes, embedding_dtype=embedding_dtype)
        reg.assign_classes(names)
        for which, idx in (("query", q_idx), ("gallery", g_idx)):
            part = ds.take(idx)
            reg.add_probe_items(which, part.images, part.class_names(), item_uris(dataset, split, idx, ds))
        save_config(ws)
    except BaseException:
        ws.close()
        _remove_partial(root, created_root)
        raise
    return ws


def _draw_probe(dataset: str, classes: str, num_classes: int, query_per_class: int, gallery_per_class: int,
                seed: int) -> tuple[Any, str, list[str], np.ndarray, np.ndarray]:
    """Check the request and draw the probe set: (dataset items, split, class names, query idx, gallery idx)."""
    if num_classes < 2:
        raise InvalidRequest("K (the interface's class count) must be at least 2", subject="num_classes")
    if query_per_class < 1 or gallery_per_class < 1:
        raise InvalidRequest("the probe set needs at least 1 query and 1 gallery item per class")
    split = "test" if has_splits(dataset) else "all"
    ds = load_items(dataset, split)
    names = parse_classes(classes, ds.classes)
    if len(names) > num_classes:
        raise InvalidRequest(
            f"the dataset has {len(names)} classes but K is {num_classes}; choose K >= {len(names)} "
            "(preallocate room for future classes too)",
            subject="num_classes",
        )
    ds_sel_labels = np.array([names.index(ds.classes[i]) if ds.classes[i] in names else -1 for i in ds.labels])
    keys = ds.item_keys()
    q_idx = draw_per_class(keys, ds_sel_labels, len(names), query_per_class, seed)
    g_idx = draw_per_class(keys, ds_sel_labels, len(names), gallery_per_class, seed + 1, exclude=q_idx)

    return ds, split, names, q_idx, g_idx


def _remove_partial(root: Path, created_root: bool) -> None:
    """Undo a failed init: the folder it created, or the files it wrote into an existing one."""
    if created_root:
        shutil.rmtree(root, ignore_errors=True)
        return
    for leftover in ("registry.db", "registry.db-wal", "registry.db-shm", CONFIG_FILE):
        (root / leftover).unlink(missing_ok=True)
