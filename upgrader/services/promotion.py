"""Verify, promote and roll back: the gate applied to the registry.

``upgrader.compat.gate`` decides from numbers; this module loads those numbers from the registry (probe
embeddings of each generation, the live generations, production, who holds which class in the
gallery), stores the verdict as a gate report with the score calibration serving applies once the
report's generation serves, and moves the ``production`` alias. No torch: a CPU server can promote.

This is the one place the rules of a move live; the CLI, the dashboard and Python callers all come
through :func:`promote` and :func:`rollback`:

* a move needs a passing gate report about the target's exact artifact, or ``force`` with a reason
  (recorded as forced); a force overrides the gate, never the artifact's checksum
  (:func:`upgrader.services.registration.check_artifact` runs first, forced or not);
* a rollback target must have held production before through an unforced move, with the artifact it
  has now, or pass the gate's compatibility checks now (without the improvement check: a rollback may
  be worse); on top of either, it must read the gallery items written after it (the upper triangle).
  The stored report says which ground it stood on (:class:`RollbackGround`). The rule itself lives
  in :mod:`upgrader.services.rollback_rule` (its names are importable from here too); what the gate
  reads from the registry, in :mod:`upgrader.services.gate_inputs`.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from registry import AliasMove, GateReport, Generation

from upgrader.compat.gate import GateConfig, evaluate_candidate
from upgrader.compat.served import composition_after, composition_dict
from upgrader.compat.verdict import GateVerdict
from upgrader.core.errors import GateRefused, InvalidRequest, NoProduction
from upgrader.core.version import VERSION
from upgrader.services.gate_inputs import current_sha, gate_inputs, holders
from upgrader.services.matrix import class_sets, probe_labels
from upgrader.services.registration import check_artifact
from upgrader.services.rollback_rule import (  # the rollback rule, importable from here as before
    GroundKind,
    RollbackGround,
    held_production_move,
    judge_rollback,
    newer_gallery_generations,
    rollback_report_body,
    rollback_target,
)
from upgrader.services.workspace import Workspace

#: The gate's inputs for one generation, by the name callers (and tests) imported it under.
_inputs = gate_inputs

#: Why a forced move is refused without a reason (the CLI words the same rule with its flags).
FORCE_NEEDS_REASON = "a forced move needs a reason: the override is recorded in the alias history"


@dataclass(frozen=True)
class Verification:
    """A gate run and the report stored for it."""

    generation: Generation  # the generation as it is after the verdict (status updated)
    report: GateReport  # the stored report
    verdict: GateVerdict  # the full verdict (numbers, checks, reasons)


@dataclass(frozen=True)
class Promotion:
    """A moved alias and the gate report that allowed it."""

    move: AliasMove
    report: GateReport | None  # None only for a forced move without any report
    reused_report: bool  # an earlier passing report for the same artifact and situation was used
    forced: bool
    ground: RollbackGround | None = None  # rollbacks: the standing the target was judged on


def default_actor() -> str:
    """Who is acting: the login name, for the alias history."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _store(
    ws: Workspace, gen: Generation, verdict: GateVerdict, *, set_status: bool, body: dict[str, Any] | None = None
) -> Verification:
    reg = ws.registry
    reg.record_evaluations((q, g, m.as_dict()) for (q, g), m in verdict.evaluations.items())
    # The calibration goes with the report: serving applies it once a move cites this report.
    calibration = verdict.calibration.to_dict() if verdict.calibration is not None else None
    stored = {**(body if body is not None else verdict.to_dict()), "upgrader_version": VERSION}
    report = reg.add_gate_report(gen.id, gen.onnx_sha256, verdict.passed, verdict.kind, stored, calibration=calibration)
    if set_status and gen.status not in ("production", "retired"):
        gen = reg.set_status(gen.id, "verified" if verdict.passed else "rejected")
    return Verification(reg.get_generation(gen.id), report, verdict)


def verify(ws: Workspace, ref: str | int, config: GateConfig | None = None) -> Verification:
    """Run the promotion gate for a generation, store the report, mark it verified or rejected.

    Probe embeddings that are missing or were computed from another artifact are embedded again first.

    Raises:
        InvalidRequest: the generation is production. ArtifactError: its file is missing or is not the
            one registered (an interrupted re-export: export it again), so there is nothing to judge.
    """
    gen = ws.registry.get_generation(ref)
    if gen.id == ws.registry.get_alias():
        raise InvalidRequest(f"generation {gen.name} is production already; there is nothing to verify it against")
    check_artifact(ws, gen)
    verdict = evaluate_candidate(gate_inputs(ws, gen, []), config)
    return _store(ws, gen, verdict, set_status=True)


def _reusable(ws: Workspace, gen: Generation, kind: str, config: GateConfig) -> GateReport | None:
    """The newest passing report that still describes the present: same artifact, same production,
    same live generations, same margin, metric, improvement, tolerance and no-regression settings, a
    stored calibration, and a gallery that composes the same probe gallery after the move (so its
    item-level numbers are the ones the gate would compute now); else None (the gate must run again)."""
    reg = ws.registry
    live = sorted(reg.live_generations())
    production = reg.get_alias()
    actual = current_sha(ws, gen)
    now: tuple[dict[str, dict[str, int]], list[int]] | None = None  # computed once a report needs it
    for report in reg.gate_reports(gen.id):
        body = report.report
        if not (
            report.passed
            and report.kind == kind
            and report.artifact_sha256 == gen.onnx_sha256 == actual
            and body.get("production") == production
            and sorted(body.get("live", [])) == live
            and body.get("margin") == config.margin
            and body.get("primary_metric") == config.primary_metric
            and body.get("require_improvement", True) == config.require_improvement
            and body.get("mixed_tolerance") == config.mixed_tolerance
            and body.get("allow_regression", False) == config.allow_regression
            and report.calibration is not None
        ):
            continue
        now = _composition_now(ws, gen, live) if now is None else now
        served = body.get("served")
        if not isinstance(served, dict) or (served.get("composition"), served.get("new_classes")) != now:
            continue  # items added or removed since recompose the gallery: its numbers would differ
        return report
    return None


def _composition_now(
    ws: Workspace, gen: Generation, live: Sequence[int]
) -> tuple[dict[str, dict[str, int]], list[int]]:
    """The probe gallery's composition after promoting ``gen`` today, as a report stores it."""
    composition, new = composition_after(gen.id, probe_labels(ws)[1], holders(ws, live),
                                         class_sets(ws, [gen.id]).get(gen.id))
    return composition_dict(composition), list(new)


def promote(
    ws: Workspace,
    ref: str | int,
    *,
    actor: str | None = None,
    reason: str = "",
    force: bool = False,
    config: GateConfig | None = None,
) -> Promotion:
    """Move ``production`` to a generation if the gate passes (or is overridden with a reason).

    Runs the gate unless a passing report for this exact artifact and situation exists already.

    Raises:
        GateRefused: the gate failed and ``force`` was not given (nothing but the report is written).
        InvalidRequest: the generation is production already, or ``force`` without a reason.
        ArtifactError: the artifact file is missing or not the one registered (``force`` or not).
    """
    config = config or GateConfig()
    reg = ws.registry
    gen = reg.get_generation(ref)
    if gen.id == reg.get_alias():
        raise InvalidRequest(f"generation {gen.name} is production already")
    if force and not reason.strip():
        raise InvalidRequest(FORCE_NEEDS_REASON)
    check_artifact(ws, gen)
    report = _reusable(ws, gen, "promote", config)
    reused = report is not None
    if report is None:
        run = verify(ws, gen.id, config)
        report = run.report
        if not run.verdict.passed and not force:
            raise GateRefused(
                f"promotion of {gen.name} refused by the compatibility gate (report {report.id}): "
                f"{run.verdict.explain()}",
                report_id=report.id,
            )
    move = reg.move_alias(
        gen.id,
        actor=actor or default_actor(),
        reason=reason or ("gate passed" if report.passed else ""),
        gate_report_id=report.id,
        forced=force and not report.passed,
        kind="promote",
    )
    return Promotion(move=move, report=report, reused_report=reused, forced=move.forced)


def rollback(
    ws: Workspace,
    ref: str | int | None = None,
    *,
    actor: str | None = None,
    reason: str = "",
    force: bool = False,
    config: GateConfig | None = None,
) -> Promotion:
    """Move ``production`` back to an older generation, if it has a standing and reads the newer items.

    :func:`judge_rollback` decides; its report (kind ``rollback``, its ground as the first check) is
    stored either way. A refused target needs ``force`` with a reason, and the move is then recorded
    as forced.

    Raises:
        GateRefused: no standing, or it cannot read the newer gallery items (and ``force`` was not given).
        NoProduction: nothing to roll back. InvalidRequest: the target is production, or ``force``
            without a reason. ArtifactError: the target's file is missing or not the one registered
            (``force`` or not).
    """
    reg = ws.registry
    production = reg.get_alias()
    if production is None:
        raise NoProduction("no production generation; there is nothing to roll back")
    target = reg.get_generation(ref) if ref is not None else rollback_target(ws)
    if target.id == production:
        raise InvalidRequest(f"generation {target.name} is production already")
    if force and not reason.strip():
        raise InvalidRequest(FORCE_NEEDS_REASON)
    check_artifact(ws, target)
    verdict, ground = judge_rollback(ws, target, config)
    body = rollback_report_body(verdict, ground, target.id)
    stored = _store(ws, target, verdict, set_status=False, body=body)
    if not verdict.passed and not force:
        raise GateRefused(
            f"rollback to {target.name} refused (report {stored.report.id}): {ground.line}. {verdict.explain()}",
            report_id=stored.report.id,
        )
    move = reg.move_alias(
        target.id,
        actor=actor or default_actor(),
        reason=reason or f"rollback: {ground.line}",
        gate_report_id=stored.report.id,
        forced=force and not verdict.passed,
        kind="rollback",
    )
    return Promotion(move=move, report=stored.report, reused_report=False, forced=move.forced, ground=ground)


__all__ = [
    "FORCE_NEEDS_REASON", "GroundKind", "Promotion", "RollbackGround", "Verification", "default_actor",
    "held_production_move", "judge_rollback", "newer_gallery_generations", "promote", "rollback",
    "rollback_report_body", "rollback_target", "verify",
]
