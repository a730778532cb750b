"""Cross-generation score calibration: make one query generation's scores comparable across galleries.

Pure numpy. A mixed gallery holds items embedded by several generations, and a query embedded by one
generation scores the items of its own generation higher than equally good items of older ones
(measured on the demo: same-class cosine 0.91 to its own items, 0.79 and 0.70 to two older
generations'), so a similar class written recently outranks the right class written long ago.

The fix is one monotone transform per (query generation, gallery generation) pair,
``s' = scale * s + shift`` with ``scale > 0``, fitted from the registry's probe embeddings. Within one
gallery generation the order of results never changes (a positive affine map keeps it); only how the
generations' score ranges interleave does. The fit matches two moments of what decides a nearest-item
search, per gallery generation ``g`` and over the queries of the classes ``g`` knows:

- ``P_g``: the mean over queries of the best score of a same-class item of ``g``;
- ``N_g``: the mean over queries of the best score of an other-class item of ``g``,

to those of the reference gallery (the query generation's own, when it has one): after the map, a
correct match and the strongest wrong one score alike whichever generation stored them. A generation
whose ``P_g - N_g`` is too small to divide by gets a shift only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


def best_scores(
    queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the best score of a same-class item and of an other-class item (NaN when none).

    Args:
        queries: float ``[Q, D]``, L2-normalised. query_labels: ``[Q]``.
        gallery: float ``[N, D]``, L2-normalised. gallery_labels: ``[N]``.
    """
    scores = np.asarray(queries, dtype=np.float32) @ np.asarray(gallery, dtype=np.float32).T
    same = np.asarray(query_labels)[:, None] == np.asarray(gallery_labels)[None, :]
    pos = np.where(same, scores, -np.inf).max(axis=1, initial=-np.inf)
    neg = np.where(~same, scores, -np.inf).max(axis=1, initial=-np.inf)
    return np.where(np.isfinite(pos), pos, np.nan), np.where(np.isfinite(neg), neg, np.nan)


def _moments(
    queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray
) -> tuple[float, float] | None:
    """(mean best positive, mean best negative) over the queries whose class this gallery holds."""
    known = np.isin(query_labels, gallery_labels)
    if not known.any() or len(np.unique(gallery_labels)) < 2:
        return None
    pos, neg = best_scores(queries[known], query_labels[known], gallery, gallery_labels)
    return float(np.nanmean(pos)), float(np.nanmean(neg))


def fit_calibration(
    query_gen: int,
    queries: np.ndarray,
    query_labels: np.ndarray | Sequence[int],
    galleries: Mapping[int, tuple[np.ndarray, np.ndarray]],
    *,
    reference: int | None = None,
) -> Calibration:
    """Fit one query generation's score maps from probe embeddings.

    Args:
        query_gen: the generation that embedded ``queries``.
        queries: float ``[Q, D]`` probe queries embedded by ``query_gen``; ``query_labels`` ``[Q]``.
        galleries: gallery generation -> (its probe gallery embeddings ``[N, D]``, their labels ``[N]``),
            each restricted to the classes that generation knows.
        reference: the gallery generation whose scores the others are mapped onto; default
            ``query_gen`` when it is among ``galleries``, else the one with most classes.

    Returns:
        The calibration; the reference and any generation without two known classes keep the identity.
    """
    labels = np.asarray(query_labels)
    q = np.asarray(queries, dtype=np.float32)
    if not galleries:
        return Calibration(int(query_gen))
    if reference is None:
        reference = query_gen if query_gen in galleries else max(galleries, key=lambda g: (len(np.unique(galleries[g][1])), g))
    ref = _moments(q, labels, *galleries[reference])
    maps: dict[int, ScoreMap] = {}
    if ref is None:
        return Calibration(int(query_gen))
    p_ref, n_ref = ref
    for g, (emb, glabels) in galleries.items():
        if g == reference:
            continue
        mom = _moments(q, labels, np.asarray(emb, dtype=np.float32), np.asarray(glabels))
        if mom is None:
            continue
        p, n = mom
        if p - n > MIN_SEPARATION and p_ref - n_ref > MIN_SEPARATION:
            scale = float(np.clip((p_ref - n_ref) / (p - n), *SCALE_RANGE))
        else:
            scale = 1.0
        maps[int(g)] = ScoreMap(scale, float(p_ref - scale * p))
    return Calibration(int(query_gen), maps)
