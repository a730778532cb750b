"""The compatibility matrix ``C[t][j] = M(t, j)`` (row: query generation, column: gallery generation),
its averages AC and AM, and the evaluator that fills it from probe embeddings.

Pure numpy. :class:`PairEvaluator` scores each (query gen, gallery gen) pair on the probe classes both
generations learnt, at most once; the gate and the services' matrix view share it, so a matrix cell and
the gate's check for that pair are the same number. :func:`average_compatibility` (AC) and
:func:`average_multimodel_accuracy` (AM) summarise the lower triangle. :func:`per_query_values` gives a
metric query by query (its mean is the metric), so a difference of two pairs scored on the same probe
queries can be bootstrapped paired by query item (:meth:`PairEvaluator.difference`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from upgrader.compat.item_search import Interval, bootstrap
from upgrader.compat.metrics import (
    _QUERY_CHUNK,
    RetrievalMetrics,
    _average_precision,
    as_features,
    class_templates,
    pair_metrics,
    restrict,
    self_test,
    shared_classes,
)


def compatibility_matrix(
    gen_ids: Sequence[int], pair_metric: Callable[[int, int], float]
) -> np.ndarray:
    """The full T x T matrix ``C[t][j] = M(gen_ids[t], gen_ids[j])``.

    Every pair is evaluated, the upper triangle included (old queries on a newer gallery are what a
    rollback needs).

    Args:
        gen_ids: generation ids in row/column order (oldest first for AC/AM to mean anything).
        pair_metric: ``(query_gen, gallery_gen) -> value``.

    Returns:
        float64 [T, T].
    """
    ids = list(gen_ids)
    out = np.empty((len(ids), len(ids)), dtype=np.float64)
    for r, qg in enumerate(ids):
        for c, gg in enumerate(ids):
            out[r, c] = float(pair_metric(qg, gg))
    return out


def matrix_from_pairs(
    gen_ids: Sequence[int], values: Mapping[tuple[int, int], float], *, fill: float = math.nan
) -> np.ndarray:
    """Build ``C`` from a ``{(query_gen, gallery_gen): value}`` dict; pairs not in it get ``fill``.

    NaN cells in the upper triangle are harmless (AC and AM ignore it); AC and AM refuse a NaN in the
    lower triangle or on the diagonal.
    """
    return compatibility_matrix(gen_ids, lambda q, g: values.get((q, g), fill))


def _lower_square(matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    c = np.asarray(matrix, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"a compatibility matrix must be square T x T, got shape {c.shape}")
    if c.shape[0] == 0:
        raise ValueError("a compatibility matrix needs at least one generation")
    lower = np.tril_indices(c.shape[0])
    if not np.all(np.isfinite(c[lower])):
        raise ValueError("the compatibility matrix has NaN/inf on or below the diagonal")
    return c


def average_compatibility(matrix: np.ndarray | Sequence[Sequence[float]]) -> float:
    """AC = 1 - (2 / (T(T-1))) * sum_{j<t} 1[C[t][j] <= C[j][j]].

    Ties count as violations; a single generation gives 1.0; the upper triangle is ignored.

    Raises:
        ValueError: not square, empty, or NaN/inf on/below the diagonal.
    """
    c = _lower_square(matrix)
    t = c.shape[0]
    if t == 1:
        return 1.0
    rows, cols = np.tril_indices(t, k=-1)  # t > j
    violations = int(np.sum(c[rows, cols] <= c[cols, cols]))
    return 1.0 - 2.0 * violations / (t * (t - 1))


def average_multimodel_accuracy(matrix: np.ndarray | Sequence[Sequence[float]]) -> float:
    """AM = mean of C[t][j] over j <= t (lower triangle with the diagonal).

    Raises:
        ValueError: not square, empty, or NaN/inf on/below the diagonal.
    """
    c = _lower_square(matrix)
    return float(c[np.tril_indices(c.shape[0])].mean())


def per_query_values(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: np.ndarray,
    classes: frozenset[int] | None,
    metric: str,
) -> np.ndarray:
    """One metric query by query, over the probe items of ``classes``: float64 ``[Q]``.

    The same computation as :func:`upgrader.compat.metrics.pair_metrics` (re-normalised features,
    queries whose class has no gallery item left out, ties to the lower index), so the mean of the
    result is that metric; kept per query so that two pairs scored on the same probe queries can be
    compared paired by query.
    """
    q, ql = restrict(query_emb, query_labels, classes)
    g, gl = restrict(gallery_emb, gallery_labels, classes)
    if len(q) == 0 or len(g) == 0:
        return np.zeros(0)
    q, g = as_features(q, "query embeddings"), as_features(g, "gallery embeddings")
    eligible = np.isin(ql, gl)
    q, ql = q[eligible], np.asarray(ql)[eligible]
    if metric == "template_top1":
        ids, templates = class_templates(g, gl)
        return (ids[np.argmax(q @ templates.T, axis=1)] == ql).astype(np.float64)
    if metric not in ("recall_at_1", "mean_ap"):
        raise ValueError(f"unknown metric {metric!r}; known metrics: template_top1, recall_at_1, mean_ap")
    out = np.empty(len(q))
    for start in range(0, len(q), _QUERY_CHUNK):
        part = slice(start, start + _QUERY_CHUNK)
        scores = q[part] @ g.T
        relevant = np.asarray(gl)[None, :] == ql[part][:, None]
        if metric == "recall_at_1":
            out[part] = relevant[np.arange(scores.shape[0]), np.argmax(scores, axis=1)]
        else:
            out[part] = _average_precision(scores, relevant)
    return out


class PairEvaluator:
    """Probe embeddings of several generations, and each pair's metrics, evaluated at most once."""

    def __init__(
        self,
        query_labels: np.ndarray | Sequence[int],
        gallery_labels: np.ndarray | Sequence[int],
        query_embeddings: Mapping[int, np.ndarray],
        gallery_embeddings: Mapping[int, np.ndarray],
        classes: Mapping[int, Sequence[int]] | None = None,
    ) -> None:
        """Hold the probe set as the registry (or a test) gives it.

        Args:
            query_labels: int [Nq] vertex of each probe query; the same for every generation.
            gallery_labels: int [Ng] vertex of each probe gallery item.
            query_embeddings: gen id -> [Nq, D] probe query embeddings.
            gallery_embeddings: gen id -> [Ng, D] probe gallery embeddings.
            classes: gen id -> the vertices it learnt; a generation missing here knows every class.
        """
        self.ql = np.asarray(query_labels)
        self.gl = np.asarray(gallery_labels)
        self._queries = query_embeddings
        self._galleries = gallery_embeddings
        self._classes = classes or {}
        # The matrix entries, (query gen, gallery gen) -> metrics on the classes both learnt.
        self.evaluations: dict[tuple[int, int], RetrievalMetrics] = {}
        self._over: dict[tuple[int, int, frozenset[int] | None], RetrievalMetrics] = {}
        self._per_query: dict[tuple[int, int, frozenset[int] | None, str], np.ndarray] = {}

    def shared(self, a: int, b: int) -> frozenset[int] | None:
        """The classes generations ``a`` and ``b`` both learnt (None: every probe class)."""
        return shared_classes(self._classes.get(a), self._classes.get(b))

    def queries(self, gen: int, classes: frozenset[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Generation ``gen``'s probe queries of ``classes`` (all for None) and their vertices."""
        return restrict(_embeddings(gen, self._queries, self.ql, "query"), self.ql, classes)

    def gallery(self, gen: int, classes: frozenset[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Generation ``gen``'s probe gallery items of ``classes`` (all for None) and their vertices."""
        return restrict(_embeddings(gen, self._galleries, self.gl, "gallery"), self.gl, classes)

    def metrics(self, q: int, g: int) -> RetrievalMetrics:
        """M(q, g) on the classes both learnt: the matrix entry, recorded in ``evaluations``."""
        key = (q, g)
        if key not in self.evaluations:
            self.evaluations[key] = self.over(q, g, self.shared(q, g))
        return self.evaluations[key]

    def over(self, q: int, g: int, classes: frozenset[int] | None) -> RetrievalMetrics:
        """M(q, g) on the probe items of ``classes`` (a self-test when ``q == g``)."""
        key = (q, g, classes)
        if key not in self._over:
            qe = _embeddings(q, self._queries, self.ql, "query")
            ge = _embeddings(g, self._galleries, self.gl, "gallery")
            score = self_test if q == g else pair_metrics
            self._over[key] = score(qe, self.ql, ge, self.gl, classes)
        return self._over[key]

    def self_test(self, gen: int, classes: frozenset[int] | None) -> RetrievalMetrics:
        """M(gen, gen) on the probe items of ``classes`` (:func:`upgrader.compat.metrics.self_test`)."""
        return self.over(gen, gen, classes)

    def per_query(self, q: int, g: int, classes: frozenset[int] | None, metric: str) -> np.ndarray:
        """M(q, g) on ``classes`` query by query (:func:`per_query_values`), evaluated at most once."""
        key = (q, g, classes, metric)
        if key not in self._per_query:
            qe = _embeddings(q, self._queries, self.ql, "query")
            ge = _embeddings(g, self._galleries, self.gl, "gallery")
            self._per_query[key] = per_query_values(qe, self.ql, ge, self.gl, classes, metric)
        return self._per_query[key]

    def difference(
        self, a: tuple[int, int], b: tuple[int, int], classes: frozenset[int] | None, metric: str
    ) -> Interval:
        """M(a) - M(b) on ``classes`` with a bootstrap 95% interval, paired by probe query item.

        Every generation embeds the same probe items, so on ``classes`` both pairs score the same
        probe queries in the same order (the same images, embedded by each pair's query generation).
        """
        return bootstrap(self.per_query(*a, classes, metric) - self.per_query(*b, classes, metric))


def _embeddings(gen: int, table: Mapping[int, np.ndarray], labels: np.ndarray, split: str) -> np.ndarray:
    emb = table.get(gen)
    if emb is None:
        raise ValueError(f"no probe {split} embeddings for gen {gen}: embed the probe set first")
    emb = np.asarray(emb)
    if emb.shape[0] != labels.shape[0]:
        raise ValueError(
            f"gen {gen} has {emb.shape[0]} probe {split} embeddings for {labels.shape[0]} probe {split} labels"
        )
    return emb


__all__ = [
    "PairEvaluator",
    "per_query_values",
    "average_compatibility",
    "average_multimodel_accuracy",
    "compatibility_matrix",
    "matrix_from_pairs",
]
