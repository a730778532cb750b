"""The production gallery: adding items embedded by production, its composition, and search.

No torch: ``gallery add`` embeds through the production generation's ONNX artifact, as a server would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from registry import Generation, Registry

from upgrader.compat.metrics import class_templates
from upgrader.compat.score_calibration import Calibration
from upgrader.core.faults import fault_point
from upgrader.data.items import item_uris, load_items, parse_classes
from upgrader.runtime.embedder import Embedder
from upgrader.runtime.images import load_image
from upgrader.core.errors import DataError, InvalidRequest, NoProduction
from upgrader.services.registration import open_embedder
from upgrader.services.workspace_init import check_gallery_split, gallery_pool, probe_pixels
from upgrader.runtime.index import GallerySearch, Hit
from upgrader.runtime.kernels import check_score_maps
from upgrader.services.workspace import Workspace


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


def production_embedder(ws: Workspace, *, threads: int | None = None) -> tuple[Generation, Embedder]:
    """The production generation and its artifact, loaded (sha checked).

    Raises:
        NoProduction: nothing is in production yet.
    """
    prod = ws.registry.get_alias()
    if prod is None:
        raise NoProduction("no production generation; promote one first", subject="production")
    gen = ws.registry.get_generation(prod)
    return gen, open_embedder(ws, gen, threads=threads)


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


def load_search(ws: Workspace) -> GallerySearch:
    """The whole gallery in an exact FAISS index."""
    reg = ws.registry
    index = GallerySearch(reg.interface().embedding_dim)
    index.add_gallery(reg.load_gallery())
    return index


class CalibrationUnusable(DataError):
    """The score calibration stored for production cannot be applied: unreadable, a scale that is not
    positive, or fitted for another generation's queries."""


#: How often the alias is read again when a promotion commits between the reads of one snapshot.
_CONSISTENT_READS = 5


def serving_calibration(registry: Registry) -> tuple[int | None, Calibration | None]:
    """Production's generation id and the score calibration its queries are ranked with, read together.

    The alias is read before and after the calibration (one registry snapshot each), again until the
    two reads agree, so a promotion committed meanwhile never pairs one generation's embedder with
    another's calibration. ``(None, None)`` when nothing is in production; the calibration is None
    when the move that made production cited no report with one (a forced move, an older gate).

    Raises:
        CalibrationUnusable: the stored calibration cannot be applied to production's queries.
        AliasTampered: the alias disagrees with its history.
    """
    for _ in range(_CONSISTENT_READS):
        before = registry.get_alias()
        stored = registry.serving_calibration()
        if registry.get_alias() == before:
            break
    if before is None or stored is None:
        return before, None
    try:
        cal = Calibration.from_dict(stored)
        check_score_maps(score_maps(cal) or {})
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CalibrationUnusable(
            f"the score calibration stored with production's gate report cannot be applied ({exc}); "
            "re-run the promotion to store a new one, or search without calibration"
        ) from None
    if cal.query_gen != before:
        raise CalibrationUnusable(
            f"the score calibration stored for production (generation {before}) was fitted for queries of "
            f"generation {cal.query_gen}; re-run the promotion to store a new one, or search without calibration"
        )
    return before, cal


def score_maps(calibration: Calibration | None) -> dict[int, tuple[float, float]] | None:
    """The calibration as ``GallerySearch`` score maps (gallery generation -> (scale, shift)); None for none."""
    if calibration is None or calibration.is_identity:
        return None
    return {g: (m.scale, m.shift) for g, m in calibration.maps.items()}


class ImageSearch(NamedTuple):
    """What :func:`search_images` found, and how it ranked."""

    generation: Generation  # production: the generation that embedded the queries
    hits: list[list[Hit]]  # per query, best first
    calibration: Calibration | None  # the score maps applied (None: raw cosine similarity)


def search_images(ws: Workspace, images: np.ndarray, k: int = 5, *, calibrate: bool = True) -> ImageSearch:
    """Embed query images with production and search the whole mixed gallery for the ``k`` nearest.

    With ``calibrate`` (the default) each item's score is mapped by its generation's score map from
    the calibration stored with production's gate report before the top-k is taken, as ``upgrader
    serve`` ranks; results of one generation keep their order either way.

    Raises:
        InvalidRequest: ``k`` below 1 or above the gallery's size, or an empty gallery.
        NoProduction: nothing promoted. CalibrationUnusable: the stored calibration cannot be applied.
    """
    check_k(k)
    prod, cal = serving_calibration(ws.registry)
    if prod is None:
        raise NoProduction("no production generation; promote one first", subject="production")
    gen = ws.registry.get_generation(prod)
    embedder = open_embedder(ws, gen)
    index = load_search(ws)
    if len(index) == 0:
        raise InvalidRequest("the gallery is empty; add items first", subject="gallery")
    if k > len(index):
        raise InvalidRequest(
            f"asked for {k} results per query but the gallery holds {len(index)} items; ask for at most {len(index)}"
        )
    applied = cal if calibrate else None
    return ImageSearch(gen, index.search(embedder.embed(images), k, score_maps(applied)), applied)


def check_k(k: int) -> None:
    """Refuse a result count below 1 (a front end checks before it opens the gallery)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidRequest(f"the number of results per query must be a whole number of at least 1, got {k!r}")


def read_query_images(ws: Workspace, files: Sequence[Path]) -> np.ndarray:
    """Image files resized to the production artifact's input shape, as uint8 NHWC."""
    _, embedder = production_embedder(ws)
    return np.stack([load_image(f, embedder.image_shape) for f in files])


def template_accuracy(
    queries: np.ndarray, query_labels: Sequence[str], gallery: np.ndarray, gallery_labels: Sequence[str | None]
) -> float:
    """Share of queries whose nearest class template is their class (the primary protocol of docs/design.md §3):
    a template is the mean of a label's gallery items, re-normalised. Queries whose label is absent
    from the gallery, and unlabelled items, are left out."""
    glabels = np.array(list(gallery_labels), dtype=object)
    labelled = np.array([lbl is not None for lbl in glabels], dtype=bool)
    names = sorted(set(glabels[labelled]))
    qlabels = np.array(list(query_labels), dtype=object)
    keep = np.isin(qlabels, names)
    if not keep.any():
        return float("nan")
    index = {name: i for i, name in enumerate(names)}
    classes, templates = class_templates(gallery[labelled], [index[lbl] for lbl in glabels[labelled]])
    nearest = classes[np.argmax(queries[keep] @ templates.T, axis=1)]  # [Q'] class index of the top-1 template
    return float(np.mean(np.array(names, dtype=object)[nearest] == qlabels[keep]))


def label_accuracy(queries: np.ndarray, query_labels: Sequence[str], gallery: np.ndarray, gallery_labels: Sequence[str | None]) -> float:
    """Share of queries whose nearest gallery item (cosine) has the query's label; queries whose label
    is absent from the gallery are left out."""
    present = set(gallery_labels)
    keep = np.array([lbl in present for lbl in query_labels])
    if not keep.any():
        return float("nan")
    nearest = np.argmax(queries[keep] @ gallery.T, axis=1)  # [Q'] row of the top-1 item
    glabels = np.array(list(gallery_labels), dtype=object)
    qlabels = np.array(list(query_labels), dtype=object)[keep]
    return float(np.mean(glabels[nearest] == qlabels))
