"""The gate's item-level rules, on :class:`~upgrader.compat.served.ServedEstimate` numbers.

Pure numpy. Two rules on top of the pairwise criterion (docs/design.md §3):

* **no regression** (on unless waived): on the gallery as it stands now (the classes it holds), the
  candidate's calibrated item-level estimate must not be below production's (each with its own
  calibration), by point estimate. The
  comparison is paired by probe query, and the reason or note says when its bootstrap interval cannot
  tell the two apart: a point estimate decides, the interval says how much that decision is worth.
* **gap to a re-index** (only with a tolerance): calibrated >= re-index - tolerance.

Also :func:`template_estimate`, the older template-top-1 mixed estimate, which is reported (the study
plots it) and decides nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from upgrader.compat.mixed import MixedEstimate, estimate_mixed, owners_of, ranges
from upgrader.compat.served import ServedEstimate
from upgrader.compat.verdict import GateCheck

_NAMES = {"recall_at_1": "recall@1", "map": "mAP"}


def _interval_words(diff_value: float, low: float, high: float) -> str:
    return f"difference {diff_value:+.3f}, 95% interval {low:+.3f} to {high:+.3f}"


def item_checks(
    est: ServedEstimate, *, tolerance: float | None, allow_regression: bool
) -> tuple[list[tuple[GateCheck, str | None]], list[str]]:
    """The item-level checks for a promotion and the notes that go with them.

    Returns:
        (check, the line that explains it when it fails) pairs, and informative lines: the estimate's
        summary, why no regression check was made, or the waived comparison's numbers.
    """
    t, metric, name = est.candidate, est.metric, _NAMES[est.metric]
    checks: list[tuple[GateCheck, str | None]] = []
    notes = [est.summary()]
    if tolerance is not None:
        reindex = est.reindex.get(metric).value
        threshold = reindex - tolerance
        ok = est.value >= threshold
        reason = None if ok else (
            f"gen {t} on the gallery after the move: item-level {name} {est.value:.3f} (calibrated) < "
            f"{reindex:.3f} after a re-index - tolerance {tolerance:.3f} ({est.ownership()}; "
            f"{_interval_words(est.gap.value, est.gap.low, est.gap.high)})"
        )
        check = GateCheck("mixed", t, t, est.value, threshold, ok, t, ">=", metric=metric, interval=est.gap)
        checks.append((check, reason))
    reg = est.regression
    if reg is None:
        notes.append(f"no-regression rule: {est.why_no_regression}")
        return checks, notes
    mine, theirs, d = reg.candidate.get(metric).value, reg.production_now.get(metric).value, reg.difference
    words = _interval_words(d.value, d.low, d.high)
    if allow_regression:
        notes.append(
            f"no-regression rule waived: gen {t} {name} {mine:.3f} vs production gen "
            f"{reg.production} {theirs:.3f} on the gallery as it stands, classes {ranges(list(reg.classes))} ({words})"
        )
        return checks, notes
    ok = mine >= theirs
    reason = None if ok else (
        f"gen {t} regresses search on the gallery as it stands (classes {ranges(list(reg.classes))}): "
        f"item-level {name} {mine:.3f} < production gen {reg.production}'s {theirs:.3f} "
        f"({words}{'' if d.excludes_zero() else '; the probe set cannot tell them apart'}); "
        "allowing the regression waives this rule"
    )
    check = GateCheck("regression", t, t, mine, theirs, ok, reg.production, ">=", metric=metric, interval=d)
    checks.append((check, reason))
    return checks, notes


def template_estimate(
    candidate: int,
    query_labels: np.ndarray,
    query_embeddings: Mapping[int, np.ndarray],
    gallery_labels: np.ndarray,
    gallery_embeddings: Mapping[int, np.ndarray],
    holders: Mapping[int, Mapping[int, int]],
    candidate_classes: Sequence[int] | None,
) -> MixedEstimate:
    """The template-top-1 mixed estimate (each class by the generation holding most of its items)."""
    return estimate_mixed(candidate, query_labels, query_embeddings, gallery_labels, gallery_embeddings,
                          owners_of(holders), candidate_classes or None)  # empty, like missing: every class


__all__ = ["item_checks", "template_estimate"]
