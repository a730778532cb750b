"""Score shifts fitted to the search itself: maximise probe Recall@1 on the gallery as it is composed.

Pure numpy. :mod:`upgrader.compat.score_calibration` aligns summary statistics (the mean best wrong
match of each gallery generation), whatever the gallery holds. Measured on the demo workspaces with
held-out queries through the served index, that alignment leaves much of the gap to a re-index: a
generation's items of *which* classes compete with *which* others decides the search, and a mean over
all of a generation's classes does not see it. Quick demo after the replacement (gen 1 holds classes
0-3, the new resnet gen 3 holds 6-7): raw 49.0%, moment shift 56.3% (shift +0.16), this fit 67.3%
(+0.37), re-index 72.7%. Full demo after step 4 (four generations): raw 72.7%, moment shift 80.4%, this
fit 81.5%, re-index 82.9%.

The fit: the probe gallery composed like the real one (each class by the generation(s) storing it,
:func:`upgrader.compat.item_search.compose`), the query generation's probe queries scored on it; one
additive shift per gallery generation (the query generation's own, or the largest, stays at 0),
chosen by coordinate ascent on a grid to maximise Recall@1, each at the middle of its widest optimal
plateau (the value farthest from a change of any query's result). Shifts keep every generation's own
order (scale 1), so results within one generation never reorder.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from upgrader.compat.score_calibration import Calibration, ScoreMap

#: Shifts tried per generation (cosine units); beyond +-1 a generation would always or never win.
GRID = np.round(np.arange(-1.0, 1.0 + 1e-9, 0.005), 6)
#: Rounds of coordinate ascent over the generations (two already settle every demo workspace).
ROUNDS = 3
#: Queries scored at once while building the per-generation best scores.
_CHUNK = 1024


def best_per_generation(
    queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
    gallery_gens: np.ndarray, gens: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Per query and generation: the best score among that generation's items, and whether that item
    is of the query's class: ``([Q, G] float, [Q, G] bool)``; ``-inf`` where a generation has no item."""
    q = np.asarray(queries, dtype=np.float32)
    g = np.asarray(gallery, dtype=np.float32)
    ql, gl, gg = np.asarray(query_labels), np.asarray(gallery_labels), np.asarray(gallery_gens)
    best = np.full((len(q), len(gens)), -np.inf, dtype=np.float64)
    right = np.zeros((len(q), len(gens)), dtype=bool)
    for start in range(0, len(q), _CHUNK):
        part = slice(start, start + _CHUNK)
        scores = q[part] @ g.T
        for j, gen in enumerate(gens):
            cols = np.flatnonzero(gg == gen)
            if cols.size == 0:
                continue
            top = cols[np.argmax(scores[:, cols], axis=1)]
            best[part, j] = scores[np.arange(scores.shape[0]), top]
            right[part, j] = gl[top] == ql[part]
    return best, right


def _plateau_middle(values: np.ndarray) -> int:
    """Index of the middle of the widest run of ``values`` equal to their maximum."""
    at_max = values >= values.max() - 1e-12
    best_start, best_len, start = 0, 0, None
    for i, flag in enumerate(np.append(at_max, False)):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start > best_len:
                best_start, best_len = start, i - start
            start = None
    return best_start + (best_len - 1) // 2


def fit_search_shifts(
    query_gen: int,
    queries: np.ndarray,
    query_labels: np.ndarray | Sequence[int],
    gallery: np.ndarray,
    gallery_labels: np.ndarray | Sequence[int],
    gallery_gens: np.ndarray | Sequence[int],
    fallback: Calibration | None = None,
) -> Calibration:
    """Shifts per gallery generation that maximise ``query_gen``'s probe Recall@1 on a composed gallery.

    Args:
        queries: ``[Q, D]`` probe queries embedded by ``query_gen``; query_labels ``[Q]``.
        gallery: ``[N, D]`` composed probe gallery (each item embedded by its ``gallery_gens`` entry);
            ``gallery_labels`` ``[N]``. Queries whose class it lacks are left out.
        fallback: maps relative to ``query_gen``'s own scores (a moment fit) for the generations the
            composed gallery lacks (items they may store later, e.g. ones production adds after the
            move); and, when ``query_gen`` itself has no item there, the offset that puts the fitted
            shifts on its scale. None: only the composed gallery's generations are mapped.

    Returns:
        The calibration (identity, or the fallback, with fewer than two generations or no scorable query).
    """
    gl, gg = np.asarray(gallery_labels), np.asarray(gallery_gens, dtype=np.int64)
    ql = np.asarray(query_labels)
    gens = sorted(int(g) for g in np.unique(gg))
    scored = np.isin(ql, gl)
    base = dict(fallback.maps) if fallback is not None else {}
    if len(gens) < 2 or not scored.any():
        return Calibration(int(query_gen), base)
    counts = {g: int((gg == g).sum()) for g in gens}
    reference = int(query_gen) if int(query_gen) in counts else max(gens, key=lambda g: (counts[g], g))
    offset = base[reference].shift if reference in base else 0.0
    best, right = best_per_generation(np.asarray(queries)[scored], ql[scored], gallery, gl, gg, gens)
    shift = np.zeros(len(gens))
    free = [j for j, g in enumerate(gens) if g != reference]
    for _ in range(ROUNDS):
        moved = False
        for j in free:
            others = best + shift
            others[:, j] = -np.inf
            rival, rival_right = others.max(axis=1), right[np.arange(len(best)), others.argmax(axis=1)]
            # Recall@1 for every grid value of this generation's shift, the others held.
            wins = best[:, j][None, :] + GRID[:, None] > rival[None, :]
            recall = np.where(wins, right[:, j][None, :], rival_right[None, :]).mean(axis=1)
            value = float(GRID[_plateau_middle(recall)])
            moved |= value != shift[j]
            shift[j] = value
        if not moved:
            break
    fitted = {g: ScoreMap(1.0, float(shift[j] + offset)) for j, g in enumerate(gens) if g != int(query_gen)}
    return Calibration(int(query_gen), {**base, **fitted})


__all__ = ["GRID", "best_per_generation", "fit_search_shifts"]
