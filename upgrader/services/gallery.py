"""The production gallery: adding items embedded by production, removing them, and its composition.

No torch: ``gallery add`` embeds through the production generation's ONNX artifact, as a server would.
Searching the gallery (production's embedder, the serving calibration, top-k search, the accuracy
measures) is in :mod:`upgrader.services.gallery_search`; its names are imported back here, so the
importers of this module keep one place to import the gallery's API from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from registry import Generation

from upgrader.core.errors import InvalidRequest
from upgrader.core.faults import fault_point
from upgrader.data.items import item_uris, load_items, parse_classes
from upgrader.services.gallery_search import (  # the read side, re-exported (module docstring)
    CalibrationUnusable,
    ImageSearch,
    check_k,
    label_accuracy,
    load_search,
    production_embedder,
    read_query_images,
    score_maps,
    search_images,
    serving_calibration,
    template_accuracy,
)
from upgrader.services.workspace import Workspace
from upgrader.services.workspace_init import check_gallery_split, gallery_pool, probe_pixels


@dataclass(frozen=True)
class GalleryComposition:
    """How many gallery items each generation wrote."""

    counts: list[tuple[Generation, int]]  # (generation, items), ascending generation id
    total: int
    production: int | None

    @property
    def share_on_old(self) -> float:
        """Fraction of items written by generations other than production (0 for an empty gallery)."""
        if self.total == 0:
            return 0.0
        return sum(n for g, n in self.counts if g.id != self.production) / self.total


@dataclass(frozen=True)
class GalleryAdd:
    """What one add did: items embedded and stored, and ids left as they were."""

    added: int  # embedded by production and stored now
    skipped: int  # already in the gallery (a resumed add): left as they are
    skipped_other: int = 0  # of those, embedded by a generation other than production (kept only when asked)
    notes: tuple[str, ...] = ()  # where the items came from, and what a per-class cap could not get
    shortfall: dict[str, int] | None = None  # class -> items it had, for the classes below a per-class cap


class ItemsExist(InvalidRequest):
    """Ids of an add that the gallery holds already, where the add may not skip them.

    ``reason`` is ``"items-exist"`` (skipping was not asked for) or ``"items-by-other-generation"``
    (held by a generation other than production, whose embeddings a resumed add would silently keep);
    ``details`` has ``count``, ``preview`` and, for the latter, ``generations`` and ``production``.
    """

    def __init__(self, message: str, reason: str, **details: str) -> None:
        super().__init__(message, subject="gallery")
        self.reason = reason
        self.details = details


def add_images(
    ws: Workspace,
    images: np.ndarray,
    external_ids: Sequence[str],
    *,
    labels: Sequence[str | None] | None = None,
    source_uris: Sequence[str | None] | None = None,
    batch_size: int = 1024,
    progress: Callable[[int, int], None] | None = None,
    skip_existing: bool = False,
    skip_other_generations: bool = False,
) -> GalleryAdd:
    """Embed uint8 NHWC images with production and store them, one all-or-nothing batch at a time.

    Each batch commits on its own, so a killed add keeps the batches before it; run again with
    ``skip_existing`` it resumes: ids the gallery holds are skipped (nothing is embedded twice).
    An id held by a generation other than production is refused unless ``skip_other_generations``,
    since skipping it keeps an older model's embedding where the caller asked for production's.

    Raises:
        ItemsExist: ids already in the gallery that may not be skipped; nothing is written.
        InvalidRequest: images and ids of different lengths.
    """
    if len(images) != len(external_ids):
        raise InvalidRequest(f"{len(images)} images but {len(external_ids)} ids; give one id per image")
    gen, embedder = production_embedder(ws)
    ids = [str(x) for x in external_ids]
    existing = ws.registry.existing_external_ids(ids) if ids else set()
    others = _check_existing(ws, existing, gen, skip_existing, skip_other_generations)
    todo = np.array([i for i, x in enumerate(ids) if x not in existing], dtype=np.int64)
    done = 0
    if progress and len(todo):
        progress(0, len(todo))  # checked: embedding starts
    for start in range(0, len(todo), batch_size):
        rows = todo[start : start + batch_size]
        feats = embedder.embed(images[rows])  # [B, D]
        ws.registry.add_gallery_items(
            gen.id,
            [ids[i] for i in rows],
            feats,
            labels=[labels[i] for i in rows] if labels is not None else None,
            source_uris=[source_uris[i] for i in rows] if source_uris is not None else None,
        )
        fault_point("gallery:batch")  # the batch is committed; the next one is not
        done += len(rows)
        if progress:
            progress(done, len(todo))
    return GalleryAdd(added=done, skipped=len(ids) - len(todo), skipped_other=others)


def _check_existing(ws: Workspace, existing: set[str], prod: Generation, skip: bool, skip_other: bool) -> int:
    """Refuse ids already in the gallery unless they may be skipped; returns how many of them other
    generations than production embedded."""
    if not existing:
        return 0
    shown = ", ".join(sorted(existing)[:3]) + (", ..." if len(existing) > 3 else "")
    if not skip:
        raise ItemsExist(
            f"{len(existing)} of the ids are already in the gallery ({shown}); skip them to resume an "
            "earlier add, remove them first, or use other ids",
            "items-exist", count=str(len(existing)), preview=shown,
        )
    held = _held_by_other_generations(ws, existing, prod.id)
    if held and not skip_other:
        names = ", ".join(sorted({ws.registry.get_generation(g).name for g in held.values()}))
        sample = ", ".join(sorted(held)[:3]) + (", ..." if len(held) > 3 else "")
        raise ItemsExist(
            f"{len(held)} of the ids are already in the gallery embedded by {names}, not by production "
            f"{prod.name} ({sample}); remove them first to have production embed them, or skip them "
            "knowingly to keep the older embeddings",
            "items-by-other-generation",
            count=str(len(held)), preview=sample, generations=names, production=prod.name,
        )
    return len(held)


def _held_by_other_generations(ws: Workspace, ids: set[str], production_id: int) -> dict[str, int]:
    """Which of ``ids`` (all in the gallery) a generation other than production wrote: id -> generation."""
    others = [g for g in ws.registry.gallery_counts() if g != production_id]
    if not others:  # the usual resume: only production has written
        return {}
    rows = ws.registry.load_gallery(generation_ids=others)
    return {eid: int(g) for eid, g in zip(rows.external_ids, rows.generation_ids) if eid in ids}


def add_dataset(
    ws: Workspace,
    spec: str,
    *,
    split: str = "test",
    classes: str = "all",
    per_class: int | None = None,
    seed: int = 0,
    id_prefix: str | None = None,
    batch_size: int = 1024,
    progress: Callable[[int, int], None] | None = None,
    skip_existing: bool = True,
    skip_other_generations: bool = False,
) -> GalleryAdd:
    """Add items of a dataset (never probe items) to the gallery, embedded by production.

    External ids are ``<prefix><index>``, or ``<prefix><relative path>`` for an image folder's files
    (default prefix ``<split>-``), and the per-class draw is seeded, so the same request names the
    same items: run again after a crash it resumes, skipping what the gallery holds
    (``skip_existing``, the default; see :func:`add_images`). An item with the pixels of a probe
    item is never added, whatever its name or position.
    """
    check_gallery_split(split)
    probe = probe_pixels(ws)  # uint8 [P, H, W, C]: never gallery items; their shape is the workspace's
    ds = load_items(spec, split, image_shape=probe.shape[1:])
    names = parse_classes(classes, ds.classes)
    pool = gallery_pool(ws, spec, split, ds)  # the split's items, probe items left out
    wanted = np.flatnonzero(np.isin(ds.labels, [ds.classes.index(n) for n in names]) & pool.mask)
    notes, short = list(pool.notes), None
    if per_class is not None:
        rng = np.random.default_rng(seed)
        keep = []
        for c in np.unique(ds.labels[wanted]):
            idx = wanted[ds.labels[wanted] == c]
            keep.append(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        short = {n: int((ds.labels[wanted] == ds.classes.index(n)).sum()) for n in names}
        short = {n: k for n, k in short.items() if k < per_class}
        wanted = np.sort(np.concatenate(keep)) if keep else wanted[:0]
        if short:
            notes.append(f"{len(wanted)} of the {per_class * len(names)} items asked for ({len(names)} classes x "
                         f"{per_class}): " + ", ".join(f"class {n!r} has only {k} {pool.words}items" for n, k in short.items()))
    if len(wanted) == 0:
        raise InvalidRequest(f"no {pool.words}items of classes {list(names)} in {spec} ({split}) outside the probe set")
    prefix = id_prefix if id_prefix is not None else pool.prefix
    part = ds.take(wanted)
    where = part.item_names if part.item_names is not None else [str(i) for i in wanted]
    added = add_images(
        ws,
        part.images,
        [f"{prefix}{w}" for w in where],
        labels=part.class_names(),
        source_uris=item_uris(spec, split, wanted, ds),
        batch_size=batch_size,
        progress=progress,
        skip_existing=skip_existing,
        skip_other_generations=skip_other_generations,
    )
    return replace(added, notes=tuple(notes), shortfall=short)


@dataclass(frozen=True)
class GalleryRemoval:
    """What one removal did."""

    deleted: int  # items removed
    not_found: int  # ids asked for that the gallery did not hold (0 for a removal by generation)


def remove_items(
    ws: Workspace, external_ids: Sequence[str] | None = None, *, generation: int | str | None = None
) -> GalleryRemoval:
    """Remove gallery items by external id, or every item one generation wrote; one transaction.

    Ids the gallery does not hold are counted, not refused: a removal re-run after a crash, or of a
    list that overlaps what was removed before, still completes.

    Raises:
        InvalidRequest: both or neither of ``external_ids`` and ``generation``, or no ids.
        UnknownGeneration: ``generation`` names none.
    """
    if (external_ids is None) == (generation is None):
        raise InvalidRequest("remove gallery items by external ids or by generation: give exactly one")
    if generation is not None:
        gen = ws.registry.get_generation(generation)
        return GalleryRemoval(deleted=ws.registry.delete_gallery_items(generation=gen.id), not_found=0)
    assert external_ids is not None
    ids = list(dict.fromkeys(str(x) for x in external_ids))
    if not ids:
        raise InvalidRequest("no external ids given; name the gallery items to remove")
    deleted = ws.registry.delete_gallery_items(ids)
    return GalleryRemoval(deleted=deleted, not_found=len(ids) - deleted)


def composition(ws: Workspace) -> GalleryComposition:
    """Items per generation, the total, and production."""
    reg = ws.registry
    counts = reg.gallery_counts()
    gens = [(reg.get_generation(gid), n) for gid, n in sorted(counts.items())]
    return GalleryComposition(counts=gens, total=sum(counts.values()), production=reg.get_alias())


__all__ = [
    "CalibrationUnusable", "GalleryAdd", "GalleryComposition", "GalleryRemoval", "ImageSearch", "ItemsExist",
    "add_dataset", "add_images", "check_k", "composition", "label_accuracy", "load_search", "production_embedder",
    "read_query_images", "remove_items", "score_maps", "search_images", "serving_calibration", "template_accuracy",
]
