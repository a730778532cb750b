"""The formal compatibility definition of Shen et al. (2020) between a new and an old generation.

Pure numpy. In expectation over (probe query, probe gallery) pairs with cosine distance ``d = 1 - cos``,
same-class pairs must be no farther across generations than within the old one, and different-class
pairs no nearer. The gate always computes and reports it; it only decides a verdict when
``GateConfig.check_formal`` is set, because docs/design.md §3 makes the empirical criterion the gate's rule (the
formal inequalities are sufficient in expectation but say nothing about the retrieval accuracy a user
sees, and they can fail for a model that retrieves better than its predecessor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from upgrader.compat.matrix import PairEvaluator
from upgrader.compat.metrics import as_features, as_labels, json_float


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

    def reason(self) -> str:
        """The line a failing check adds to a verdict's reasons (which inequality, with its numbers)."""
        parts = []
        if not self.same_class_ok:
            parts.append(
                f"same-class E[d] across generations {self.same_class_cross:.3f} > within gen {self.old_gen} "
                f"{self.same_class_old:.3f}"
            )
        if not self.diff_class_ok:
            parts.append(
                f"different-class E[d] across generations {self.diff_class_cross:.3f} < within gen {self.old_gen} "
                f"{self.diff_class_old:.3f}"
            )
        return f"gen {self.new_gen} vs gen {self.old_gen}: formal compatibility violated: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (NaN becomes ``None``)."""
        return {
            "new_gen": self.new_gen,
            "old_gen": self.old_gen,
            "same_class_cross": json_float(self.same_class_cross),
            "same_class_old": json_float(self.same_class_old),
            "diff_class_cross": json_float(self.diff_class_cross),
            "diff_class_old": json_float(self.diff_class_old),
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
    qt = as_features(new_queries, "new-generation query embeddings")
    qj = as_features(old_queries, "old-generation query embeddings")
    gj = as_features(old_gallery, "old-generation gallery embeddings")
    if qt.shape != qj.shape:
        raise ValueError(f"new queries {qt.shape} and old queries {qj.shape} must have the same shape")
    if qt.shape[1] != gj.shape[1]:
        raise ValueError(f"query dim {qt.shape[1]} != gallery dim {gj.shape[1]}")
    ql = as_labels(query_labels, qt.shape[0], "query labels")
    gl = as_labels(gallery_labels, gj.shape[0], "gallery labels")
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


def formal_for_pair(ev: PairEvaluator, new: int, old: int) -> FormalCheck:
    """The formal definition for (new, old) on the probe classes both learnt, from the gate's evaluator."""
    classes = ev.shared(new, old)
    nq, ql = ev.queries(new, classes)
    oq, _ = ev.queries(old, classes)
    og, gl = ev.gallery(old, classes)
    return formal_compatibility(nq, oq, og, ql, gl, new_gen=new, old_gen=old)


__all__ = ["FormalCheck", "formal_compatibility", "formal_for_pair"]
