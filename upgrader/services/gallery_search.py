"""Searching the production gallery: production's embedder, the score calibration its queries are
ranked with, top-k search of the whole mixed gallery, and the accuracy measures of docs/design.md §3.

The read side of the gallery, kept apart from :mod:`upgrader.services.gallery` (which writes it:
adding, removing, composition) so each module holds one side; ``gallery`` imports these names back,
so ``from upgrader.services.gallery import search_images`` and the like keep working.

No torch: queries are embedded through the production generation's ONNX artifact, as a server would.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from registry import Generation, Registry

from upgrader.compat.metrics import class_templates
from upgrader.compat.score_calibration import Calibration
from upgrader.core.errors import DataError, InvalidRequest, NoProduction
from upgrader.runtime.embedder import Embedder
from upgrader.runtime.images import load_image
from upgrader.runtime.index import GallerySearch, Hit
from upgrader.runtime.kernels import check_score_maps
from upgrader.services.registration import open_embedder
from upgrader.services.workspace import Workspace


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
