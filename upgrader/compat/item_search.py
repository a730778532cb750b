"""Item-level search on a probe gallery composed like the real one: the number users get.

Pure numpy. A retrieval service answers with the nearest *items* of a gallery whose classes were
embedded by different generations. This module rebuilds that gallery from the probe set (each probe
gallery item of a class is taken from the embeddings of a generation that stores that class in the
real gallery, in proportion to how many real items each stores) and scores probe queries on it:
Recall@1 and mAP per query, with the score calibration serving applies
(:mod:`upgrader.compat.score_calibration`) fitted by cross-validation, so no query is scored by a
calibration fitted on it, and a bootstrap 95% interval over queries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from upgrader.compat.metrics import _average_precision
from upgrader.compat.score_calibration import MODES, Calibration, best_score_table, fit_calibration, fit_from_table
from upgrader.compat.search_calibration import fit_search_shifts

#: Gallery generation marker of a probe gallery item left out of the composed gallery.
LEFT_OUT = -1
#: Bootstrap resamples for an interval.
BOOTSTRAP_SAMPLES = 2000
#: Calibration fits, the default first: ``search`` (shifts maximising probe Recall@1 on the composed
#: gallery) beside the moment fits of :mod:`upgrader.compat.score_calibration` it is measured against.
CALIBRATION_METHODS: tuple[str, ...] = ("search", *MODES)
DEFAULT_CALIBRATION = CALIBRATION_METHODS[0]


def compose(
    gallery_labels: np.ndarray | Sequence[int],
    holders: Mapping[int, Mapping[int, int]],
    new_classes: Mapping[int, int] | None = None,
) -> np.ndarray:
    """Which generation stands in for each probe gallery item.

    Args:
        gallery_labels: ``[N]`` class vertex of each probe gallery item.
        holders: class vertex -> {generation: real gallery items of that class it stores}.
        new_classes: class vertex -> generation, for classes with no real items yet that a generation
            will write (the candidate's new classes once promoted).

    Returns:
        int64 ``[N]``: the generation of each item, or :data:`LEFT_OUT` for a class no one stores.
        Within a class the items are shared out in proportion to the real counts (largest
        remainder), in item order, so the result is deterministic.
    """
    labels = np.asarray(gallery_labels, dtype=np.int64)
    out = np.full(labels.shape, LEFT_OUT, dtype=np.int64)
    for v in np.unique(labels):
        idx = np.flatnonzero(labels == v)
        counts = {int(g): int(n) for g, n in holders.get(int(v), {}).items() if n > 0}
        if not counts and new_classes and int(v) in new_classes:
            counts = {int(new_classes[int(v)]): 1}
        if not counts:
            continue
        total = sum(counts.values())
        gens = sorted(counts)
        exact = np.array([len(idx) * counts[g] / total for g in gens])
        share = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - share), kind="stable")[: len(idx) - share.sum()]:
            share[i] += 1
        out[idx] = np.repeat(np.asarray(gens, dtype=np.int64), share)
    return out


def per_query(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    gallery_gens: np.ndarray,
    calibration: Calibration | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Hit at rank 1 (0/1) and average precision of each query on one gallery: ``([Q], [Q])``.

    Queries whose class has no item in the gallery cannot be scored; leave them out before calling.
    """
    scores = np.asarray(queries, dtype=np.float32) @ np.asarray(gallery, dtype=np.float32).T
    if calibration is not None and not calibration.is_identity:
        scores = calibration.apply(scores, gallery_gens)
    relevant = np.asarray(query_labels)[:, None] == np.asarray(gallery_labels)[None, :]
    top = np.argmax(scores, axis=1)
    hits = relevant[np.arange(len(top)), top].astype(np.float64)
    return hits, _average_precision(scores, relevant)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap 95% interval."""

    value: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0 (for a difference: the two differ)."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


#: Values with at most this many distinct entries (hits, their paired differences) resample by counts.
_FEW_VALUES = 64
#: Resamples drawn at once for values with many distinct entries (bounds the index block).
_SAMPLE_CHUNK = 250


def bootstrap(values: np.ndarray, *, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> Interval:
    """Mean of ``values`` ``[Q]`` (per query; a paired difference works the same) with a percentile
    bootstrap 95% interval over queries.

    A resample's mean depends only on how often it draws each distinct value, so values with few
    distinct entries (0/1 hits, differences in {-1, 0, 1}) draw those counts from the multinomial
    directly: the same bootstrap distribution, without an index per query and resample (the gate runs
    a dozen of these on every verify).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    distinct, counts = np.unique(v, return_counts=True)
    if distinct.size <= _FEW_VALUES:
        means = rng.multinomial(v.size, counts / v.size, size=samples) @ distinct / v.size
    else:
        means = np.concatenate([v[rng.integers(0, v.size, size=(min(_SAMPLE_CHUNK, samples - i), v.size))].mean(axis=1)
                                for i in range(0, samples, _SAMPLE_CHUNK)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Interval(float(v.mean()), float(lo), float(hi))


def folds_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index of each query, stratified by class (each class spread over the folds)."""
    labels = np.asarray(labels)
    out = np.empty(labels.shape, dtype=np.int64)
    rng = np.random.default_rng(seed)
    for v in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == v))
        out[idx] = np.arange(len(idx)) % folds
    return out


@dataclass(frozen=True)
class SearchScores:
    """Per-query results of one search situation (kept for paired comparisons)."""

    hits: np.ndarray  # [Q] 0/1
    ap: np.ndarray  # [Q]
    labels: np.ndarray  # [Q] class vertex of each scored query

    def summary(self, seed: int = 0) -> dict[str, object]:
        """Recall@1 and mAP with their intervals, and how many queries they rest on."""
        return {"recall_at_1": bootstrap(self.hits, seed=seed).to_dict(),
                "map": bootstrap(self.ap, seed=seed + 1).to_dict(), "queries": int(self.hits.size)}


def cross_validated(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    gallery_gens: np.ndarray,
    embedded: Mapping[int, np.ndarray],
    known: Mapping[int, frozenset[int] | None],
    query_gen: int,
    *,
    calibrate: bool = True,
    folds: int = 5,
    seed: int = 0,
    fitter: Callable[..., Calibration] = fit_calibration,
    fit_gens: Sequence[int] | None = None,
    method: str | None = None,
    fit_composition: np.ndarray | None = None,
) -> SearchScores:
    """Score ``query_gen``'s queries on a composed gallery, calibration fitted on the other folds.

    Args:
        queries: ``[Q, D]`` probe queries embedded by ``query_gen``; query_labels ``[Q]``.
        gallery_labels: ``[N]`` class of each probe gallery item; gallery_gens ``[N]`` from :func:`compose`.
        embedded: generation -> its embeddings of the whole probe gallery ``[N, D]`` (same item order).
        known: generation -> the class vertices it was trained on (None: all); the calibration of a
            generation is fitted on those classes only (it has no useful features for the others).
        calibrate: False scores raw cosines (what serving did before calibration).
        fit_gens: the generations whose maps are fitted (default: those present in the composed
            gallery); pass the ones serving fits for (:func:`fit_galleries`), so the measured
            calibration is fitted exactly as the served one, only on other queries.
        method: the calibration fit (:data:`CALIBRATION_METHODS`; default :data:`DEFAULT_CALIBRATION`):
            ``search`` fits shifts that maximise Recall@1 on a composed gallery
            (:mod:`upgrader.compat.search_calibration`), ``shift``/``affine`` align best-score
            moments per generation (``fitter``, ``fit_gens``).
        fit_composition: ``search`` only: the composition ``[N]`` the shifts are fitted on (default
            ``gallery_gens``): the gallery serving's stored calibration was fitted for, when scoring
            another (a backfill's).
    """
    gallery, g_labels, g_gens = composed(embedded, gallery_labels, gallery_gens)
    q_labels = np.asarray(query_labels)
    scored = np.isin(q_labels, g_labels)
    q, q_labels = np.asarray(queries, dtype=np.float32)[scored], q_labels[scored]
    hits = np.zeros(len(q)); ap = np.zeros(len(q))
    if len(q) == 0:
        return SearchScores(hits, ap, q_labels)
    fold = folds_of(q_labels, folds, seed) if calibrate else np.zeros(len(q), dtype=np.int64)
    method = method or DEFAULT_CALIBRATION
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {', '.join(CALIBRATION_METHODS)}")
    if calibrate and method == "search" and fitter is fit_calibration:
        fit_g, fit_l, fit_gg = composed(embedded, gallery_labels,
                                        gallery_gens if fit_composition is None else fit_composition)
        fit = lambda train: fit_search_shifts(query_gen, q[train], q_labels[train], fit_g, fit_l, fit_gg)  # noqa: E731
    else:
        fit = _fold_fitter(calibrate, fitter, query_gen, q, q_labels,
                           fit_galleries(embedded, known, gallery_labels, g_gens if fit_gens is None else fit_gens)
                           if calibrate else {}, mode=method)
    for f in np.unique(fold):
        test = fold == f
        cal = fit(~test if folds > 1 else test) if calibrate else None
        hits[test], ap[test] = per_query(q[test], q_labels[test], gallery, g_labels, g_gens, cal)
    return SearchScores(hits, ap, q_labels)


def composed(
    embedded: Mapping[int, np.ndarray], gallery_labels: np.ndarray | Sequence[int], gallery_gens: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The composed probe gallery: (embeddings ``[M, D]``, labels ``[M]``, generations ``[M]``) of the
    items :func:`compose` kept, each embedded by the generation standing in for it."""
    gens = np.asarray(gallery_gens)
    keep = gens != LEFT_OUT
    g_labels, g_gens = np.asarray(gallery_labels)[keep], gens[keep]
    dim = next(iter(embedded.values())).shape[1] if embedded else 0
    gallery = np.empty((int(keep.sum()), dim), dtype=np.float32)
    for g in np.unique(g_gens):
        rows = g_gens == g
        gallery[rows] = np.asarray(embedded[int(g)], dtype=np.float32)[keep][rows]
    return gallery, g_labels, g_gens


def _fold_fitter(
    calibrate: bool, fitter: Callable[..., Calibration], query_gen: int, q: np.ndarray, q_labels: np.ndarray,
    fitting: Mapping[int, tuple[np.ndarray, np.ndarray]], *, mode: str,
) -> Callable[[np.ndarray], Calibration]:
    """``train rows -> calibration``. The moment fits' best scores are computed once for every
    query and each fold takes its rows (the same fit, without a matrix product per fold)."""
    if calibrate and fitter is fit_calibration:
        table = best_score_table(q, q_labels, fitting)
        return lambda train: fit_from_table(query_gen, table, train, mode=mode)
    return lambda train: fitter(query_gen, q[train], q_labels[train], fitting)


def fit_galleries(
    embedded: Mapping[int, np.ndarray], known: Mapping[int, frozenset[int] | None],
    gallery_labels: np.ndarray, gens: np.ndarray | Sequence[int],
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Each of ``gens``' whole probe gallery on the classes it knows (the calibration's fitting data)."""
    labels = np.asarray(gallery_labels)
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for g in np.unique(np.asarray(gens, dtype=np.int64)):
        classes = known.get(int(g))
        rows = np.ones(labels.shape, bool) if classes is None else np.isin(labels, list(classes))
        out[int(g)] = (np.asarray(embedded[int(g)], dtype=np.float32)[rows], labels[rows])
    return out
