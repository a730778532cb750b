"""What the gate returns: each comparison it made (:class:`GateCheck`) and its decision (:class:`GateVerdict`).

Pure numpy. ``verdict.to_dict()`` is JSON-able: it is the body of the gate report the registry stores,
and ``verdict.explain()`` the paragraph the CLI prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from upgrader.compat.formal import FormalCheck
from upgrader.compat.matrix import matrix_from_pairs
from upgrader.compat.metrics import METRIC_NAMES, RetrievalMetrics, json_float
from upgrader.compat.mixed import MixedEstimate

CheckKind = Literal["compatibility", "improvement", "rollback", "mixed"]
VerdictKind = Literal["promote", "rollback"]


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
            "value": json_float(self.value),
            "threshold": json_float(self.threshold),
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
            if self.mixed is not None and self.live:
                body += f"; {self.mixed.summary()}"
            return f"{head}: {body}."
        return f"{head}: " + "; ".join(self.reasons) + "."


__all__ = ["CheckKind", "GateCheck", "GateVerdict", "VerdictKind"]
