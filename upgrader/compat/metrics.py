"""Retrieval accuracy ``M(q, g)``: probe queries of generation ``q`` searched against the probe gallery of ``g``.

Pure numpy. Cosine similarity on L2-normalised features (re-normalised here defensively), three metrics
(:data:`METRICS`):

- ``template_top1`` — each gallery class is the mean of its items' features, re-normalised; a query is
  correct iff its nearest template is its own class (the paper's protocol, the default primary).
- ``recall_at_1`` — the nearest individual gallery item has the query's class.
- ``mean_ap`` — mean over queries of the average precision of the full ranked gallery list.

Queries whose class has no item in the gallery cannot be answered by any protocol; they are **excluded**
from all three metrics (not counted wrong) and their number is reported as
``RetrievalMetrics.excluded_queries``. Exact score ties are broken towards the lower index (the order of
the gallery classes / items), as ``numpy.argmax`` and a stable sort do.

A pair of generations is scored on the probe classes both learnt (:func:`shared_classes`,
:func:`pair_metrics`); a generation's self-test ``M(g, g)`` is :func:`self_test`, the one definition the
gate, the matrix view, the status tables and the study share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The retrieval metrics the gate computes, in report order.
METRICS: tuple[str, ...] = ("template_top1", "recall_at_1", "mean_ap")

#: The metric the gate decides on unless configured otherwise (the paper's protocol).
DEFAULT_PRIMARY_METRIC = "template_top1"

#: How each metric is named in the one-line reasons a person reads.
METRIC_NAMES: dict[str, str] = {
    "template_top1": "template top-1",
    "recall_at_1": "recall@1",
    "mean_ap": "mAP",
}

# Queries are ranked against the gallery in chunks of this many rows so that the [chunk, Ng] score,
# order and relevance matrices stay small (a few hundred MB at most for a 20k-item probe gallery).
_QUERY_CHUNK = 512


@dataclass(frozen=True)
class RetrievalMetrics:
    """Retrieval accuracy of one (query generation, gallery generation) pair; all metrics in [0, 1]."""

    template_top1: float  # nearest class template (mean of the class's items, re-normalised) is right
    recall_at_1: float  # nearest individual gallery item has the query's class
    mean_ap: float  # mean over queries of the average precision of the ranked gallery
    num_queries: int = 0  # queries that counted (their class has at least one gallery item)
    excluded_queries: int = 0  # queries left out because their class has no gallery item

    def as_dict(self, *, include_counts: bool = False) -> dict[str, float]:
        """The metrics by name (:data:`METRICS` order), optionally with the two query counts.

        Args:
            include_counts: also return ``num_queries`` and ``excluded_queries`` (as floats, so the
                dict stays ``dict[str, float]`` for the registry's evaluations table).
        """
        out = {name: float(getattr(self, name)) for name in METRICS}
        if include_counts:
            out["num_queries"] = float(self.num_queries)
            out["excluded_queries"] = float(self.excluded_queries)
        return out

    def get(self, name: str) -> float:
        """One metric by name; ``ValueError`` naming the known metrics for anything else."""
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
        return float(getattr(self, name))


def as_features(x: np.ndarray, what: str) -> np.ndarray:
    """Validate a [N, D] float matrix and return it L2-normalised as float32 (defensive re-normalisation)."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D [N, D] array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or inf")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if arr.shape[0] and np.any(norms == 0):
        bad = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise ValueError(f"{what} row {bad} is all zeros and cannot be L2-normalised")
    return (arr / np.where(norms == 0, 1, norms)).astype(np.float32, copy=False)


def as_labels(y: np.ndarray | Sequence[int], n: int, what: str) -> np.ndarray:
    """Validate ``n`` integer class vertices and return them as int64 [n]."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of vertex ints, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{what} has {arr.shape[0]} labels for {n} embeddings")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be integer vertex indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _templates(gallery: np.ndarray, inverse: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class sum of item features (one scatter-add), re-normalised: float32 [C, D].

    ``inverse`` maps each item to its class index. The sum of unit vectors can only be zero if the
    class's items cancel exactly; such a template is kept at zero.
    """
    templates = np.zeros((num_classes, gallery.shape[1]), dtype=np.float64)
    np.add.at(templates, inverse, gallery.astype(np.float64))
    tnorm = np.linalg.norm(templates, axis=1, keepdims=True)
    return (templates / np.where(tnorm == 0, 1, tnorm)).astype(np.float32)


def class_templates(gallery_emb: np.ndarray, gallery_labels: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The template protocol's class templates: (sorted class ids [C], re-normalised mean features [C, D])."""
    classes, inverse = np.unique(np.asarray(gallery_labels), return_inverse=True)
    return classes, _templates(np.asarray(gallery_emb), inverse.reshape(-1), classes.shape[0])


def _average_precision_stable(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP of each row from a stable descending sort (equal scores keep gallery order): [c]."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)  # [c, Ng] bool, in rank order
    hits_so_far = np.cumsum(hits, axis=1, dtype=np.float64)
    ranks = np.arange(1, scores.shape[1] + 1, dtype=np.float64)
    return np.where(hits, hits_so_far / ranks, 0.0).sum(axis=1) / hits_so_far[:, -1]


def _average_precision(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP of each row of ``scores`` [c, Ng] with ``relevant`` [c, Ng] (>= 1 relevant item per row): [c].

    Same result as :func:`_average_precision_stable`, several times faster: a row without equal
    scores needs only its sorted values (SIMD ``np.sort``, no argsort). The m-th best relevant item
    of a row ranks 1 + (items scoring strictly higher), so AP = mean over m of m / rank. Rows are
    shifted apart by more than the score range so one ``searchsorted`` serves every row; a row with
    equal values after the shift (equal scores, or distinct ones the shift merged) goes the stable way.
    """
    c, n = scores.shape
    span = float(scores.max()) - float(scores.min()) + 1.0
    shifted = scores.astype(np.float64) + span * np.arange(c, dtype=np.float64)[:, None]
    ordered = np.sort(shifted, axis=1)  # ascending within each row, and across rows
    tied = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    rows, cols = np.nonzero(relevant)
    values = shifted[rows, cols]
    by_value = np.argsort(values)  # rows ascending, then scores ascending within a row
    rows, values = rows[by_value], values[by_value]
    higher = n - (np.searchsorted(ordered.ravel(), values, side="right") - rows * n)
    counts = relevant.sum(axis=1)
    starts = np.cumsum(counts) - counts
    m = counts[rows] - (np.arange(len(rows)) - starts[rows])  # 1 = the row's best relevant item
    ap = np.bincount(rows, weights=m / (higher + 1.0), minlength=c) / counts
    if tied.any():
        ap[tied] = _average_precision_stable(scores[tied], relevant[tied])
    return ap


def _prepared(
    query_emb: np.ndarray,
    query_labels: np.ndarray | Sequence[int],
    gallery_emb: np.ndarray,
    gallery_labels: np.ndarray | Sequence[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Validated, re-normalised inputs: (eligible queries, their labels, gallery, gallery labels,
    sorted gallery class ids, class templates, number of excluded queries)."""
    q = as_features(query_emb, "query embeddings")
    g = as_features(gallery_emb, "gallery embeddings")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if g.shape[0] == 0:
        raise ValueError("the gallery is empty: nothing to retrieve from")
    ql = as_labels(query_labels, q.shape[0], "query labels")
    gl = as_labels(gallery_labels, g.shape[0], "gallery labels")
    classes, inverse = np.unique(gl, return_inverse=True)  # sorted class ids; item -> class index
    eligible = np.isin(ql, classes)
    templates = _templates(g, inverse, classes.shape[0])
    return q[eligible], ql[eligible], g, gl, classes, templates, int((~eligible).sum())


def _template_hits(q: np.ndarray, ql: np.ndarray, classes: np.ndarray, templates: np.ndarray) -> int:
    # argmax takes the first of equal scores (the lower class id).
    return int((classes[np.argmax(q @ templates.T, axis=1)] == ql).sum()) if len(q) else 0


def template_top1(
    query_emb: np.ndarray,
    query_labels: np.ndarray | Sequence[int],
    gallery_emb: np.ndarray,
    gallery_labels: np.ndarray | Sequence[int],
) -> float:
    """The template protocol alone: :func:`retrieval_metrics`' ``template_top1``, without ranking items."""
    q, ql, _, _, classes, templates, _ = _prepared(query_emb, query_labels, gallery_emb, gallery_labels)
    return _template_hits(q, ql, classes, templates) / len(q) if len(q) else 0.0


def retrieval_metrics(
    query_emb: np.ndarray,
    query_labels: np.ndarray | Sequence[int],
    gallery_emb: np.ndarray,
    gallery_labels: np.ndarray | Sequence[int],
) -> RetrievalMetrics:
    """Template top-1, Recall@1 and mAP of queries searched against a gallery by cosine similarity.

    Args:
        query_emb: float [Nq, D] query embeddings (re-normalised here).
        query_labels: int [Nq] vertex index of each query's class.
        gallery_emb: float [Ng, D] gallery embeddings (re-normalised here).
        gallery_labels: int [Ng] vertex index of each gallery item's class.

    Returns:
        The three metrics over the queries whose class has at least one gallery item; the others are
        excluded and counted in ``excluded_queries``. With no eligible query every metric is 0.0.

    Raises:
        ValueError: shapes, dims or labels disagree, an empty gallery, NaN/inf or all-zero rows.
    """
    q, ql, g, gl, classes, templates, excluded = _prepared(query_emb, query_labels, gallery_emb, gallery_labels)
    n = int(q.shape[0])
    if n == 0:
        return RetrievalMetrics(0.0, 0.0, 0.0, num_queries=0, excluded_queries=excluded)

    r1_hits = 0
    ap_sum = 0.0
    for start in range(0, n, _QUERY_CHUNK):
        qc = q[start : start + _QUERY_CHUNK]
        lc = ql[start : start + _QUERY_CHUNK]
        # Item level: ranks by descending score, equal scores in gallery order.
        scores = qc @ g.T  # [c, Ng]
        relevant = gl[None, :] == lc[:, None]  # [c, Ng] bool, in gallery order
        r1_hits += int(relevant[np.arange(len(qc)), np.argmax(scores, axis=1)].sum())  # argmax: first of equals
        ap_sum += float(_average_precision(scores, relevant).sum())

    return RetrievalMetrics(
        template_top1=_template_hits(q, ql, classes, templates) / n,
        recall_at_1=r1_hits / n,
        mean_ap=ap_sum / n,
        num_queries=n,
        excluded_queries=excluded,
    )


def shared_classes(a: Sequence[int] | None, b: Sequence[int] | None) -> frozenset[int] | None:
    """Classes two generations both learnt; None (all probe classes) when neither says.

    Why: a generation's embeddings of classes it never learnt carry no class promise. A candidate
    that learns class k moves k to its own vertex, away from where an older generation happened to
    put it, so scoring the pair on k would fail even a perfectly stationary upgrade.
    """
    if not a and not b:
        return None
    if not a:
        return frozenset(int(x) for x in b or ())
    if not b:
        return frozenset(int(x) for x in a)
    return frozenset(int(x) for x in a) & frozenset(int(x) for x in b)


def restrict(emb: np.ndarray, labels: np.ndarray, classes: frozenset[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``emb`` / ``labels`` whose label is in ``classes`` (all rows for None)."""
    labels = np.asarray(labels)
    if classes is None:
        return np.asarray(emb), labels
    keep = np.isin(labels, np.fromiter(classes, dtype=np.int64, count=len(classes)))
    return np.asarray(emb)[keep], labels[keep]


def pair_metrics(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: np.ndarray,
    classes: frozenset[int] | None = None,
) -> RetrievalMetrics:
    """:func:`retrieval_metrics` over the probe items of ``classes`` only (all for None)."""
    q, ql = restrict(query_emb, query_labels, classes)
    g, gl = restrict(gallery_emb, gallery_labels, classes)
    if len(g) == 0 or len(q) == 0:
        return RetrievalMetrics(0.0, 0.0, 0.0, 0, len(q))
    return retrieval_metrics(q, ql, g, gl)


def self_test(
    query_emb: np.ndarray,
    query_labels: np.ndarray,
    gallery_emb: np.ndarray,
    gallery_labels: np.ndarray,
    classes: frozenset[int] | None = None,
) -> RetrievalMetrics:
    """M(g, g): one generation's probe queries against its own probe gallery, on ``classes``.

    The gate compares a candidate's cross-generation score with this on the classes the pair shares,
    the status tables and the study on the classes the generation learnt.

    Args:
        query_emb: [Nq, D] the generation's probe query embeddings.
        query_labels: [Nq] vertex of each probe query.
        gallery_emb: [Ng, D] the generation's probe gallery embeddings.
        gallery_labels: [Ng] vertex of each probe gallery item.
        classes: the vertices to score on; None means every probe class, an empty set none (all
            metrics 0.0).
    """
    return pair_metrics(query_emb, query_labels, gallery_emb, gallery_labels, classes)


def json_float(x: float | None) -> float | None:
    """A metric value as JSON: a plain float, or None for a missing, NaN or infinite one."""
    return None if x is None or not math.isfinite(x) else float(x)


__all__ = [
    "DEFAULT_PRIMARY_METRIC",
    "METRICS",
    "METRIC_NAMES",
    "RetrievalMetrics",
    "as_features",
    "as_labels",
    "class_templates",
    "json_float",
    "pair_metrics",
    "restrict",
    "retrieval_metrics",
    "self_test",
    "shared_classes",
    "template_top1",
]
