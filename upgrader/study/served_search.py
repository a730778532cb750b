"""The search users get, measured the way a user would: held-out queries through the served index.

The demo and the study lead with these numbers. A query set of dataset images that are neither in
the gallery nor in the probe set (so neither the gate's calibration nor the gallery has seen them) is
embedded by production's ONNX artifact and searched, nearest item first, with the same
:class:`upgrader.runtime.index.GallerySearch` and the same stored score maps that ``upgrader serve``
uses (:func:`upgrader.services.gallery.serving_calibration`). Top-1 is right when the nearest item
has the query's label. Measured on the gallery as it stands:

* **raw**: plain cosine (``upgrader serve --no-calibration``);
* **calibrated**: with the calibration production's promotion stored (what ``serve`` answers with);
* **backfill**: calibrated, after re-embedding 5/10/20% of the gallery in each policy's order
  (:func:`upgrader.services.backfill.ordered_sources`, the order ``upgrader gallery backfill`` takes;
  ``random`` averaged over :data:`RANDOM_DRAWS` orders), done in memory: the workspace is not changed;
* **re-index**: every gallery item re-embedded from its source by production.

Writes nothing to the workspace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from registry import GalleryMatrix

from upgrader.compat.backfill_plan import POLICIES, order_groups
from upgrader.data.items import SourceReader, UnreadableSource
from upgrader.runtime.embedder import Embedder
from upgrader.runtime.index import GallerySearch, ScoreMaps
from upgrader.services.backfill import ordered_sources, plan_backfill
from upgrader.services.gallery import production_embedder, score_maps, serving_calibration
from upgrader.services.workspace import Workspace

#: Fractions of the gallery re-embedded that the demo and the study report.
BACKFILL_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.2)
#: Fractions of the backfill curve (the figure): the gallery as it is, the reported ones, a re-index.
CURVE_FRACTIONS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
#: Random orders the ``random`` curve averages (one draw is a coin toss, not a baseline).
RANDOM_DRAWS = 5


@dataclass
class ServedSearch:
    """Served nearest-item top-1 of held-out queries on one gallery state (fractions of 1)."""

    queries: int  # held-out queries scored (those whose class the gallery holds)
    gallery_items: int
    raw: float
    calibrated: float
    reindex: float
    # policy -> [(fraction of the gallery, items re-embedded, calibrated top-1)], CURVE_FRACTIONS
    backfill: dict[str, list[tuple[float, int, float]]] = field(default_factory=dict)
    unreadable: int = 0  # gallery items whose source could not be read (kept as stored)

    def after_backfill(self, fraction: float, policy: str = POLICIES[0]) -> float | None:
        """Calibrated top-1 after ``fraction`` of the gallery was re-embedded in ``policy``'s order."""
        for f, _, acc in self.backfill.get(policy, []):
            if abs(f - fraction) < 1e-9:
                return acc
        return None


def _top1(matrix: GalleryMatrix, queries: np.ndarray, labels: Sequence[str], maps: ScoreMaps | None) -> float:
    """Share of queries whose nearest item (under ``maps``) carries their label: the served ranking."""
    index = GallerySearch(matrix.matrix.shape[1])
    index.add_gallery(matrix)
    _, positions = index.search_arrays(queries, 1, maps)
    hits = index.hits_from(np.zeros_like(positions, dtype=np.float32), positions)
    return float(np.mean([bool(h) and h[0].label == lbl for h, lbl in zip(hits, labels)]))


def _with_rows(stored: GalleryMatrix, rows: Mapping[str, np.ndarray], production: int) -> GalleryMatrix:
    """``stored`` with the items of ``rows`` (external id -> production's embedding) re-embedded."""
    matrix = stored.matrix.copy()
    gens = stored.generation_ids.copy()
    for i, ext in enumerate(stored.external_ids):
        if ext in rows:
            matrix[i] = rows[ext]
            gens[i] = production
    return GalleryMatrix(stored.row_ids, stored.external_ids, gens, stored.labels, np.ascontiguousarray(matrix))


def _reembedded(ws: Workspace, embedder: Embedder, production: int) -> tuple[dict[str, np.ndarray], int]:
    """Production's embedding of every stored item it did not write, read from its source (as a backfill
    would); and how many sources could not be read."""
    reader = SourceReader(ws.registry.probe_set("query").images.shape[1:])
    old = [g for g in ws.registry.live_generations() if g != production]
    ids, images, unreadable = [], [], 0
    for src in ws.registry.gallery_sources(generation_ids=old) if old else []:
        try:
            images.append(reader.read(src.source_uri))
            ids.append(src.external_id)
        except UnreadableSource:
            unreadable += 1
    if not ids:
        return {}, unreadable
    feats = embedder.embed(np.stack(images))
    return dict(zip(ids, feats)), unreadable


def measure_served(ws: Workspace, images: np.ndarray, labels: Sequence[str], *, curves: bool = True) -> ServedSearch:
    """Served top-1 of held-out ``images`` (uint8 ``[Q, H, W, C]``, labelled) on ``ws``'s gallery as it is.

    Queries whose class the gallery does not hold are left out. ``curves=False`` skips the backfill
    curves (they plan a backfill per policy on the probe set, the slow part).

    Raises:
        NoProduction: nothing is in production. ArtifactError: an artifact is unusable.
    """
    prod, embedder = production_embedder(ws)
    stored = ws.registry.load_gallery()
    held = {lbl for lbl in stored.labels if lbl is not None}
    keep = np.array([lbl in held for lbl in labels], dtype=bool)
    q_labels = [lbl for lbl, k in zip(labels, keep) if k]
    if not q_labels:
        return ServedSearch(0, len(stored), float("nan"), float("nan"), float("nan"))
    queries = embedder.embed(np.asarray(images)[keep])
    _, cal = serving_calibration(ws.registry)
    maps = score_maps(cal)
    rows, unreadable = _reembedded(ws, embedder, prod.id)
    out = ServedSearch(
        queries=len(q_labels), gallery_items=len(stored),
        raw=_top1(stored, queries, q_labels, None),
        calibrated=_top1(stored, queries, q_labels, maps),
        reindex=_top1(_with_rows(stored, rows, prod.id), queries, q_labels, maps),
        unreadable=unreadable,
    )
    if curves and rows:
        def curve(order: list[str]) -> list[tuple[float, int, float]]:
            points = []
            for f in CURVE_FRACTIONS:
                n = min(int(round(f * len(stored))), len(order))  # parse_budget's rounding of "P%"
                chosen = {ext: rows[ext] for ext in order[:n]}
                points.append((f, n, _top1(_with_rows(stored, chosen, prod.id), queries, q_labels, maps)))
            return points

        plan = plan_backfill(ws, POLICIES[0])  # one probe estimate; the other policies reorder its groups
        for policy in POLICIES:
            draws = range(RANDOM_DRAWS) if policy == "random" else (0,)
            runs = []
            for seed in draws:
                drawn = plan if policy == plan.policy else replace(
                    plan, policy=policy, groups=order_groups(plan.holders, prod.id, policy, plan.estimate, seed=seed))
                runs.append(curve([s.external_id for s in ordered_sources(ws, drawn) if s.external_id in rows]))
            out.backfill[policy] = [(f, n, float(np.mean([r[i][2] for r in runs])))
                                    for i, (f, n, _) in enumerate(runs[0])]
    return out


__all__ = ["BACKFILL_FRACTIONS", "CURVE_FRACTIONS", "ServedSearch", "measure_served"]
