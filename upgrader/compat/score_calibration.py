"""Cross-generation score calibration: make one query generation's scores comparable across galleries.

Pure numpy. A mixed gallery holds items embedded by several generations, and a query embedded by one
generation scores the items of its own generation higher than equally good items of older ones
(measured on the demo: same-class cosine 0.91 to its own items, 0.79 and 0.70 to two older
generations'), so a similar class written recently outranks the right class written long ago.

The fix is one monotone transform per (query generation, gallery generation) pair,
``s' = scale * s + shift`` with ``scale > 0``, fitted from the registry's probe embeddings. Within one
gallery generation the order of results never changes (a positive affine map keeps it); only how the
generations' score ranges interleave does. Two statistics per gallery generation ``g``, over the
queries of the classes ``g`` knows, decide a nearest-item search:

- ``P_g``: the mean over queries of the best score of a same-class item of ``g``;
- ``N_g``: the mean over queries of the best score of an other-class item of ``g``.

Two fits (:data:`MODES`), both onto the reference gallery (the query generation's own, when it has
one):

- ``shift`` (the default): ``scale = 1``, ``shift = N_ref - N_g``, so the strongest wrong match scores
  alike whichever generation stored it, and a generation's items win only by being right.
- ``affine``: scale and shift matching both ``P`` and ``N``; a generation whose ``P_g - N_g`` is too
  small to divide by gets a shift only.

Measured on the demo workspace (held-out item Recall@1 on the probe gallery composed as after each
promotion, 5-fold cross-validated; steps 2/3/4): raw 73.3 / 61.3 / 74.1, affine 80.8 / 68.1 / 78.2,
shift 82.5 / 73.8 / 80.3, full re-index 84.5 / 78.4 / 82.8. The affine fit stretches the scores of a
generation that barely separates right from wrong (up to the 4x clip) and then does worse than no
calibration on the gallery as it stood (82.0 vs 86.0 raw at step 3); the shift never did.

Serving's default is neither: :mod:`upgrader.compat.search_calibration` fits the shifts to the search
itself and uses the moment shift only for generations the composed probe gallery lacks. Both moment
fits stay reachable (``method="shift"|"affine"`` of the estimate and of ``serving_calibration``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The fits :func:`fit_calibration` offers; the first is the default.
MODES: tuple[str, ...] = ("shift", "affine")

#: Scales outside this range are clipped: a map that stretches scores 4x is fitting noise.
SCALE_RANGE = (0.25, 4.0)
#: Below this separation (best positive minus best negative) a generation gets a shift only.
MIN_SEPARATION = 1e-3


@dataclass(frozen=True)
class ScoreMap:
    """``s' = scale * s + shift`` for the scores of one gallery generation's items."""

    scale: float = 1.0
    shift: float = 0.0

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """The mapped scores (float32 in, float32 out)."""
        return (np.float32(self.scale) * scores + np.float32(self.shift)).astype(np.float32, copy=False)


IDENTITY = ScoreMap()


@dataclass(frozen=True)
class Calibration:
    """The score maps a query generation applies to each gallery generation's items."""

    query_gen: int
    maps: dict[int, ScoreMap] = field(default_factory=dict)  # gallery generation -> map (missing: identity)

    def map_for(self, gallery_gen: int) -> ScoreMap:
        """The map for one gallery generation (identity when none was fitted)."""
        return self.maps.get(int(gallery_gen), IDENTITY)

    def apply(self, scores: np.ndarray, gallery_gens: np.ndarray) -> np.ndarray:
        """Map scores ``[..., N]`` of items written by ``gallery_gens`` ``[N]``; a new array."""
        gens = np.asarray(gallery_gens, dtype=np.int64)
        scale = np.ones(gens.shape, dtype=np.float32)
        shift = np.zeros(gens.shape, dtype=np.float32)
        for g, m in self.maps.items():
            sel = gens == g
            scale[sel], shift[sel] = m.scale, m.shift
        return (np.asarray(scores, dtype=np.float32) * scale + shift).astype(np.float32, copy=False)

    @property
    def is_identity(self) -> bool:
        """True when no map changes any score."""
        return all(m.scale == 1.0 and m.shift == 0.0 for m in self.maps.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as stored with the gate report."""
        return {"query_gen": self.query_gen,
                "maps": {str(g): {"scale": m.scale, "shift": m.shift} for g, m in sorted(self.maps.items())}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        """The inverse of :meth:`to_dict`."""
        maps = {int(g): ScoreMap(float(m["scale"]), float(m["shift"])) for g, m in dict(d.get("maps", {})).items()}
        return cls(int(d["query_gen"]), maps)


#: Queries scored against a gallery at once while fitting (keeps the score block small).
_CHUNK = 1024


def best_scores(
    queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the best score of a same-class item and of an other-class item (NaN when none).

    Args:
        queries: float ``[Q, D]``, L2-normalised. query_labels: ``[Q]``.
        gallery: float ``[N, D]``, L2-normalised. gallery_labels: ``[N]``.
    """
    q, g = np.asarray(queries, dtype=np.float32), np.asarray(gallery, dtype=np.float32)
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    pos, neg = np.empty(len(q)), np.empty(len(q))
    for start in range(0, len(q), _CHUNK):
        part = slice(start, start + _CHUNK)
        scores = q[part] @ g.T
        same = ql[part, None] == gl[None, :]
        pos[part] = np.where(same, scores, -np.inf).max(axis=1, initial=-np.inf)
        neg[part] = np.where(~same, scores, -np.inf).max(axis=1, initial=-np.inf)
    return np.where(np.isfinite(pos), pos, np.nan), np.where(np.isfinite(neg), neg, np.nan)


@dataclass(frozen=True)
class BestScores:
    """One query generation's queries against one gallery generation's fitting gallery (what a fit uses)."""

    pos: np.ndarray  # [Q] best same-class score (NaN where the gallery lacks the query's class)
    neg: np.ndarray  # [Q] best other-class score
    known: np.ndarray  # [Q] bool: the gallery holds the query's class
    classes: int  # classes the gallery holds


def best_score_table(
    queries: np.ndarray,
    query_labels: np.ndarray | Sequence[int],
    galleries: Mapping[int, tuple[np.ndarray, np.ndarray]],
) -> dict[int, BestScores]:
    """:func:`best_scores` of the queries against each gallery generation, computed once so that fits
    on subsets of the queries (cross-validation folds) need no more matrix products."""
    labels = np.asarray(query_labels)
    q = np.asarray(queries, dtype=np.float32)
    out: dict[int, BestScores] = {}
    for g, (emb, glabels) in galleries.items():
        gl = np.asarray(glabels)
        pos, neg = best_scores(q, labels, np.asarray(emb, dtype=np.float32), gl)
        out[int(g)] = BestScores(pos, neg, np.isin(labels, gl), int(np.unique(gl).size))
    return out


def _moments(best: BestScores, rows: np.ndarray | None) -> tuple[float, float] | None:
    """(mean best positive, mean best negative) over the queries (of ``rows``) whose class the gallery holds."""
    sel = best.known if rows is None else best.known & rows
    if not sel.any() or best.classes < 2:
        return None
    return float(np.nanmean(best.pos[sel])), float(np.nanmean(best.neg[sel]))


def fit_calibration(
    query_gen: int,
    queries: np.ndarray,
    query_labels: np.ndarray | Sequence[int],
    galleries: Mapping[int, tuple[np.ndarray, np.ndarray]],
    *,
    reference: int | None = None,
    mode: str = MODES[0],
) -> Calibration:
    """Fit one query generation's score maps from probe embeddings.

    Args:
        query_gen: the generation that embedded ``queries``.
        queries: float ``[Q, D]`` probe queries embedded by ``query_gen``; ``query_labels`` ``[Q]``.
        galleries: gallery generation -> (its probe gallery embeddings ``[N, D]``, their labels ``[N]``),
            each restricted to the classes that generation knows.
        reference: the gallery generation whose scores the others are mapped onto; default
            ``query_gen`` when it is among ``galleries``, else the one with most classes.
        mode: ``shift`` (align the best wrong matches) or ``affine`` (align best right and wrong matches).

    Returns:
        The calibration; the reference and any generation without two known classes keep the identity.
    """
    return fit_from_table(query_gen, best_score_table(queries, query_labels, galleries), reference=reference, mode=mode)


def fit_from_table(
    query_gen: int, table: Mapping[int, BestScores], rows: np.ndarray | None = None, *,
    reference: int | None = None, mode: str = MODES[0],
) -> Calibration:
    """:func:`fit_calibration` from precomputed best scores, on the queries of ``rows`` (bool ``[Q]``;
    None: all): the same fit as :func:`fit_calibration` on those queries."""
    if mode not in MODES:
        raise ValueError(f"unknown calibration mode {mode!r}; use one of {', '.join(MODES)}")
    if not table:
        return Calibration(int(query_gen))
    if reference is None:
        reference = query_gen if query_gen in table else max(table, key=lambda g: (table[g].classes, g))
    ref = _moments(table[reference], rows)
    maps: dict[int, ScoreMap] = {}
    if ref is None:
        return Calibration(int(query_gen))
    p_ref, n_ref = ref
    for g, best in table.items():
        if g == reference:
            continue
        mom = _moments(best, rows)
        if mom is None:
            continue
        p, n = mom
        if mode == "shift":
            maps[int(g)] = ScoreMap(1.0, float(n_ref - n))
            continue
        if p - n > MIN_SEPARATION and p_ref - n_ref > MIN_SEPARATION:
            scale = float(np.clip((p_ref - n_ref) / (p - n), *SCALE_RANGE))
        else:
            scale = 1.0
        maps[int(g)] = ScoreMap(scale, float(p_ref - scale * p))
    return Calibration(int(query_gen), maps)
