"""The production gallery: adding items embedded by production, its composition, and search.

No torch: ``gallery add`` embeds through the production generation's ONNX artifact, as a server would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registry import Generation

from upgrader.compat.metrics import class_templates
from upgrader.data.items import excluded_indices, item_uris, load_items, parse_classes
from upgrader.runtime.embedder import Embedder
from upgrader.runtime.images import load_image
from upgrader.core.errors import InvalidRequest, NoProduction
from upgrader.services.registration import open_embedder
from upgrader.services.workspace_init import probe_uris
from upgrader.runtime.index import GallerySearch, Hit
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


def add_images(
    ws: Workspace,
    images: np.ndarray,
    external_ids: Sequence[str],
    *,
    labels: Sequence[str | None] | None = None,
    source_uris: Sequence[str | None] | None = None,
    batch_size: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Embed uint8 NHWC images with production and store them, one all-or-nothing batch at a time."""
    if len(images) != len(external_ids):
        raise InvalidRequest(f"{len(images)} images but {len(external_ids)} ids; give one id per image")
    gen, embedder = production_embedder(ws)
    done = 0
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        feats = embedder.embed(images[start:stop])  # [B, D]
        ws.registry.add_gallery_items(
            gen.id,
            list(external_ids[start:stop]),
            feats,
            labels=list(labels[start:stop]) if labels is not None else None,
            source_uris=list(source_uris[start:stop]) if source_uris is not None else None,
        )
        done = stop
        if progress:
            progress(done, len(images))
    return done


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
) -> int:
    """Add items of a dataset (never probe items) to the gallery, embedded by production.

    External ids are ``<prefix><index>`` (default prefix ``<split>-``), so adding the same items twice
    is refused as a duplicate rather than stored twice.
    """
    ds = load_items(spec, split)
    names = parse_classes(classes, ds.classes)
    wanted = np.flatnonzero(np.isin(ds.labels, [ds.classes.index(n) for n in names]))
    wanted = np.setdiff1d(wanted, excluded_indices(spec, split, probe_uris(ws)))
    if per_class is not None:
        rng = np.random.default_rng(seed)
        keep = []
        for c in np.unique(ds.labels[wanted]):
            idx = wanted[ds.labels[wanted] == c]
            keep.append(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        wanted = np.sort(np.concatenate(keep)) if keep else wanted[:0]
    if len(wanted) == 0:
        raise InvalidRequest(f"no items of classes {list(names)} in {spec} ({split}) outside the probe set")
    prefix = id_prefix if id_prefix is not None else f"{split}-"
    part = ds.take(wanted)
    return add_images(
        ws,
        part.images,
        [f"{prefix}{i}" for i in wanted],
        labels=part.class_names(),
        source_uris=item_uris(spec, split, wanted),
        batch_size=batch_size,
        progress=progress,
    )


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


def search_images(ws: Workspace, images: np.ndarray, k: int = 5) -> tuple[Generation, list[list[Hit]]]:
    """Embed query images with production and search the whole mixed gallery."""
    gen, embedder = production_embedder(ws)
    index = load_search(ws)
    if len(index) == 0:
        raise InvalidRequest("the gallery is empty; add items first", subject="gallery")
    return gen, index.search(embedder.embed(images), k)


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
