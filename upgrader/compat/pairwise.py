"""The gate's pairwise rules, one pair of generations at a time (docs/design.md §3).

Pure numpy. :func:`compatibility_check` (``M(t, j) > M(j, j) + margin``, strictly),
:func:`improvement_check` (``M(t, t) > M(p, p)``, strictly) and :func:`rollback_check`
(``M(o, j) >= M(j, j) - margin``). The gate (:mod:`upgrader.compat.gate`) and the matrix view call the
same functions, so a matrix cell and the gate's check for that pair never disagree.

Both sides of a comparison are scored on one class set, and every message names it and quotes each
self-test as the matrix and the lineage table print it (a percentage with one decimal); where the
class set is narrower than the generation's own, the message also quotes its diagonal entry.

**Saturation.** A strict comparison of two sides that both sit at the metric's ceiling (100%) is a
tie the metric cannot break: a fine-tune whose template top-1 ties its parent's at 100% could never
pass. Then the finer item-level metric of the same pair on the same classes decides instead
(:data:`FINER_METRIC`: mAP ranks every gallery item, not only the nearest template), and the check
says so. When that is at 100% on both sides too, both are perfect on the probe set and nothing can
beat them: the check passes, and says that the probe set cannot tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from upgrader.compat.matrix import PairEvaluator
from upgrader.compat.metrics import METRIC_NAMES
from upgrader.compat.mixed import ranges
from upgrader.compat.verdict import GateCheck
from upgrader.core.formatting import pct

#: The metric that decides a strict check when both sides are at the primary metric's ceiling.
FINER_METRIC: dict[str, str] = {"template_top1": "mean_ap", "recall_at_1": "mean_ap"}
#: A value at least this is at the ceiling (metrics are means of 0/1 hits or of precisions).
CEILING = 1.0 - 1e-9


class Rules(Protocol):
    """What the pairwise rules read of a :class:`upgrader.compat.gate.GateConfig`."""

    @property
    def margin(self) -> float: ...  # noqa: D102

    @property
    def primary_metric(self) -> str: ...  # noqa: D102


def class_words(classes: frozenset[int] | None) -> str:
    """``classes 0-3`` (the set a number is measured on), or ``every probe class``."""
    return f"classes {ranges(sorted(classes))}" if classes else "every probe class"


def points(margin: float) -> str:
    """A margin or tolerance (metric units) in percentage points, as the messages quote it."""
    return f"{100 * margin:.1f} points"


@dataclass(frozen=True)
class Strict:
    """A strict comparison ``value > reference + margin`` as decided, saturation included."""

    metric: str  # the metric that decided (the primary one, or FINER_METRIC's when it saturated)
    value: float
    reference: float  # the other side, margin not included
    passed: bool
    line: str | None  # what saturation changed, for the verdict's notes (None: nothing)


def decide_strict(
    ev: PairEvaluator, a: tuple[int, int], b: tuple[int, int], classes: frozenset[int] | None,
    metric: str, margin: float,
) -> Strict:
    """``M(a) > M(b) + margin`` on ``classes``, moving to a finer metric while both sides saturate."""
    chain = [metric, *([FINER_METRIC[metric]] if metric in FINER_METRIC else [])]
    for used in chain:
        value, reference = ev.over(*a, classes).get(used), ev.over(*b, classes).get(used)
        if not (value >= CEILING and reference >= CEILING):
            line = None if used == metric else (
                f"both at 100.0% {METRIC_NAMES[metric]} on {class_words(classes)}, which cannot tell them apart: "
                f"{METRIC_NAMES[used]} decides ({pct(value)}% vs {pct(reference)}%)")
            return Strict(used, value, reference, value > reference + margin, line)
    names = " and ".join(METRIC_NAMES[m] for m in chain)
    return Strict(chain[-1], value, reference, True,
                  f"both at 100.0% {names} on {class_words(classes)}: perfect on the probe set, nothing can "
                  "beat them, so the check passes (a larger probe set could tell them apart)")


def _metric_tag(strict: Strict, primary: str) -> str | None:
    return None if strict.metric == primary else strict.metric


def _diagonal(ev: PairEvaluator, j: int, classes: frozenset[int] | None, metric: str) -> str:
    """When ``classes`` is narrower than j's own: j's self-test on all its classes, the matrix's number."""
    own = ev.shared(j, j)
    if own == classes:
        return ""
    return (f" (on all its {class_words(own)}, the matrix's diagonal, gen {j}'s self-test is "
            f"{pct(ev.metrics(j, j).get(metric))}%)")


def compatibility_check(
    ev: PairEvaluator, t: int, j: int, cfg: Rules, *, interval: bool = True
) -> tuple[GateCheck, str | None]:
    """The gate's rule for one pair: ``M(t, j) > M(j, j) + margin``, strictly, on the classes both learnt.

    Both sides are scored on the classes ``t`` and ``j`` both learnt (usually all of j's), so a
    candidate is not failed for moving a class the old generation never knew.

    Args:
        interval: also bootstrap the paired difference M(t, j) - M(j, j) (the matrix view, which
            only colours cells, skips it).

    Returns:
        The check (its ``note`` says when saturation moved the decision to a finer metric), and the
        line that explains it when it fails (None when it passes).
    """
    margin, metric = cfg.margin, cfg.primary_metric
    ev.metrics(t, j)  # the matrix entries, for the report
    ev.metrics(j, j)
    shared = ev.shared(t, j)
    s = decide_strict(ev, (t, j), (j, j), shared, metric, margin)
    diff = ev.difference((t, j), (j, j), shared, s.metric) if interval else None
    check = GateCheck("compatibility", t, j, s.value, s.reference + margin, s.passed, j, ">",
                      metric=_metric_tag(s, metric), interval=diff, classes=_listed(shared), note=s.line)
    if check.passed:
        return check, None
    plus = f" + margin {points(margin)}" if margin else ""
    return check, (
        f"gen {t} queries on gen {j} gallery: {METRIC_NAMES[s.metric]} {pct(s.value)}% <= self-test of gen {j} "
        f"{pct(s.reference)}%{plus} on {class_words(shared)}{_diagonal(ev, j, shared, s.metric)}"
    )


def improvement_check(ev: PairEvaluator, t: int, prod: int, cfg: Rules) -> tuple[GateCheck, str | None]:
    """``M(t, t) > M(p, p)``, strictly, both on the candidate's classes: would serving with t beat
    serving with production p on everything t is meant to serve? Returns as :func:`compatibility_check`."""
    metric = cfg.primary_metric
    ev.metrics(t, t)
    ev.metrics(prod, prod)  # the diagonal entry, for the report's matrix
    classes = ev.shared(t, t)
    s = decide_strict(ev, (t, t), (prod, prod), classes, metric, 0.0)
    diff = ev.difference((t, t), (prod, prod), classes, s.metric)
    check = GateCheck("improvement", t, t, s.value, s.reference, s.passed, prod, ">",
                      metric=_metric_tag(s, metric), interval=diff, classes=_listed(classes), note=s.line)
    if check.passed:
        return check, None
    return check, (
        f"gen {t} self-test {METRIC_NAMES[s.metric]} {pct(s.value)}% <= self-test of production gen {prod} "
        f"{pct(s.reference)}% on {class_words(classes)}{_diagonal(ev, prod, classes, s.metric)}: not an improvement"
    )


def rollback_check(ev: PairEvaluator, o: int, j: int, cfg: Rules) -> tuple[GateCheck, str | None]:
    """Whether the older generation ``o`` reads ``j``'s gallery: ``M(o, j) >= M(j, j) - margin``, on the
    classes both learnt (a tie passes, so saturation needs no rule here).

    Returns:
        The check, and the line that explains it when it fails (None when it passes).
    """
    margin, metric = cfg.margin, cfg.primary_metric
    value = ev.metrics(o, j).get(metric)
    ev.metrics(j, j)  # the diagonal entry, for the report's matrix
    shared = ev.shared(o, j)
    self_j = ev.self_test(j, shared).get(metric)
    diff = ev.difference((o, j), (j, j), shared, metric)
    check = GateCheck("rollback", o, j, value, self_j - margin, value >= self_j - margin, j, ">=",
                      interval=diff, classes=_listed(shared))
    if check.passed:
        return check, None
    minus = f" - margin {points(margin)}" if margin else ""
    return check, (
        f"gen {o} queries on gen {j} gallery: {METRIC_NAMES[metric]} {pct(value)}% < self-test of gen {j} "
        f"{pct(self_j)}%{minus} on {class_words(shared)}{_diagonal(ev, j, shared, metric)}"
    )


def _listed(classes: frozenset[int] | None) -> tuple[int, ...] | None:
    return None if classes is None else tuple(sorted(classes))


__all__ = [
    "CEILING", "FINER_METRIC", "Strict", "class_words", "compatibility_check", "decide_strict",
    "Rules", "improvement_check", "points", "rollback_check",
]
