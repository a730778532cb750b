"""The search users get: a candidate's item-level accuracy on the gallery it will serve.

Pure numpy. The pairwise criterion scores one old gallery generation at a time with class templates,
but a served search ranks single items of a gallery whose classes were embedded by several
generations, and a generation scores its own items higher than older ones. So the gate also rebuilds
the gallery as it will be *after* the move from the probe set
(:func:`upgrader.compat.item_search.compose`: each class that has real items by the generations that
hold them, in proportion; the candidate's new classes by the candidate) and scores the candidate's
probe queries on it, item by item:

* **calibrated**: with the score calibration serving will apply
  (:mod:`upgrader.compat.score_calibration`), fitted the way serving fits it (:func:`serving_calibration`)
  but cross-validated, so no query is scored by a calibration fitted on it;
* **raw**: plain cosine (what serving without calibration gives);
* **re-index**: every probe gallery item embedded by the candidate (what re-embedding the gallery gives);
* **no regression**: the candidate's and production's probe queries, each with its own calibration, on
  the gallery as it stands now (the classes it holds), paired by probe query item (same images, two
  generations' embeddings).

Every number is a mean over probe queries with a bootstrap 95% interval
(:func:`upgrader.compat.item_search.bootstrap`), and every comparison an interval of the paired
per-query difference, so a verdict can say when the probe set cannot tell two numbers apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from upgrader.compat.item_search import (
    DEFAULT_CALIBRATION,
    LEFT_OUT,
    Interval,
    SearchScores,
    bootstrap,
    compose,
    composed,
    cross_validated,
    fit_galleries,
)
from upgrader.compat.mixed import ranges
from upgrader.compat.score_calibration import Calibration, fit_calibration
from upgrader.compat.search_calibration import fit_search_shifts

#: The item-level metrics, as named in reports: Recall@1 (nearest item right) and mAP.
ITEM_METRICS: tuple[str, ...] = ("recall_at_1", "map")
#: Folds of the cross-validated calibration (stratified by class; fixed seed: a verdict is repeatable).
FOLDS = 5
SEED = 0


def item_metric(primary_metric: str) -> str:
    """The item-level metric the rules use: mAP when the gate's primary metric is mAP, else Recall@1."""
    return "map" if primary_metric == "mean_ap" else "recall_at_1"


@dataclass(frozen=True)
class SearchSummary:
    """Recall@1 and mAP of one search situation, each with its bootstrap 95% interval."""

    recall_at_1: Interval
    map: Interval
    queries: int  # probe queries scored

    @classmethod
    def of(cls, scores: SearchScores) -> SearchSummary:
        return cls(bootstrap(scores.hits, seed=SEED), bootstrap(scores.ap, seed=SEED + 1), int(scores.hits.size))

    def get(self, metric: str) -> Interval:
        """One metric by its report name (:data:`ITEM_METRICS`)."""
        if metric not in ITEM_METRICS:
            raise ValueError(f"unknown item-level metric {metric!r}; known: {', '.join(ITEM_METRICS)}")
        return self.recall_at_1 if metric == "recall_at_1" else self.map

    def to_dict(self) -> dict[str, Any]:
        return {"recall_at_1": self.recall_at_1.to_dict(), "map": self.map.to_dict(), "queries": self.queries}


@dataclass(frozen=True)
class RegressionEstimate:
    """The candidate against production on the classes the gallery holds now, paired by probe query."""

    production: int
    classes: tuple[int, ...]  # the classes with real gallery items now
    candidate: SearchSummary  # the candidate's calibrated search on the gallery as it stands now
    production_now: SearchSummary  # production's calibrated search on the same gallery and queries
    difference: Interval  # candidate - production in the rules' metric, per query

    def to_dict(self) -> dict[str, Any]:
        return {"production": self.production, "classes": list(self.classes), "candidate": self.candidate.to_dict(),
                "production_now": self.production_now.to_dict(), "difference": self.difference.to_dict(),
                "distinguishable": self.difference.excludes_zero()}


@dataclass(frozen=True)
class ServedEstimate:
    """The candidate's item-level search on the probe gallery composed like the gallery after the move."""

    candidate: int
    metric: str  # the item-level metric the rules use (:func:`item_metric`)
    calibrated: SearchSummary
    raw: SearchSummary
    reindex: SearchSummary
    gap: Interval  # calibrated - re-index in ``metric``, paired by query (negative: a loss)
    composition: dict[int, dict[int, int]]  # class -> {generation: probe gallery items standing in for it}
    new_classes: tuple[int, ...]  # classes with no real items that the candidate will write
    regression: RegressionEstimate | None = None  # None: no production to compare with, or nothing held
    why_no_regression: str = ""  # why ``regression`` is None

    @property
    def value(self) -> float:
        """The calibrated estimate in the rules' metric."""
        return self.calibrated.get(self.metric).value

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (class and generation keys become strings, as JSON objects need)."""
        return {
            "candidate": self.candidate, "metric": self.metric, "queries": self.calibrated.queries,
            "calibrated": self.calibrated.to_dict(), "raw": self.raw.to_dict(), "reindex": self.reindex.to_dict(),
            "gap": self.gap.to_dict(),
            "composition": composition_dict(self.composition),
            "new_classes": list(self.new_classes),
            "regression": self.regression.to_dict() if self.regression is not None else None,
            "why_no_regression": self.why_no_regression,
        }

    def summary(self) -> str:
        """One line, e.g. ``item-level search after the move (recall@1): 84.1% calibrated (95% interval
        82.0-86.3), 76.0% raw, 85.0% after a re-index (-0.9 points)``."""
        name = "recall@1" if self.metric == "recall_at_1" else "mAP"
        c = self.calibrated.get(self.metric)
        return (
            f"item-level search after the move ({name}): {100 * c.value:.1f}% calibrated (95% interval "
            f"{100 * c.low:.1f}-{100 * c.high:.1f}), {100 * self.raw.get(self.metric).value:.1f}% raw, "
            f"{100 * self.reindex.get(self.metric).value:.1f}% after a re-index ({100 * self.gap.value:+.1f} points)"
        )

    def ownership(self) -> str:
        """Which generations stand in for which classes, e.g. ``classes 0-3 by gen 1, classes 4,5 by gen 2``."""
        by: dict[tuple[int, ...], list[int]] = {}
        for v, c in sorted(self.composition.items()):
            by.setdefault(tuple(sorted(c)), []).append(v)
        if not by:
            return "no class counted"
        parts = []
        for gens, vs in sorted(by.items(), key=lambda kv: kv[1][0]):
            noun = "class" if len(vs) == 1 else "classes"
            parts.append(f"{noun} {ranges(vs)} by gen {'+'.join(str(g) for g in gens)}")
        return ", ".join(parts)


def known_classes(classes: Mapping[int, Sequence[int]], gens: Iterable[int]) -> dict[int, frozenset[int] | None]:
    """Generation -> the classes it learnt (None: every probe class, for a generation that does not say)."""
    return {int(g): frozenset(int(c) for c in classes[g]) if classes.get(g) else None for g in gens}


def gallery_after(
    candidate: int,
    gallery_labels: np.ndarray,
    holders: Mapping[int, Mapping[int, int]],
    candidate_classes: Sequence[int] | None,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Which generation stands in for each probe gallery item once ``candidate`` serves, and its new classes.

    A class with real items keeps the generations that hold them; a class the candidate learnt (every
    probe class when it does not say) that nobody holds will be written by the candidate.
    """
    held = {int(v) for v, c in holders.items() if any(n > 0 for n in c.values())}
    learnt = set(np.unique(gallery_labels).tolist()) if not candidate_classes else {int(c) for c in candidate_classes}
    new = tuple(sorted(learnt - held))
    return compose(gallery_labels, holders, {v: int(candidate) for v in new}), new


def _composition(labels: np.ndarray, gens: np.ndarray) -> dict[int, dict[int, int]]:
    out: dict[int, dict[int, int]] = {}
    for v, g in zip(labels[gens != LEFT_OUT].tolist(), gens[gens != LEFT_OUT].tolist(), strict=True):
        out.setdefault(int(v), {}).setdefault(int(g), 0)
        out[int(v)][int(g)] += 1
    return out


def composition_dict(composition: Mapping[int, Mapping[int, int]]) -> dict[str, dict[str, int]]:
    """A composition as JSON stores it (string keys), for comparing with a stored report's."""
    return {str(v): {str(g): int(n) for g, n in sorted(c.items())} for v, c in sorted(composition.items())}


def composition_after(
    candidate: int, gallery_labels: np.ndarray, holders: Mapping[int, Mapping[int, int]],
    candidate_classes: Sequence[int] | None,
) -> tuple[dict[int, dict[int, int]], tuple[int, ...]]:
    """Class -> {generation: probe gallery items} of the probe gallery after the move, and the new classes.

    Two gate runs on the same probe embeddings with the same composition give the same numbers, so a
    stored report still describes a gallery that composes the same (items added in proportion).
    """
    gl = np.asarray(gallery_labels, dtype=np.int64)
    gens, new = gallery_after(candidate, gl, holders, candidate_classes)
    return _composition(gl, gens), new


def _need(table: Mapping[int, np.ndarray], gens: Iterable[int], split: str) -> None:
    for g in sorted(set(gens)):
        if g not in table:
            raise ValueError(f"no probe {split} embeddings for gen {g}: embed the probe set first")


def _values(scores: SearchScores, metric: str) -> np.ndarray:
    return scores.hits if metric == "recall_at_1" else scores.ap


def estimate_served(
    candidate: int,
    production: int | None,
    live: Sequence[int],
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    query_embeddings: Mapping[int, np.ndarray],
    gallery_embeddings: Mapping[int, np.ndarray],
    classes: Mapping[int, Sequence[int]],
    holders: Mapping[int, Mapping[int, int]],
    metric: str = "recall_at_1",
) -> ServedEstimate:
    """The candidate's item-level search on the gallery after the move, a re-index, and production now.

    Args:
        candidate: the generation that will serve (a promotion's candidate, a rollback's target).
        production: the generation serving now (None before the first promotion).
        live: the generations with items in the gallery now.
        query_labels / gallery_labels: class of each probe query / probe gallery item.
        query_embeddings / gallery_embeddings: generation -> its probe embeddings (same item order).
        classes: generation -> the classes it learnt (missing or empty: every probe class).
        holders: class -> {generation: real gallery items of that class it stores}.
        metric: the item-level metric the difference intervals are taken in (:data:`ITEM_METRICS`).

    Raises:
        ValueError: a needed generation has no probe embeddings.
    """
    t = int(candidate)
    ql, gl = np.asarray(query_labels, dtype=np.int64), np.asarray(gallery_labels, dtype=np.int64)
    gens, new = gallery_after(t, gl, holders, classes.get(t))
    fit_after = sorted({*map(int, live), t})
    _need(query_embeddings, [t, *([] if production is None else [int(production)])], "query")
    _need(gallery_embeddings, [*fit_after, *(int(g) for c in holders.values() for g in c)], "gallery")
    known = known_classes(classes, {*fit_after, *([] if production is None else [int(production)])})
    scored = np.isin(ql, gl[gens != LEFT_OUT])
    q, q_labels = np.asarray(query_embeddings[t])[scored], ql[scored]
    common = {"embedded": gallery_embeddings, "known": known, "query_gen": t, "folds": FOLDS, "seed": SEED}
    cal = cross_validated(q, q_labels, gl, gens, fit_gens=fit_after, **common)
    raw = cross_validated(q, q_labels, gl, gens, calibrate=False, **common)
    reindex = cross_validated(q, q_labels, gl, np.where(gens != LEFT_OUT, t, LEFT_OUT), calibrate=False, **common)
    regression, why = _regression(t, production, live, ql, gl, query_embeddings, gallery_embeddings, known, holders,
                                  metric)
    return ServedEstimate(
        t, metric, SearchSummary.of(cal), SearchSummary.of(raw), SearchSummary.of(reindex),
        bootstrap(_values(cal, metric) - _values(reindex, metric), seed=SEED + 2), _composition(gl, gens), new,
        regression, why,
    )


def _regression(
    t: int, production: int | None, live: Sequence[int], ql: np.ndarray, gl: np.ndarray,
    query_embeddings: Mapping[int, np.ndarray], gallery_embeddings: Mapping[int, np.ndarray],
    known: Mapping[int, frozenset[int] | None], holders: Mapping[int, Mapping[int, int]], metric: str,
) -> tuple[RegressionEstimate | None, str]:
    """The candidate's search against production's, both on the gallery as it stands now (the classes it
    holds, each by the generations holding it), paired by probe query.

    Why not the candidate on the gallery *after* the move: the new classes' items then count against it
    (similar classes added to a gallery make any model's search harder), which is the price of the new
    classes, not a regression of the model; measured on the demo that comparison refused steps whose
    search on the gallery as it stood was level or better.
    """
    if production is None:
        return None, "no production generation: nothing to regress from"
    p = int(production)
    if p == t:
        return None, f"gen {t} is production already: nothing to compare with"
    now = compose(gl, holders)
    held = np.unique(gl[now != LEFT_OUT])
    if held.size == 0:
        return None, "the gallery holds no item of a probe class: nothing to regress from"
    sel = np.isin(ql, held)
    prod = cross_validated(np.asarray(query_embeddings[p])[sel], ql[sel], gl, now, gallery_embeddings, known, p,
                           folds=FOLDS, seed=SEED, fit_gens=sorted({*map(int, live), p}))
    mine = cross_validated(np.asarray(query_embeddings[t])[sel], ql[sel], gl, now, gallery_embeddings, known, t,
                           folds=FOLDS, seed=SEED, fit_gens=sorted({*map(int, live), t}))
    assert np.array_equal(mine.labels, prod.labels), "both are the probe queries of the held classes, in order"
    diff = bootstrap(_values(mine, metric) - _values(prod, metric), seed=SEED + 3)
    classes = tuple(int(v) for v in held)
    return RegressionEstimate(p, classes, SearchSummary.of(mine), SearchSummary.of(prod), diff), ""


def serving_calibration(
    query_gen: int,
    gens: Iterable[int],
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    query_embeddings: Mapping[int, np.ndarray],
    gallery_embeddings: Mapping[int, np.ndarray],
    classes: Mapping[int, Sequence[int]],
    holders: Mapping[int, Mapping[int, int]],
    method: str = DEFAULT_CALIBRATION,
) -> Calibration:
    """The calibration serving applies once ``query_gen`` serves, fitted on all its probe queries of the
    classes the gallery will hold; :func:`estimate_served` measures this fit cross-validated.

    ``search`` (the default): shifts that maximise those queries' Recall@1 on the probe gallery
    composed as after the move (:mod:`upgrader.compat.search_calibration`). ``shift``/``affine``:
    moments against each of ``gens`` (every generation that will have items) restricted to the classes
    it learnt (:mod:`upgrader.compat.score_calibration`).
    """
    gl = np.asarray(gallery_labels, dtype=np.int64)
    ql = np.asarray(query_labels, dtype=np.int64)
    t = int(query_gen)
    fit = sorted({*map(int, gens), t})
    after, _ = gallery_after(t, gl, holders, classes.get(t))
    scored = np.isin(ql, gl[after != LEFT_OUT])
    q = np.asarray(query_embeddings[t], dtype=np.float32)[scored]
    galleries = fit_galleries(gallery_embeddings, known_classes(classes, fit), gl, fit)
    if method == "search":  # moment shifts for the generations the composed gallery lacks
        moments = fit_calibration(t, q, ql[scored], galleries)
        return fit_search_shifts(t, q, ql[scored], *composed(gallery_embeddings, gl, after), fallback=moments)
    return fit_calibration(t, q, ql[scored], galleries, mode=method)


__all__ = [
    "ITEM_METRICS",
    "RegressionEstimate",
    "SearchSummary",
    "ServedEstimate",
    "composition_after",
    "composition_dict",
    "estimate_served",
    "gallery_after",
    "item_metric",
    "known_classes",
    "serving_calibration",
]
