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
  The stored report says which ground it stood on (:class:`RollbackGround`).
"""

from __future__ import annotations

import getpass
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from registry import AliasMove, GateReport, Generation

from upgrader.compat.gate import GateConfig, GateInputs, evaluate_candidate, evaluate_rollback
from upgrader.compat.mixed import gallery_holders
from upgrader.compat.served import composition_after, composition_dict
from upgrader.compat.verdict import GateVerdict
from upgrader.core.errors import GateRefused, InvalidRequest, NoProduction
from upgrader.core.files import sha256_file
from upgrader.core.version import VERSION
from upgrader.services.matrix import class_sets, load_probe, probe_labels
from upgrader.services.registration import check_artifact
from upgrader.services.workspace import Workspace

#: Why a forced move is refused without a reason (the CLI words the same rule with its flags).
FORCE_NEEDS_REASON = "a forced move needs a reason: the override is recorded in the alias history"


@dataclass(frozen=True)
class Verification:
    """A gate run and the report stored for it."""

    generation: Generation  # the generation as it is after the verdict (status updated)
    report: GateReport  # the stored report
    verdict: GateVerdict  # the full verdict (numbers, checks, reasons)


GroundKind = Literal["held-production", "compatible-now", "none"]


@dataclass(frozen=True)
class RollbackGround:
    """Why a rollback target may serve again, as its rollback report records it.

    ``held-production``: it held production through an unforced move with the artifact it has now
    (``move``); ``compatible-now``: it passes the gate's compatibility checks now; ``none``: neither,
    so only a forced move with a reason can make it production.
    """

    kind: GroundKind
    line: str  # one sentence, for the report, the refusal and the CLI
    move: AliasMove | None = None  # the unforced move it served through (held-production only)

    @property
    def passed(self) -> bool:
        """Whether the target has a standing of its own (the upper-triangle check still applies)."""
        return self.kind != "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, stored as the report's ``ground``."""
        return {
            "kind": self.kind,
            "passed": self.passed,
            "line": self.line,
            "move_id": self.move.id if self.move else None,
            "at": self.move.at.isoformat() if self.move else None,
        }

    def as_check(self, target: int) -> dict[str, Any]:
        """The ground as the first entry of the report's checks (so a rollback report never passes
        with zero checks); shaped like a gate check, with ``line`` saying what it checked."""
        return {
            "kind": "ground", "query_gen": target, "gallery_gen": target, "value": None, "threshold": None,
            "passed": self.passed, "reference_gen": target, "comparison": "", "ground": self.kind, "line": self.line,
        }


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


def _current_sha(ws: Workspace, gen: Generation) -> str | None:
    path = ws.resolve(gen.onnx_path)
    return sha256_file(path) if path.is_file() else None


def _inputs(ws: Workspace, gen: Generation, gens: Iterable[int]) -> GateInputs:
    reg = ws.registry
    live = reg.live_generations()
    production = reg.get_alias()
    needed = [gen.id, *live, *([production] if production is not None else []), *gens]
    queries, galleries = load_probe(ws, needed)
    q_labels, g_labels = probe_labels(ws)
    return GateInputs(
        query_labels=q_labels,
        gallery_labels=g_labels,
        query_embeddings=queries,
        gallery_embeddings=galleries,
        candidate=gen.id,
        live=live,
        production=production,
        registered_sha256=gen.onnx_sha256,
        artifact_sha256=_current_sha(ws, gen),
        classes=class_sets(ws, [gen.id, *needed]),
        gallery_holders=_holders(ws, live),
    )


def _holders(ws: Workspace, live: Sequence[int]) -> dict[int, dict[int, int]]:
    """Class vertex -> {live generation: its gallery items of that class} (one GROUP BY)."""
    reg = ws.registry
    return gallery_holders(reg.gallery_label_counts(), reg.interface().label_map, live)


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
    verdict = evaluate_candidate(_inputs(ws, gen, []), config)
    return _store(ws, gen, verdict, set_status=True)


def _reusable(ws: Workspace, gen: Generation, kind: str, config: GateConfig) -> GateReport | None:
    """The newest passing report that still describes the present: same artifact, same production,
    same live generations, same margin, metric, improvement, tolerance and no-regression settings, a
    stored calibration, and a gallery that composes the same probe gallery after the move (so its
    item-level numbers are the ones the gate would compute now); else None (the gate must run again)."""
    reg = ws.registry
    live = sorted(reg.live_generations())
    production = reg.get_alias()
    actual = _current_sha(ws, gen)
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
    composition, new = composition_after(gen.id, probe_labels(ws)[1], _holders(ws, live),
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


def newer_gallery_generations(live: Iterable[int], target: int) -> list[int]:
    """The live gallery generations a rollback to ``target`` must still read: those written after it.

    Generation ids grow with registration, so "written after" is a larger id; these are the gallery
    generations the rollback check scores the target's queries on (the upper triangle).
    """
    return [int(j) for j in live if int(j) > int(target)]


def rollback_target(ws: Workspace) -> Generation:
    """The generation production held before its current holder (the target of a rollback that names none)."""
    reg = ws.registry
    production = reg.get_alias()
    if production is None:
        raise NoProduction("no production generation; there is nothing to roll back")
    for move in reversed(reg.alias_history()):
        if move.to_gen == production and move.from_gen is not None:
            return reg.get_generation(move.from_gen)
    raise InvalidRequest("production has no earlier holder; name the generation to roll back to")


def held_production_move(ws: Workspace, target: Generation) -> AliasMove | None:
    """The newest unforced move that made ``target`` production with the artifact it has now, or None.

    A move whose passing report judged another artifact (the generation was re-exported since) does
    not count: the model that served is not the one that would serve again.
    """
    reg = ws.registry
    for move in reversed(reg.alias_history()):
        if move.to_gen != target.id or move.forced or move.gate_report_id is None:
            continue
        report = reg.get_gate_report(move.gate_report_id)
        if report.passed and report.artifact_sha256 == target.onnx_sha256:
            return move
    return None


def judge_rollback(ws: Workspace, target: Generation, config: GateConfig | None = None) -> tuple[GateVerdict, RollbackGround]:
    """The rollback verdict for ``target`` and the ground it stands on; nothing is stored.

    The upper-triangle check (the target reads every live gallery generation written after it) always
    applies. A target that held production through an unforced move (:func:`held_production_move`)
    needs nothing more; any other must also pass the gate's compatibility checks against every live
    generation now, as a candidate would, without the improvement check.
    """
    config = config or GateConfig()
    newer = newer_gallery_generations(ws.registry.live_generations(), target.id)
    inputs = _inputs(ws, target, newer)
    upper = evaluate_rollback(inputs, target.id, newer, config)
    held = held_production_move(ws, target)
    if held is not None:
        ground = RollbackGround(
            "held-production",
            f"{target.name} held production from {held.at:%Y-%m-%d %H:%M} via move {held.id} (not forced), "
            "with the artifact it has now",
            held,
        )
        return replace(upper, notes=(ground.line, *upper.notes)), ground
    # A rollback may be worse: neither the improvement nor the no-regression rule applies.
    compat = evaluate_candidate(inputs, replace(config, require_improvement=False, allow_regression=True))
    never = f"{target.name} never held production through an unforced move"
    ground = (
        RollbackGround("compatible-now", f"{never}; it passes the gate's compatibility checks now")
        if compat.passed
        else RollbackGround("none", f"{never} and fails the gate's compatibility checks now")
    )
    merged = replace(
        upper,
        passed=upper.passed and compat.passed,
        checks=(*compat.checks, *upper.checks),
        evaluations={**compat.evaluations, **upper.evaluations},
        formal={**compat.formal, **upper.formal},
        reasons=tuple(dict.fromkeys((*compat.reasons, *upper.reasons))),
        notes=(ground.line, *compat.notes, *upper.notes),
        mixed=compat.mixed,
        mixed_tolerance=compat.mixed_tolerance,
        served=compat.served,
    )
    return merged, ground


def rollback_report_body(verdict: GateVerdict, ground: RollbackGround, target: int) -> dict[str, Any]:
    """The stored body of a rollback report: the verdict, its ground, and the ground as the first check."""
    body = verdict.to_dict()
    body["ground"] = ground.to_dict()
    body["checks"] = [ground.as_check(target), *body["checks"]]
    return body


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
