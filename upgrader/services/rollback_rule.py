"""The rollback rule: which generation a rollback goes to, the ground it stands on, and its verdict
(docs/design.md §3, "Rollback"); nothing is stored here.

A rollback target must have held production before through an unforced move, with the artifact it
has now, or pass the gate's compatibility checks now (without the improvement check: a rollback may
be worse); on top of either, it must read the gallery items written after it (the upper triangle).
:mod:`upgrader.services.promotion` stores the report and moves the alias; the dashboard shows the
same judgement before the user confirms. No torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from registry import AliasMove, Generation

from upgrader.compat.gate import GateConfig, evaluate_candidate, evaluate_rollback
from upgrader.compat.verdict import GateVerdict
from upgrader.core.errors import InvalidRequest, NoProduction
from upgrader.services.gate_inputs import gate_inputs
from upgrader.services.workspace import Workspace

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
    inputs = gate_inputs(ws, target, newer)
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


__all__ = [
    "GroundKind", "RollbackGround", "held_production_move", "judge_rollback", "newer_gallery_generations",
    "rollback_report_body", "rollback_target",
]
