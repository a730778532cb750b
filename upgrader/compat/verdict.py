"""What the gate returns: each comparison it made (:class:`GateCheck`) and its decision (:class:`GateVerdict`).

Pure numpy. ``verdict.to_dict()`` is JSON-able: it is the body of the gate report the registry stores,
and ``verdict.explain()`` the paragraph the CLI prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from upgrader.compat.formal import FormalCheck
from upgrader.compat.item_search import Interval
from upgrader.compat.matrix import matrix_from_pairs
from upgrader.compat.metrics import METRIC_NAMES, RetrievalMetrics, json_float
from upgrader.compat.mixed import MixedEstimate
from upgrader.compat.score_calibration import Calibration
from upgrader.compat.served import ServedEstimate

CheckKind = Literal["compatibility", "improvement", "rollback", "mixed", "regression"]
VerdictKind = Literal["promote", "rollback"]


@dataclass(frozen=True)
class GateCheck:
    """One comparison the gate made."""

    kind: CheckKind  # "compatibility" (t vs live j), "improvement" (t vs production), "rollback",
    # "mixed" (t's item-level search after the move vs a re-index) or "regression" (vs production now)
    query_gen: int  # generation whose probe queries were used for ``value``
    gallery_gen: int  # generation whose probe gallery was used for ``value`` (the candidate's for the
    # item-level checks, whose gallery is the composed one)
    value: float  # M(query_gen, gallery_gen) in ``metric``
    threshold: float  # what ``value`` was compared with, margin (or tolerance) included
    passed: bool
    reference_gen: int  # the generation the threshold comes from (its self-test; production's estimate)
    comparison: str  # ">" (strict: ties fail) or ">="
    metric: str | None = None  # None: the verdict's primary metric; else "recall_at_1" or "map" (item level)
    # Bootstrap 95% interval of the paired per-query difference behind the check (value minus the
    # reference side, margin or tolerance not included): M(t, j) - M(j, j), t's estimate - production's...
    interval: Interval | None = None
    # The classes both sides were scored on (None: every probe class; the item-level checks say
    # theirs in their own lines), and what saturation changed (both sides at 100%: a finer metric
    # decided, or both were perfect), for the verdict's notes.
    classes: tuple[int, ...] | None = None
    note: str | None = None

    def undecided_line(self) -> str | None:
        """The line saying the probe set cannot tell the two sides apart (the interval spans 0), or None."""
        iv = self.interval
        if iv is None or iv.excludes_zero() or iv.low != iv.low:  # NaN: nothing was scored
            return None
        q, g, r = self.query_gen, self.gallery_gen, self.reference_gen
        what = {
            "compatibility": f"M({q}, {g}) vs M({g}, {g})",
            "rollback": f"M({q}, {g}) vs M({g}, {g})",
            "improvement": f"gen {q} self-test vs production gen {r}'s",
            "mixed": f"gen {q} after the move vs a re-index",
            "regression": f"gen {q} after the move vs production gen {r} now",
        }[self.kind]
        return (
            f"{what}: the probe set is too small to tell them apart (difference {100 * iv.value:+.1f} points, "
            f"95% interval {100 * iv.low:+.1f} to {100 * iv.high:+.1f})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "kind": self.kind,
            "query_gen": self.query_gen,
            "gallery_gen": self.gallery_gen,
            "value": json_float(self.value),
            "threshold": json_float(self.threshold),
            "passed": self.passed,
            "reference_gen": self.reference_gen,
            "comparison": self.comparison,
            "metric": self.metric,
            "difference": self.interval.to_dict() if self.interval is not None else None,
            "classes": list(self.classes) if self.classes is not None else None,
            "note": self.note,
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
    mixed: MixedEstimate | None = None  # the template mixed-gallery estimate (reported, decides nothing)
    mixed_tolerance: float | None = None  # GateConfig.mixed_tolerance; None: the gap to a re-index only reported
    served: ServedEstimate | None = None  # item-level search on the gallery after the move (the rules' numbers)
    allow_regression: bool = False  # GateConfig.allow_regression: the no-regression rule was waived
    calibration: Calibration | None = None  # what serving applies once the candidate serves (stored with the report)

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
            "allow_regression": self.allow_regression,
            "mixed": self.mixed.to_dict() if self.mixed is not None else None,
            "served": self.served.to_dict() if self.served is not None else None,
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
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
                "values": [[json_float(v) for v in row] for row in mat],
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
            if self.served is not None and self.live:
                body += f"; {self.served.summary()}"
            return f"{head}: {body}."
        return f"{head}: " + "; ".join(self.reasons) + "."


__all__ = ["CheckKind", "GateCheck", "GateVerdict", "VerdictKind"]
