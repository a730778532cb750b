"""Aliases (``production`` above all) and their append-only history of moves.

Only a passing gate report of the move's kind about the target's current artifact moves an alias,
unless the move is forced with a reason. Database triggers (migration 0004) refuse updates and
deletes of the history and an alias row that does not follow it; readers check the two agree
(:mod:`registry.stores.agreement`).
"""

from __future__ import annotations

import zlib
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from registry import validation
from registry.db import UnitOfWork
from registry.entities import PRODUCTION, AliasMove
from registry.errors import ConstraintViolation, GateNotPassed, InvalidStatus
from registry.mappers import to_alias_move
from registry.schema import (
    AliasHistoryRow,
    AliasRow,
    GateReportRow,
    GenerationRow,
    utcnow,
)
from registry.stores.agreement import alias_target
from registry.stores.generations import GenerationStore


class AliasStore:
    """Reads aliases and moves them, recording every move."""

    def __init__(self, uow: UnitOfWork, generations: GenerationStore) -> None:
        """Bind the store to the unit of work and generation lookup."""
        self._uow = uow
        self._generations = generations

    def get_alias(self, alias: str = PRODUCTION) -> int | None:
        """The generation id an alias points at, or ``None`` if it was never set.

        Raises:
            AliasTampered: the alias disagrees with the last move of its history.
        """
        with self._uow.session() as s:
            return alias_target(s, alias)

    def check_alias(self, alias: str = PRODUCTION) -> None:
        """Check an alias agrees with its history (a never-set alias does).

        Raises:
            AliasTampered: they disagree.
        """
        self.get_alias(alias)

    def move_alias(
        self,
        to_gen: int | str,
        *,
        actor: str,
        reason: str,
        gate_report_id: int | None = None,
        forced: bool = False,
        alias: str = PRODUCTION,
        kind: str = "promote",
    ) -> AliasMove:
        """Point an alias at a generation, recording the move in the append-only history.

        Unless forced, ``gate_report_id`` must name a passed report of kind ``kind`` about ``to_gen``
        whose ``artifact_sha256`` equals the generation's current ``onnx_sha256``, and the target must
        not be retired. For the ``production`` alias the target becomes ``production`` and the
        previous holder ``verified``, in the same transaction. Gallery rows are never touched. The
        history row is written before the alias row changes (the database refuses an alias that
        runs ahead of its history).

        Args:
            to_gen: the generation (id, name or alias).
            actor: who moves it (user name, service).
            reason: why; required (non-empty) when forced.
            gate_report_id: the passing gate report that allows the move.
            forced: skip the gate check (an explicit, recorded override).
            alias: the alias to move.
            kind: the report kind the move needs: ``"promote"`` or ``"rollback"``.

        Returns:
            The history entry.

        Raises:
            GateNotPassed: no report, a failing report, a report of another kind, about another
                generation or another artifact, or a forced move without a reason.
            InvalidStatus: an unforced move to a retired generation.
            AliasTampered: the alias disagrees with its history (nothing moves until restored).
            UnknownGeneration: no such generation.
            ConstraintViolation: an empty alias name or an unknown kind.
        """
        validation.gate_kind(kind)
        if forced and not (reason or "").strip():
            raise GateNotPassed("a forced alias move needs a reason; say why the gate is overridden")
        if not alias or not alias.strip():
            raise ConstraintViolation("the alias name must be non-empty")
        with self._uow.session(write=True) as s:
            _serialise_movers(s, alias)
            from_gen = alias_target(s, alias, lock=True)
            gen = self._generations.row(s, to_gen, lock=True)
            report = _named_report(s, gen, gate_report_id)
            if not forced:
                if gen.status == "retired":
                    raise InvalidStatus(
                        f"generation {gen.name!r} is retired and cannot take {alias!r}; force the move "
                        f"with a reason to bring it back"
                    )
                _check_report(alias, gen, report, kind)
            now = utcnow()
            move = AliasHistoryRow(
                alias=alias,
                from_gen=from_gen,
                to_gen=gen.id,
                at=now,
                actor=actor,
                gate_report_id=None if report is None else report.id,
                reason=reason or "",
                forced=bool(forced),
            )
            _point(s, alias, gen, move, new_alias=from_gen is None)
            return to_alias_move(move)

    def serving_calibration(self, alias: str = PRODUCTION) -> dict[str, Any] | None:
        """The score calibration serving applies for an alias: the one stored with the gate report its
        newest move cites, while that report still describes what the alias serves.

        ``None`` when the alias was never set, its newest move cites no report (a forced move
        without one), the report stored no calibration, or the report is about another generation
        or another artifact than the alias's generation has now (a calibration fitted for other
        embeddings must not be applied to these). One read transaction on one snapshot, so a move
        committed meanwhile is seen whole or not at all.

        Raises:
            AliasTampered: the alias disagrees with its history.
        """
        with self._uow.session(snapshot=True) as s:
            target = alias_target(s, alias)
            if target is None:
                return None
            report_id = s.execute(
                select(AliasHistoryRow.gate_report_id)
                .where(AliasHistoryRow.alias == alias)
                .order_by(AliasHistoryRow.id.desc())
                .limit(1)
            ).scalar_one()
            if report_id is None:
                return None
            found = s.execute(
                select(GateReportRow.generation_id, GateReportRow.artifact_sha256, GateReportRow.calibration)
                .where(GateReportRow.id == report_id)
            ).one_or_none()
            sha = s.execute(select(GenerationRow.onnx_sha256).where(GenerationRow.id == target)).scalar_one()
            if found is None or found.calibration is None:
                return None
            if found.generation_id != target or found.artifact_sha256 != sha:
                return None
            return dict(found.calibration)

    def alias_history(self, alias: str = PRODUCTION) -> list[AliasMove]:
        """Every move of an alias, oldest first."""
        with self._uow.session() as s:
            rows = s.scalars(select(AliasHistoryRow).where(AliasHistoryRow.alias == alias).order_by(AliasHistoryRow.id))
            return [to_alias_move(r) for r in rows]


def _serialise_movers(s: Session, alias: str) -> None:
    """On PostgreSQL, one mover of an alias at a time (SQLite's BEGIN IMMEDIATE already serialises)."""
    conn = s.connection()
    if conn.dialect.name == "postgresql":
        # The alias row may not exist yet, so a row lock is not enough: take an advisory lock.
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(f"alias:{alias}".encode())})


def _named_report(s: Session, gen: GenerationRow, gate_report_id: int | None) -> GateReportRow | None:
    """The gate report a move names, if it names one."""
    if gate_report_id is None:
        return None
    report = s.get(GateReportRow, int(gate_report_id))
    if report is None:
        raise GateNotPassed(f"gate report {gate_report_id} does not exist; run the gate on {gen.name!r} first")
    return report


def _check_report(alias: str, gen: GenerationRow, report: GateReportRow | None, kind: str) -> None:
    """Refuse a gated move unless the report passed, is of ``kind`` and judged exactly this artifact."""
    if report is None:
        raise GateNotPassed(
            f"moving {alias!r} to {gen.name!r} needs a passing {kind} gate report; run the gate on it "
            f"and pass the report id (or force the move with a reason)"
        )
    if report.generation_id != gen.id:
        raise GateNotPassed(
            f"gate report {report.id} is about generation {report.generation_id}, not "
            f"{gen.name!r} ({gen.id}); run the gate on {gen.name!r}"
        )
    if report.kind != kind:
        raise GateNotPassed(
            f"gate report {report.id} is a {report.kind} report but this move needs a {kind} report; "
            f"run the {kind} check on {gen.name!r}"
        )
    if not report.passed:
        raise GateNotPassed(
            f"gate report {report.id} failed: {gen.name!r} did not pass the gate; fix the "
            f"model or force the move with a reason"
        )
    if report.artifact_sha256 != gen.onnx_sha256:
        raise GateNotPassed(
            f"gate report {report.id} judged artifact {report.artifact_sha256[:12]}… but "
            f"{gen.name!r} now has artifact {gen.onnx_sha256[:12]}…; re-run the gate on it"
        )


def _point(s: Session, alias: str, gen: GenerationRow, move: AliasHistoryRow, *, new_alias: bool) -> None:
    """Record ``move`` and point the alias row at ``gen``, flipping statuses for production.

    An existing alias gets its history row first, then the row update (the trigger checks the row
    against the newest history row); a new alias needs its row first (the history references it).
    """
    if new_alias:
        s.add(AliasRow(name=alias, generation_id=gen.id, updated_at=move.at))
        s.flush()
        s.add(move)
        s.flush()
    else:
        s.add(move)
        s.flush()
        s.execute(
            update(AliasRow).where(AliasRow.name == alias).values(generation_id=gen.id, updated_at=move.at)
        )
    if alias == PRODUCTION:
        # At most one generation is "production": whoever held it steps down to "verified".
        s.execute(
            update(GenerationRow)
            .where(GenerationRow.status == "production", GenerationRow.id != gen.id)
            .values(status="verified")
        )
        gen.status = "production"
    s.flush()
