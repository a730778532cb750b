"""The compatibility gate: every number that decides whether a generation may serve.

Pure numpy. The gate computes and writes nothing; the services layer loads the probe embeddings from
the registry, calls :func:`evaluate_candidate` (promotion) or :func:`evaluate_rollback`, and stores the
returned :class:`GateVerdict` (``verdict.to_dict()`` is JSON-able) as a gate report.

What is measured (DESIGN.md section 3):

* **Retrieval accuracy** ``M(q, g)`` — probe queries embedded by generation ``q`` searched against the
  probe gallery embedded by generation ``g``, cosine similarity on L2-normalised features (the gate
  re-normalises defensively). :func:`retrieval_metrics` reports three metrics (:data:`METRICS`):

  - ``template_top1`` — each gallery class is the mean of its items' features, re-normalised; a query
    is correct iff its nearest template is its own class (the paper's protocol, the default primary).
  - ``recall_at_1`` — the nearest individual gallery item has the query's class.
  - ``mean_ap`` — mean over queries of the average precision of the full ranked gallery list.

  Queries whose class has no item in the gallery cannot be answered by any protocol; they are
  **excluded** from all three metrics (not counted wrong) and their number is reported as
  ``RetrievalMetrics.excluded_queries``. Exact score ties are broken towards the lower index (the
  order of the gallery classes / items), as ``numpy.argmax`` and a stable sort do.

* **Compatibility matrix** ``C[t][j] = M(t, j)`` (row = query generation, column = gallery generation),
  with :func:`average_compatibility` (AC) and :func:`average_multimodel_accuracy` (AM) over its lower
  triangle.

* **Empirical criterion** (the gate's rule): candidate ``t`` is compatible with live generation ``j`` iff
  ``M(t, j) > M(j, j) + margin`` — strictly, so a tie fails. Unless waived, the candidate must also
  improve on production: ``M(t, t) > M(p, p)``. Rollback to an older ``o`` needs
  ``M(o, j) >= M(j, j) - margin`` for every live gallery generation ``j`` written after ``o``.

* **Mixed gallery estimate** (:mod:`upgrader.compat.mixed`), promotion only: the candidate's template
  top-1 on a probe gallery whose classes are embedded by the generations that store them in the real
  gallery, next to a full re-index. Reported always; a condition only with ``GateConfig.mixed_tolerance``.

* **Formal definition** (Shen et al. 2020), :func:`formal_compatibility`: in expectation over (probe
  query, probe gallery) pairs with cosine distance ``d = 1 - cos``, same-class pairs must be no farther
  across generations than within the old one, and different-class pairs no nearer. It is always
  computed and reported; it only decides the verdict when ``GateConfig.check_formal`` is set, because
  DESIGN makes the empirical criterion the gate's rule (the formal inequalities are sufficient in
  expectation but say nothing about the retrieval accuracy a user sees, and they can fail for a model
  that retrieves better than its predecessor).

The artifact check: the verdict is about one exact ONNX artifact, so a file whose sha256 no longer
matches the one registered fails the gate ("artifact changed since registration: ...").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from upgrader.compat.mixed import MixedEstimate

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

CheckKind = Literal["compatibility", "improvement", "rollback", "mixed"]
VerdictKind = Literal["promote", "rollback"]


# --------------------------------------------------------------------------------------------------
# Retrieval metrics
# --------------------------------------------------------------------------------------------------


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


def _as_features(x: np.ndarray, what: str) -> np.ndarray:
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


def _as_labels(y: np.ndarray | Sequence[int], n: int, what: str) -> np.ndarray:
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
    q = _as_features(query_emb, "query embeddings")
    g = _as_features(gallery_emb, "gallery embeddings")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if g.shape[0] == 0:
        raise ValueError("the gallery is empty: nothing to retrieve from")
    ql = _as_labels(query_labels, q.shape[0], "query labels")
    gl = _as_labels(gallery_labels, g.shape[0], "gallery labels")
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


# --------------------------------------------------------------------------------------------------
# Compatibility matrix, AC and AM
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Formal compatibility (Shen et al.)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormalCheck:
    """Both inequalities of the formal compatibility definition for one (new, old) generation pair.

    Expectations are over (probe query i, probe gallery k) pairs of cosine distance ``1 - cos``.
    An inequality with no pair to average over (e.g. a single class, so no different-class pairs) is
    NaN and counts as satisfied: there is nothing to violate.
    """

    new_gen: int | None  # t, whose query embeddings are the cross term
    old_gen: int | None  # j, whose query and gallery embeddings are the reference
    same_class_cross: float  # E[d(phi_t(x_i), phi_j(x_k))] over same-class pairs
    same_class_old: float  # E[d(phi_j(x_i), phi_j(x_k))] over same-class pairs
    diff_class_cross: float  # E[d(phi_t(x_i), phi_j(x_k))] over different-class pairs
    diff_class_old: float  # E[d(phi_j(x_i), phi_j(x_k))] over different-class pairs
    same_class_ok: bool  # same_class_cross <= same_class_old
    diff_class_ok: bool  # diff_class_cross >= diff_class_old

    @property
    def passed(self) -> bool:
        """Both inequalities hold."""
        return self.same_class_ok and self.diff_class_ok

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (NaN becomes ``None``)."""
        return {
            "new_gen": self.new_gen,
            "old_gen": self.old_gen,
            "same_class_cross": _json_float(self.same_class_cross),
            "same_class_old": _json_float(self.same_class_old),
            "diff_class_cross": _json_float(self.diff_class_cross),
            "diff_class_old": _json_float(self.diff_class_old),
            "same_class_ok": self.same_class_ok,
            "diff_class_ok": self.diff_class_ok,
            "passed": self.passed,
        }


def _mean_pair_distances(
    q: np.ndarray, ql: np.ndarray, g: np.ndarray, gl: np.ndarray
) -> tuple[float, float]:
    """Mean cosine distance over same-class and over different-class (query, gallery) pairs.

    Uses per-class feature sums, so it is O((Nq + Ng) * D) instead of forming the Nq x Ng matrix:
    sum over same-class pairs of <q_i, g_k> = sum_c <sum_{i in c} q_i, sum_{k in c} g_k>.
    """
    classes = np.union1d(ql, gl)
    qi = np.searchsorted(classes, ql)
    gi = np.searchsorted(classes, gl)
    qsum = np.zeros((classes.shape[0], q.shape[1]), dtype=np.float64)
    gsum = np.zeros_like(qsum)
    np.add.at(qsum, qi, q.astype(np.float64))
    np.add.at(gsum, gi, g.astype(np.float64))
    qcount = np.bincount(qi, minlength=classes.shape[0]).astype(np.float64)
    gcount = np.bincount(gi, minlength=classes.shape[0]).astype(np.float64)
    same_sim = float(np.sum(qsum * gsum))
    all_sim = float(qsum.sum(axis=0) @ gsum.sum(axis=0))
    n_same = float(qcount @ gcount)
    n_all = float(q.shape[0]) * float(g.shape[0])
    n_diff = n_all - n_same
    same = 1.0 - same_sim / n_same if n_same > 0 else math.nan
    diff = 1.0 - (all_sim - same_sim) / n_diff if n_diff > 0 else math.nan
    return same, diff


def formal_compatibility(
    new_queries: np.ndarray,
    old_queries: np.ndarray,
    old_gallery: np.ndarray,
    query_labels: np.ndarray | Sequence[int],
    gallery_labels: np.ndarray | Sequence[int],
    *,
    new_gen: int | None = None,
    old_gen: int | None = None,
) -> FormalCheck:
    """The formal compatibility definition of Shen et al. between a new and an old generation.

    Same-class pairs: ``E[d(phi_t(x_i), phi_j(x_k))] <= E[d(phi_j(x_i), phi_j(x_k))]``; different-class
    pairs: ``>=``; ``d = 1 - cos``; ``x_i`` ranges over probe queries, ``x_k`` over the probe gallery.

    Args:
        new_queries: [Nq, D] probe queries embedded by the new generation t.
        old_queries: [Nq, D] the same probe queries embedded by the old generation j.
        old_gallery: [Ng, D] the probe gallery embedded by the old generation j.
        query_labels: [Nq] vertex ints.
        gallery_labels: [Ng] vertex ints.
        new_gen: id of t, recorded in the result.
        old_gen: id of j, recorded in the result.
    """
    qt = _as_features(new_queries, "new-generation query embeddings")
    qj = _as_features(old_queries, "old-generation query embeddings")
    gj = _as_features(old_gallery, "old-generation gallery embeddings")
    if qt.shape != qj.shape:
        raise ValueError(f"new queries {qt.shape} and old queries {qj.shape} must have the same shape")
    if qt.shape[1] != gj.shape[1]:
        raise ValueError(f"query dim {qt.shape[1]} != gallery dim {gj.shape[1]}")
    ql = _as_labels(query_labels, qt.shape[0], "query labels")
    gl = _as_labels(gallery_labels, gj.shape[0], "gallery labels")
    same_x, diff_x = _mean_pair_distances(qt, ql, gj, gl)
    same_o, diff_o = _mean_pair_distances(qj, ql, gj, gl)
    same_ok = True if math.isnan(same_x) else same_x <= same_o
    diff_ok = True if math.isnan(diff_x) else diff_x >= diff_o
    return FormalCheck(
        new_gen=new_gen,
        old_gen=old_gen,
        same_class_cross=same_x,
        same_class_old=same_o,
        diff_class_cross=diff_x,
        diff_class_old=diff_o,
        same_class_ok=bool(same_ok),
        diff_class_ok=bool(diff_ok),
    )


# --------------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateConfig:
    """How strict the gate is."""

    # Required headroom: compatibility needs M(t, j) > M(j, j) + margin; rollback tolerates
    # M(o, j) >= M(j, j) - margin. Non-negative; 0.0 is the paper's criterion.
    margin: float = 0.0
    # Which of METRICS decides (all three are computed and reported either way).
    primary_metric: str = DEFAULT_PRIMARY_METRIC
    # Promotion also needs M(t, t) > M(p, p) for the current production p; False waives it (e.g. a
    # replacement that is meant to be only as good, or an operator override recorded in the report).
    require_improvement: bool = True
    # Make the formal (Shen et al.) inequalities a condition of passing. Off by default: the formal
    # check is always computed and reported, but DESIGN makes the empirical criterion the gate's rule.
    check_formal: bool = False
    # Promotion also needs the mixed-gallery estimate >= its re-index accuracy - mixed_tolerance (both
    # template top-1, in [0, 1]). None: the estimate is computed and reported, but decides nothing.
    mixed_tolerance: float | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.margin) or self.margin < 0:
            raise ValueError(f"margin must be a finite number >= 0, got {self.margin!r}")
        tol = self.mixed_tolerance
        if tol is not None and (not math.isfinite(tol) or not 0 <= tol <= 1):
            raise ValueError(f"mixed_tolerance must be a number in [0, 1] or None, got {tol!r}")
        if self.primary_metric not in METRICS:
            raise ValueError(
                f"unknown primary metric {self.primary_metric!r}; known metrics: {', '.join(METRICS)}"
            )


@dataclass(frozen=True)
class GateInputs:
    """Everything the gate needs, loaded by the caller (from the registry, in the services layer)."""

    # Vertex index of each probe query / probe gallery item; the same for every generation.
    query_labels: np.ndarray  # int64 [Nq]
    gallery_labels: np.ndarray  # int64 [Ng]
    # Per generation id: its probe query / probe gallery embeddings (float32, rows in label order).
    query_embeddings: Mapping[int, np.ndarray]  # gen id -> [Nq, D]
    gallery_embeddings: Mapping[int, np.ndarray]  # gen id -> [Ng, D]
    # The generation being promoted (for a rollback: the rollback target).
    candidate: int
    # Generations with items in the production gallery (registry.live_generations()).
    live: Sequence[int]
    # The generation the production alias points at now, or None before the first promotion.
    production: int | None
    # The candidate's artifact sha256 as stored in the registry, and as computed from the file now
    # (None when the file is missing or unreadable).
    registered_sha256: str
    artifact_sha256: str | None
    # Per generation id: the vertex indices of the classes it was trained on (cumulative over its
    # lineage). A pair (q, g) is scored on the probe classes both generations learnt; a generation
    # missing here (an imported artifact, say) counts as knowing every probe class.
    classes: Mapping[int, Sequence[int]] = field(default_factory=dict)
    # Class vertex -> the live generation that stores most of its items in the production gallery
    # (mixed_estimate.gallery_owners); a class missing here is indexed by the candidate.
    gallery_owners: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class GateCheck:
    """One comparison the gate made."""

    kind: CheckKind  # "compatibility" (t vs live j), "improvement" (t vs production), "rollback",
    # or "mixed" (t's mixed-gallery estimate vs its re-index, template top-1)
    query_gen: int  # generation whose probe queries were used for ``value``
    gallery_gen: int  # generation whose probe gallery was used for ``value``
    value: float  # M(query_gen, gallery_gen) in the primary metric
    threshold: float  # what ``value`` was compared with, margin included
    passed: bool
    reference_gen: int  # the generation whose self-test M(r, r) the threshold comes from
    comparison: str  # ">" (strict: ties fail) or ">="

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "kind": self.kind,
            "query_gen": self.query_gen,
            "gallery_gen": self.gallery_gen,
            "value": _json_float(self.value),
            "threshold": _json_float(self.threshold),
            "passed": self.passed,
            "reference_gen": self.reference_gen,
            "comparison": self.comparison,
        }


@dataclass(frozen=True)
class GateVerdict:
    """The gate's decision, with every number behind it."""

    passed: bool
    kind: VerdictKind  # "promote" or "rollback"
    candidate: int  # the generation being promoted (rollback: the target)
    production: int | None  # production when the gate ran
    live: tuple[int, ...]  # live generations when the gate ran
    checks: tuple[GateCheck, ...]  # every comparison, failing or not
    evaluations: dict[tuple[int, int], RetrievalMetrics]  # (query gen, gallery gen) -> metrics
    formal: dict[tuple[int, int], FormalCheck]  # (new gen, old gen) -> formal definition check
    reasons: tuple[str, ...]  # one human line per failure; empty when passed
    margin: float
    primary_metric: str
    artifact_sha256: str  # the registered sha256 the verdict is about
    artifact_ok: bool  # the file still hashes to ``artifact_sha256``
    require_improvement: bool
    check_formal: bool
    notes: tuple[str, ...] = ()  # informative lines that did not decide anything (skipped checks)
    mixed: MixedEstimate | None = None  # the mixed-gallery estimate (promotion only)
    mixed_tolerance: float | None = None  # GateConfig.mixed_tolerance; None: the estimate only reported

    @property
    def failing_checks(self) -> tuple[GateCheck, ...]:
        """The comparisons that failed."""
        return tuple(c for c in self.checks if not c.passed)

    def generations(self) -> list[int]:
        """Every generation that appears in an evaluation, ascending."""
        return sorted({g for pair in self.evaluations for g in pair})

    def matrix(self, metric: str | None = None) -> tuple[list[int], np.ndarray]:
        """The evaluated pairs as a compatibility matrix (NaN where a pair was not evaluated).

        Args:
            metric: one of :data:`METRICS`; default the primary metric.

        Returns:
            (generation ids in row/column order, float64 [T, T]).
        """
        name = metric or self.primary_metric
        gens = self.generations()
        values = {pair: m.get(name) for pair, m in self.evaluations.items()}
        return gens, matrix_from_pairs(gens, values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as stored in the registry's gate report."""
        gens, mat = self.matrix()
        return {
            "passed": self.passed,
            "kind": self.kind,
            "candidate": self.candidate,
            "production": self.production,
            "live": list(self.live),
            "margin": self.margin,
            "primary_metric": self.primary_metric,
            "require_improvement": self.require_improvement,
            "check_formal": self.check_formal,
            "mixed_tolerance": self.mixed_tolerance,
            "mixed": self.mixed.to_dict() if self.mixed is not None else None,
            "artifact_sha256": self.artifact_sha256,
            "artifact_ok": self.artifact_ok,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "checks": [c.to_dict() for c in self.checks],
            "evaluations": [
                {"query_gen": q, "gallery_gen": g, **m.as_dict(include_counts=True)}
                for (q, g), m in sorted(self.evaluations.items())
            ],
            "formal": [f.to_dict() for _, f in sorted(self.formal.items())],
            "matrix": {
                "generations": gens,
                "metric": self.primary_metric,
                "values": [[_json_float(v) for v in row] for row in mat],
            },
        }

    def explain(self) -> str:
        """One paragraph for the CLI: why the gate refused (or what it accepted)."""
        metric = METRIC_NAMES[self.primary_metric]
        live = ", ".join(str(g) for g in self.live) or "none"
        prod = "none" if self.production is None else str(self.production)
        what = "promotion" if self.kind == "promote" else "rollback"
        head = (
            f"Gate {'passed' if self.passed else 'refused'} {what} of gen {self.candidate} "
            f"(live generations: {live}; production: {prod}; metric: {metric}; "
            f"margin {self.margin:.3f})"
        )
        if self.passed:
            n = len(self.checks)
            body = f"all {n} check{'s' if n != 1 else ''} passed" if n else "no generation to check against"
            if self.mixed is not None and self.live:
                body += f"; {self.mixed.summary()}"
            return f"{head}: {body}."
        return f"{head}: " + "; ".join(self.reasons) + "."


def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


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


class _Evaluator:
    """Validates the inputs once and evaluates each (query gen, gallery gen) pair at most once."""

    def __init__(self, inputs: GateInputs) -> None:
        self.inputs = inputs
        self.ql = np.asarray(inputs.query_labels)
        self.gl = np.asarray(inputs.gallery_labels)
        self.evaluations: dict[tuple[int, int], RetrievalMetrics] = {}
        self.formal: dict[tuple[int, int], FormalCheck] = {}
        self._over: dict[tuple[int, int, frozenset[int] | None], RetrievalMetrics] = {}

    def shared(self, a: int, b: int) -> frozenset[int] | None:
        return shared_classes(self.inputs.classes.get(a), self.inputs.classes.get(b))

    def _query(self, gen: int) -> np.ndarray:
        return self._embeddings(gen, self.inputs.query_embeddings, self.ql, "query")

    def _gallery(self, gen: int) -> np.ndarray:
        return self._embeddings(gen, self.inputs.gallery_embeddings, self.gl, "gallery")

    @staticmethod
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

    def metrics(self, q: int, g: int) -> RetrievalMetrics:
        """M(q, g) on the classes both learnt: the matrix entry, recorded in ``evaluations``."""
        key = (q, g)
        if key not in self.evaluations:
            self.evaluations[key] = self.over(q, g, self.shared(q, g))
        return self.evaluations[key]

    def over(self, q: int, g: int, classes: frozenset[int] | None) -> RetrievalMetrics:
        """M(q, g) on the probe items of ``classes``."""
        key = (q, g, classes)
        if key not in self._over:
            self._over[key] = pair_metrics(self._query(q), self.ql, self._gallery(g), self.gl, classes)
        return self._over[key]

    def formal_check(self, new: int, old: int) -> FormalCheck:
        key = (new, old)
        if key not in self.formal:
            classes = self.shared(new, old)
            nq, ql = restrict(self._query(new), self.ql, classes)
            oq, _ = restrict(self._query(old), self.ql, classes)
            og, gl = restrict(self._gallery(old), self.gl, classes)
            self.formal[key] = formal_compatibility(nq, oq, og, ql, gl, new_gen=new, old_gen=old)
        return self.formal[key]


def _sha_reason(inputs: GateInputs) -> str | None:
    if inputs.artifact_sha256 is None:
        return (
            f"artifact changed since registration: the file of gen {inputs.candidate} is missing or "
            f"unreadable (registered sha256 {inputs.registered_sha256[:12]}...)"
        )
    if inputs.artifact_sha256.lower() != inputs.registered_sha256.lower():
        return (
            f"artifact changed since registration: registered sha256 {inputs.registered_sha256[:12]}..., "
            f"file now {inputs.artifact_sha256[:12]}..."
        )
    return None


def _formal_reason(f: FormalCheck) -> str:
    parts = []
    if not f.same_class_ok:
        parts.append(
            f"same-class E[d] across generations {f.same_class_cross:.3f} > within gen {f.old_gen} "
            f"{f.same_class_old:.3f}"
        )
    if not f.diff_class_ok:
        parts.append(
            f"different-class E[d] across generations {f.diff_class_cross:.3f} < within gen {f.old_gen} "
            f"{f.diff_class_old:.3f}"
        )
    return f"gen {f.new_gen} vs gen {f.old_gen}: formal compatibility violated: " + ", ".join(parts)


def _unique(gens: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted({int(g) for g in gens}))


def _verdict(
    kind: VerdictKind,
    candidate: int,
    inputs: GateInputs,
    cfg: GateConfig,
    ev: _Evaluator,
    checks: list[GateCheck],
    reasons: list[str],
    notes: list[str],
    require_improvement: bool,
    mixed: MixedEstimate | None = None,
) -> GateVerdict:
    """Add the artifact check to ``reasons`` and assemble the verdict."""
    sha_reason = _sha_reason(inputs)
    if sha_reason:
        reasons.append(sha_reason)
    return GateVerdict(
        passed=not reasons,
        kind=kind,
        candidate=candidate,
        production=None if inputs.production is None else int(inputs.production),
        live=_unique(inputs.live),
        checks=tuple(checks),
        evaluations=dict(ev.evaluations),
        formal=dict(ev.formal),
        reasons=tuple(reasons),
        margin=cfg.margin,
        primary_metric=cfg.primary_metric,
        artifact_sha256=inputs.registered_sha256,
        artifact_ok=sha_reason is None,
        require_improvement=require_improvement,
        check_formal=cfg.check_formal,
        notes=tuple(notes),
        mixed=mixed,
        mixed_tolerance=cfg.mixed_tolerance if kind == "promote" else None,
    )


def evaluate_candidate(inputs: GateInputs, config: GateConfig | None = None) -> GateVerdict:
    """Decide whether ``inputs.candidate`` may be promoted to production.

    Computes M(t, j) and M(j, j) for every live j, M(t, t), and M(p, p) for production p, then:

    * compatibility, for every live ``j != t``: ``M(t, j) > M(j, j) + margin`` (strict; ties fail);
    * improvement, unless ``config.require_improvement`` is False or there is no production (or the
      candidate is production): ``M(t, t) > M(p, p)``;
    * the artifact still hashes to its registered sha256;
    * the formal definition for every live pair, reported, and required only with ``check_formal``;
    * the mixed-gallery estimate (:func:`upgrader.compat.mixed.estimate_mixed`), reported in the
      notes, and required only with ``mixed_tolerance``: mixed >= re-index - tolerance.

    The very first generation (no live generation, no production) passes both parts trivially.

    Args:
        inputs: probe labels and embeddings, candidate, live generations, production, checksums.
        config: thresholds; default :class:`GateConfig()`.

    Returns:
        The verdict; ``reasons`` names every failing pair with its numbers.

    Raises:
        ValueError: a needed generation has no probe embeddings, or shapes disagree.
    """
    cfg = config or GateConfig()
    ev = _Evaluator(inputs)
    t = int(inputs.candidate)
    live = _unique(inputs.live)
    prod = None if inputs.production is None else int(inputs.production)
    name = METRIC_NAMES[cfg.primary_metric]
    checks: list[GateCheck] = []
    reasons: list[str] = []
    notes: list[str] = []

    self_t = ev.metrics(t, t).get(cfg.primary_metric)

    for j in live:
        if j == t:
            notes.append(f"gen {t} is already live; it is not checked against itself")
            continue
        value = ev.metrics(t, j).get(cfg.primary_metric)
        ev.metrics(j, j)  # the diagonal entry, for the report's matrix
        # M(j, j) on the same classes as M(t, j): the classes both learnt (usually all of j's).
        self_j = ev.over(j, j, ev.shared(t, j)).get(cfg.primary_metric)
        threshold = self_j + cfg.margin
        ok = value > threshold
        checks.append(GateCheck("compatibility", t, j, value, threshold, ok, j, ">"))
        if not ok:
            reasons.append(
                f"gen {t} queries on gen {j} gallery: {name} {value:.3f} <= self-test of gen {j} "
                f"{self_j:.3f} + margin {cfg.margin:.3f}"
            )
        formal = ev.formal_check(t, j)
        if cfg.check_formal and not formal.passed:
            reasons.append(_formal_reason(formal))

    if prod is None:
        notes.append("no production generation: the improvement check does not apply")
    elif prod == t:
        notes.append(f"gen {t} is production already: the improvement check does not apply")
    else:
        # Production's self-test on the candidate's classes: would serving with t beat serving with
        # p on everything t is meant to serve?
        ev.metrics(prod, prod)  # the diagonal entry, for the report's matrix
        self_p = ev.over(prod, prod, ev.shared(t, t)).get(cfg.primary_metric)
        if cfg.require_improvement:
            ok = self_t > self_p
            checks.append(GateCheck("improvement", t, t, self_t, self_p, ok, prod, ">"))
            if not ok:
                reasons.append(
                    f"gen {t} self-test {name} {self_t:.3f} <= self-test of production gen {prod} "
                    f"{self_p:.3f}: not an improvement"
                )
        else:
            notes.append(
                f"improvement waived: gen {t} self-test {self_t:.3f} vs production gen {prod} {self_p:.3f}"
            )

    mixed = _mixed_check(inputs, cfg, checks, reasons, notes)
    return _verdict("promote", t, inputs, cfg, ev, checks, reasons, notes, cfg.require_improvement, mixed)


def _mixed_check(
    inputs: GateInputs, cfg: GateConfig, checks: list[GateCheck], reasons: list[str], notes: list[str]
) -> MixedEstimate:
    """Estimate the mixed gallery, note it, and add the "mixed" check when a tolerance is set."""
    # Imported here because mixed_estimate builds on this module's retrieval_metrics.
    from upgrader.compat.mixed import estimate_mixed

    t = int(inputs.candidate)
    est = estimate_mixed(
        t,
        inputs.query_labels,
        inputs.query_embeddings,
        inputs.gallery_labels,
        inputs.gallery_embeddings,
        inputs.gallery_owners,
        inputs.classes.get(t) or None,  # empty, like missing, means every probe class (shared_classes)
    )
    notes.append(est.summary())
    tol = cfg.mixed_tolerance
    if tol is not None:
        threshold = est.reindex - tol
        ok = est.mixed >= threshold
        checks.append(GateCheck("mixed", t, t, est.mixed, threshold, ok, t, ">="))
        if not ok:
            reasons.append(
                f"gen {t} on the mixed gallery: estimated template top-1 {est.mixed:.3f} < {est.reindex:.3f} "
                f"after a re-index - tolerance {tol:.3f} ({est.ownership()})"
            )
    return est


def evaluate_rollback(
    inputs: GateInputs,
    target: int,
    newer_gallery_gens: Iterable[int],
    config: GateConfig | None = None,
) -> GateVerdict:
    """Decide whether production may roll back to the older generation ``target`` (o).

    For every gallery generation ``j`` in ``newer_gallery_gens`` (written after o) that is live:
    ``M(o, j) >= M(j, j) - margin`` — the upper triangle, old queries on a newer gallery. Generations
    in ``newer_gallery_gens`` that are not live have no items to serve and are skipped (noted). There
    is no improvement check (a rollback is expected to be worse). The artifact check applies to o:
    ``inputs.registered_sha256`` / ``artifact_sha256`` must be o's, and ``inputs.candidate`` must be o.
    The formal definition is evaluated with o's queries against j's gallery.

    Args:
        inputs: as for :func:`evaluate_candidate`, with ``candidate == target``.
        target: the generation to roll back to.
        newer_gallery_gens: gallery generations written after ``target``.
        config: thresholds; default :class:`GateConfig()`.

    Raises:
        ValueError: ``inputs.candidate`` is not ``target``; missing embeddings; shapes disagree.
    """
    cfg = config or GateConfig()
    o = int(target)
    if int(inputs.candidate) != o:
        raise ValueError(
            f"rollback target gen {o} differs from inputs.candidate gen {inputs.candidate}: the "
            "artifact checksums in the inputs must be the target's"
        )
    ev = _Evaluator(inputs)
    live = _unique(inputs.live)
    name = METRIC_NAMES[cfg.primary_metric]
    checks: list[GateCheck] = []
    reasons: list[str] = []
    notes: list[str] = []

    ev.metrics(o, o)
    for j in _unique(newer_gallery_gens):
        if j == o:
            continue
        if j not in live:
            notes.append(f"gen {j} has no items in the gallery: not checked")
            continue
        value = ev.metrics(o, j).get(cfg.primary_metric)
        ev.metrics(j, j)  # the diagonal entry, for the report's matrix
        self_j = ev.over(j, j, ev.shared(o, j)).get(cfg.primary_metric)
        threshold = self_j - cfg.margin
        ok = value >= threshold
        checks.append(GateCheck("rollback", o, j, value, threshold, ok, j, ">="))
        if not ok:
            reasons.append(
                f"gen {o} queries on gen {j} gallery: {name} {value:.3f} < self-test of gen {j} "
                f"{self_j:.3f} - margin {cfg.margin:.3f}"
            )
        formal = ev.formal_check(o, j)
        if cfg.check_formal and not formal.passed:
            reasons.append(_formal_reason(formal))

    return _verdict("rollback", o, inputs, cfg, ev, checks, reasons, notes, False)


__all__ = [
    "DEFAULT_PRIMARY_METRIC",
    "METRICS",
    "METRIC_NAMES",
    "FormalCheck",
    "GateCheck",
    "GateConfig",
    "GateInputs",
    "GateVerdict",
    "RetrievalMetrics",
    "average_compatibility",
    "average_multimodel_accuracy",
    "compatibility_matrix",
    "evaluate_candidate",
    "evaluate_rollback",
    "formal_compatibility",
    "matrix_from_pairs",
    "retrieval_metrics",
]
