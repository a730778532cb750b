"""The compatibility gate: whether a generation may serve, decided from probe-set numbers.

Pure numpy. The gate computes and writes nothing; the services layer loads the probe embeddings from
the registry, calls :func:`evaluate_candidate` (promotion) or :func:`evaluate_rollback`, and stores the
returned :class:`~upgrader.compat.verdict.GateVerdict` as a gate report.

The rules (docs/design.md §3), on retrieval accuracy ``M(q, g)`` (:mod:`upgrader.compat.metrics`)
scored on the probe classes both generations learnt:

* **compatibility** (the gate's rule, :func:`compatibility_check`): candidate ``t`` is compatible with
  live generation ``j`` iff ``M(t, j) > M(j, j) + margin`` — strictly, so a tie fails. The matrix view
  colours its cells with the same function, so a cell and the gate never disagree.
* **improvement**: unless waived, the candidate must also improve on production: ``M(t, t) > M(p, p)``.
  Both strict rules move to mAP when both sides sit at 100% of the primary metric
  (:mod:`upgrader.compat.pairwise`, where the pairwise rules live).
* **rollback** (:func:`rollback_check`) to an older ``o`` needs ``M(o, j) >= M(j, j) - margin`` for
  every live gallery generation ``j`` written after ``o``.
* **item-level search after the move** (:mod:`upgrader.compat.served`, rules in
  :mod:`upgrader.compat.item_rules`), promotion only: the candidate's calibrated Recall@1 and mAP on a
  probe gallery composed like the real one after the move, next to a re-index and the raw number.
  **No regression** (on unless ``GateConfig.allow_regression``): on the classes the gallery holds now,
  not below production's own estimate now. ``GateConfig.mixed_tolerance`` bounds the gap to a re-index.
* every pairwise check carries a bootstrap interval of its paired per-query difference, and a note
  says when the probe set cannot tell the two sides apart.
* **formal definition** (:mod:`upgrader.compat.formal`): always reported; a condition only with
  ``GateConfig.check_formal``.
* **the artifact**: the verdict is about one exact ONNX artifact, so a file whose sha256 no longer
  matches the one registered fails the gate ("artifact changed since registration: ...").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from upgrader.compat.formal import FormalCheck, formal_for_pair
from upgrader.compat.item_rules import item_checks, template_estimate
from upgrader.compat.matrix import PairEvaluator
from upgrader.compat.metrics import DEFAULT_PRIMARY_METRIC, METRICS
from upgrader.compat.mixed import MixedEstimate
from upgrader.compat.pairwise import class_words, compatibility_check, improvement_check, rollback_check
from upgrader.compat.score_calibration import Calibration
from upgrader.compat.served import ServedEstimate, estimate_served, item_metric, serving_calibration
from upgrader.compat.verdict import GateCheck, GateVerdict, VerdictKind
from upgrader.core.formatting import pct


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
    # check is always computed and reported, but docs/design.md §3 makes the empirical criterion the gate's rule.
    check_formal: bool = False
    # Promotion also needs the item-level estimate on the gallery after the move >= its re-index
    # accuracy - mixed_tolerance (calibrated, in the item metric, in [0, 1]). None: only reported.
    mixed_tolerance: float | None = None
    # Waive the no-regression rule (recorded in the report): by default the candidate's item-level
    # estimate after the move must not be below production's own now, on the classes served now.
    allow_regression: bool = False

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
    # Class vertex -> {live generation: real gallery items of that class it stores}
    # (:func:`upgrader.compat.mixed.gallery_holders`); a class missing here has no items yet.
    gallery_holders: Mapping[int, Mapping[int, int]] = field(default_factory=dict)


def evaluator(inputs: GateInputs) -> PairEvaluator:
    """The pair evaluator over the probe embeddings and learnt classes in ``inputs``."""
    return PairEvaluator(
        inputs.query_labels, inputs.gallery_labels, inputs.query_embeddings, inputs.gallery_embeddings, inputs.classes
    )


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


def _unique(gens: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted({int(g) for g in gens}))


@dataclass
class _Tally:
    """What one gate run has found so far."""

    checks: list[GateCheck] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # one line per failure
    notes: list[str] = field(default_factory=list)  # informative lines that decide nothing
    formal: dict[tuple[int, int], FormalCheck] = field(default_factory=dict)

    def add(self, check: GateCheck, reason: str | None) -> None:
        self.checks.append(check)
        if reason:
            self.reasons.append(reason)
        if check.note:
            self.notes.append(f"{check.kind} gen {check.query_gen} on gen {check.gallery_gen}: {check.note}")
        undecided = check.undecided_line()
        if undecided:
            self.notes.append(undecided)

    def formal_pair(self, ev: PairEvaluator, cfg: GateConfig, new: int, old: int) -> None:
        """Evaluate the formal definition for (new, old); a reason only when it decides."""
        if (new, old) not in self.formal:
            self.formal[new, old] = formal_for_pair(ev, new, old)
        formal = self.formal[new, old]
        if cfg.check_formal and not formal.passed:
            self.reasons.append(formal.reason())


def _verdict(
    kind: VerdictKind,
    candidate: int,
    inputs: GateInputs,
    cfg: GateConfig,
    ev: PairEvaluator,
    tally: _Tally,
    require_improvement: bool,
    mixed: MixedEstimate | None = None,
    served: ServedEstimate | None = None,
) -> GateVerdict:
    """Add the artifact check to the reasons and assemble the verdict."""
    sha_reason = _sha_reason(inputs)
    if sha_reason:
        tally.reasons.append(sha_reason)
    return GateVerdict(
        passed=not tally.reasons,
        kind=kind,
        candidate=candidate,
        production=None if inputs.production is None else int(inputs.production),
        live=_unique(inputs.live),
        checks=tuple(tally.checks),
        evaluations=dict(ev.evaluations),
        formal=dict(tally.formal),
        reasons=tuple(tally.reasons),
        margin=cfg.margin,
        primary_metric=cfg.primary_metric,
        artifact_sha256=inputs.registered_sha256,
        artifact_ok=sha_reason is None,
        require_improvement=require_improvement,
        check_formal=cfg.check_formal,
        notes=tuple(tally.notes),
        mixed=mixed,
        mixed_tolerance=cfg.mixed_tolerance if kind == "promote" else None,
        served=served,
        allow_regression=cfg.allow_regression if kind == "promote" else False,
        calibration=_calibration(inputs),
    )


def _calibration(inputs: GateInputs) -> Calibration:
    """What serving applies once the candidate serves: fitted on all its probe queries against every
    generation that will have items (the live ones and the candidate)."""
    t = int(inputs.candidate)
    return serving_calibration(t, [*inputs.live, t], inputs.query_labels, inputs.gallery_labels,
                               inputs.query_embeddings, inputs.gallery_embeddings, inputs.classes,
                               inputs.gallery_holders)


def evaluate_candidate(inputs: GateInputs, config: GateConfig | None = None) -> GateVerdict:
    """Decide whether ``inputs.candidate`` may be promoted to production.

    Computes M(t, j) and M(j, j) for every live j, M(t, t), and M(p, p) for production p, then:

    * compatibility, for every live ``j != t``: :func:`compatibility_check` (strict; ties fail);
    * improvement, unless ``config.require_improvement`` is False or there is no production (or the
      candidate is production): ``M(t, t) > M(p, p)``;
    * the artifact still hashes to its registered sha256;
    * the formal definition for every live pair, reported, and required only with ``check_formal``;
    * item-level search on the gallery after the move (:func:`upgrader.compat.served.estimate_served`):
      not below production's estimate now on the classes served now (unless ``allow_regression``),
      and, with ``mixed_tolerance``, calibrated >= re-index - tolerance
      (:func:`upgrader.compat.item_rules.item_checks`);
    * the template mixed-gallery estimate (:mod:`upgrader.compat.mixed`), reported only.

    The verdict carries the calibration serving applies once the candidate serves.

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
    ev, tally = evaluator(inputs), _Tally()
    t = int(inputs.candidate)
    ev.metrics(t, t)  # the candidate's self-test: the diagonal entry, and the improvement check's value
    for j in _unique(inputs.live):
        if j == t:
            tally.notes.append(f"gen {t} is already live; it is not checked against itself")
            continue
        tally.add(*compatibility_check(ev, t, j, cfg))
        tally.formal_pair(ev, cfg, t, j)
    _improvement_check(inputs, cfg, ev, tally)
    served = estimate_served(t, inputs.production, inputs.live, inputs.query_labels, inputs.gallery_labels,
                             inputs.query_embeddings, inputs.gallery_embeddings, inputs.classes,
                             inputs.gallery_holders, item_metric(cfg.primary_metric))
    checks, notes = item_checks(served, tolerance=cfg.mixed_tolerance, allow_regression=cfg.allow_regression)
    for check, reason in checks:
        tally.add(check, reason)
    tally.notes.extend(notes)
    mixed = template_estimate(t, inputs.query_labels, inputs.query_embeddings, inputs.gallery_labels,
                              inputs.gallery_embeddings, inputs.gallery_holders, inputs.classes.get(t))
    return _verdict("promote", t, inputs, cfg, ev, tally, cfg.require_improvement, mixed, served)


def _improvement_check(inputs: GateInputs, cfg: GateConfig, ev: PairEvaluator, tally: _Tally) -> None:
    """M(t, t) > M(p, p) against production p (:func:`improvement_check`), or the note saying why it
    does not apply."""
    t = int(inputs.candidate)
    prod = None if inputs.production is None else int(inputs.production)
    if prod is None:
        tally.notes.append("no production generation: the improvement check does not apply")
        return
    if prod == t:
        tally.notes.append(f"gen {t} is production already: the improvement check does not apply")
        return
    check, reason = improvement_check(ev, t, prod, cfg)
    if not cfg.require_improvement:
        tally.notes.append(f"improvement waived: gen {t} self-test {pct(check.value)}% vs production gen {prod} "
                           f"{pct(check.threshold)}% on {class_words(ev.shared(t, t))}")
        return
    tally.add(check, reason)


def evaluate_rollback(
    inputs: GateInputs,
    target: int,
    newer_gallery_gens: Iterable[int],
    config: GateConfig | None = None,
) -> GateVerdict:
    """Decide whether production may roll back to the older generation ``target`` (o).

    For every gallery generation ``j`` in ``newer_gallery_gens`` (written after o) that is live:
    :func:`rollback_check` — the upper triangle, old queries on a newer gallery. Generations in
    ``newer_gallery_gens`` that are not live have no items to serve and are skipped (noted). There is
    no improvement check (a rollback is expected to be worse). The artifact check applies to o:
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
    ev, tally = evaluator(inputs), _Tally()
    live = _unique(inputs.live)
    ev.metrics(o, o)
    for j in _unique(newer_gallery_gens):
        if j == o:
            continue
        if j not in live:
            tally.notes.append(f"gen {j} has no items in the gallery: not checked")
            continue
        tally.add(*rollback_check(ev, o, j, cfg))
        tally.formal_pair(ev, cfg, o, j)
    return _verdict("rollback", o, inputs, cfg, ev, tally, False)


__all__ = [
    "GateConfig",
    "GateInputs",
    "compatibility_check",
    "evaluate_candidate",
    "evaluate_rollback",
    "evaluator",
    "rollback_check",
]
