"""Aliases (``production`` above all) and their append-only history of moves.

Only a passing gate report about the target's current artifact moves an alias, unless the move is
forced with a reason; the history table refuses updates and deletes itself (database triggers).
"""

from __future__ import annotations

import zlib
from datetime import datetime

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from registry.db import UnitOfWork
from registry.entities import PRODUCTION, AliasMove
from registry.errors import ConstraintViolation, GateNotPassed
from registry.mappers import to_alias_move
from registry.schema import (
    AliasHistoryRow,
    AliasRow,
    GateReportRow,
    GenerationRow,
    utcnow,
)
from registry.stores.generations import GenerationStore


class AliasStore:
    """Reads aliases and moves them, recording every move."""

    def __init__(self, uow: UnitOfWork, generations: GenerationStore) -> None:
        """Bind the store to the unit of work and generation lookup."""
        self._uow = uow
        self._generations = generations

    def get_alias(self, alias: str = PRODUCTION) -> int | None:
        """The generation id an alias points at, or ``None`` if it was never set."""
        with self._uow.session() as s:
            return s.execute(select(AliasRow.generation_id).where(AliasRow.name == alias)).scalar_one_or_none()

    def move_alias(
        self,
        to_gen: int | str,
        *,
        actor: str,
        reason: str,
        gate_report_id: int | None = None,
        forced: bool = False,
        alias: str = PRODUCTION,
    ) -> AliasMove:
        """Point an alias at a generation, recording the move in the append-only history.

        Unless forced, ``gate_report_id`` must name a passed report (kind promote or rollback) about
        ``to_gen`` whose ``artifact_sha256`` equals the generation's current ``onnx_sha256``. For the
        ``production`` alias the target becomes ``production`` and the previous holder ``verified``,
        in the same transaction. Gallery rows are never touched.

        Args:
            to_gen: the generation (id, name or alias).
            actor: who moves it (user name, service).
            reason: why; required (non-empty) when forced.
            gate_report_id: the passing gate report that allows the move.
            forced: skip the gate check (an explicit, recorded override).
            alias: the alias to move.

        Returns:
            The history entry.

        Raises:
            GateNotPassed: no report, a failing report, a report about another generation or another
                artifact, or a forced move without a reason.
            UnknownGeneration: no such generation.
            ConstraintViolation: an empty alias name.
        """
        if forced and not (reason or "").strip():
            raise GateNotPassed("a forced alias move needs a reason; say why the gate is overridden")
        if not alias or not alias.strip():
            raise ConstraintViolation("the alias name must be non-empty")
        with self._uow.session(write=True) as s:
            _serialise_movers(s, alias)
            gen = self._generations.row(s, to_gen, lock=True)
            report = _named_report(s, gen, gate_report_id)
            if not forced:
                _check_report(alias, gen, report)
            from_gen, now = _point(s, alias, gen)
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
            s.add(move)
            s.flush()
            return to_alias_move(move)

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


def _check_report(alias: str, gen: GenerationRow, report: GateReportRow | None) -> None:
    """Refuse a gated move unless the report passed and judged exactly this generation's artifact."""
    if report is None:
        raise GateNotPassed(
            f"moving {alias!r} to {gen.name!r} needs a passing gate report; run the gate on it "
            f"and pass the report id (or force the move with a reason)"
        )
    if report.generation_id != gen.id:
        raise GateNotPassed(
            f"gate report {report.id} is about generation {report.generation_id}, not "
            f"{gen.name!r} ({gen.id}); run the gate on {gen.name!r}"
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


def _point(s: Session, alias: str, gen: GenerationRow) -> tuple[int | None, datetime]:
    """Point the alias row at ``gen``, flipping statuses for production; returns (from_gen, when)."""
    current = s.execute(select(AliasRow).where(AliasRow.name == alias).with_for_update()).scalar_one_or_none()
    now = utcnow()
    from_gen = current.generation_id if current is not None else None
    if current is None:
        s.add(AliasRow(name=alias, generation_id=gen.id, updated_at=now))
    else:
        current.generation_id = gen.id
        current.updated_at = now
    if alias == PRODUCTION:
        # At most one generation is "production": whoever held it steps down to "verified".
        s.execute(
            update(GenerationRow)
            .where(GenerationRow.status == "production", GenerationRow.id != gen.id)
            .values(status="verified")
        )
        gen.status = "production"
    s.flush()
    return from_gen, now
