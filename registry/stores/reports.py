"""Evaluations (query generation x gallery generation metrics) and gate reports.

Both are bound to artifacts: an evaluation names the two artifact sha256s it was computed with and is
read only while both generations still have them; a gate report names the one artifact it judged,
and may carry the score calibration serving applies while it backs an alias
(:meth:`registry.stores.aliases.AliasStore.serving_calibration`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.orm import aliased

from registry import validation
from registry.db import UnitOfWork, json_value
from registry.entities import Evaluation, GateReport
from registry.errors import ConstraintViolation, UnknownGateReport, UnknownGeneration
from registry.mappers import to_evaluation, to_gate_report
from registry.schema import EvaluationRow, GateReportRow, GenerationRow, utcnow
from registry.stores.generations import GenerationStore

#: ``upsert(query_gen, gallery_gen, (query_sha256, gallery_sha256), metrics, now)``: writes one pair.
Upsert = Callable[[int, int, tuple[str, str], dict[str, Any], datetime], None]


class ReportStore:
    """Reads and writes evaluations and gate reports."""

    def __init__(self, uow: UnitOfWork, generations: GenerationStore) -> None:
        """Bind the store to the unit of work and generation lookup."""
        self._uow = uow
        self._generations = generations

    def record_evaluations(self, items: Iterable[tuple[int, int, dict[str, float]]]) -> list[Evaluation]:
        """Store retrieval metrics per (query generation, gallery generation); a pair is replaced.

        Each row is stamped with both generations' current artifact sha256, so it stops counting
        once either generation gets a new artifact.

        Args:
            items: ``(query_gen, gallery_gen, metrics)`` triples.

        Returns:
            The stored evaluations, in input order.

        Raises:
            UnknownGeneration: a generation id that does not exist.
        """
        triples = [(int(q), int(g), json_value(dict(m), "evaluation metrics")) for q, g, m in items]
        out: list[Evaluation] = []
        with self._uow.session(write=True) as s:
            gens = {q for q, _, _ in triples} | {g for _, g, _ in triples}
            shas: dict[int, str] = (
                dict(tuple(r) for r in s.execute(select(GenerationRow.id, GenerationRow.onnx_sha256).where(GenerationRow.id.in_(gens))))
                if gens
                else {}
            )
            if gens - set(shas):
                raise UnknownGeneration(
                    f"no generation with id {validation.preview(sorted(gens - set(shas)))}; register it first"
                )
            upsert = _upsert_factory(s.connection())
            now = utcnow()
            for q, g, metrics in triples:
                upsert(q, g, (shas[q], shas[g]), metrics, now)
            s.flush()
            for q, g, _ in triples:
                row = s.execute(
                    select(EvaluationRow)
                    .where(EvaluationRow.query_gen == q, EvaluationRow.gallery_gen == g)
                    .execution_options(populate_existing=True)
                ).scalar_one()
                out.append(to_evaluation(row))
        return out

    def evaluations(self, gen_ids: Iterable[int] | None = None) -> list[Evaluation]:
        """Stored evaluations of both generations' current artifacts, ordered by (query_gen, gallery_gen).

        Rows computed with an earlier artifact of either generation are stale and left out.

        Args:
            gen_ids: keep only pairs whose query *and* gallery generation are among these.
        """
        q_gen, g_gen = aliased(GenerationRow), aliased(GenerationRow)
        stmt = (
            select(EvaluationRow)
            .join(q_gen, q_gen.id == EvaluationRow.query_gen)
            .join(g_gen, g_gen.id == EvaluationRow.gallery_gen)
            .where(EvaluationRow.query_sha256 == q_gen.onnx_sha256, EvaluationRow.gallery_sha256 == g_gen.onnx_sha256)
            .order_by(EvaluationRow.query_gen, EvaluationRow.gallery_gen)
        )
        if gen_ids is not None:
            ids = [int(g) for g in gen_ids]
            stmt = stmt.where(EvaluationRow.query_gen.in_(ids), EvaluationRow.gallery_gen.in_(ids))
        with self._uow.session() as s:
            return [to_evaluation(r) for r in s.scalars(stmt)]

    def add_gate_report(
        self,
        gen_id: int | str,
        artifact_sha256: str,
        passed: bool,
        kind: str,
        report: dict[str, Any],
        *,
        calibration: dict[str, Any] | None = None,
    ) -> GateReport:
        """Store a gate verdict about one exact artifact of a generation, with its score calibration.

        Args:
            gen_id: the generation judged.
            artifact_sha256: sha256 of the artifact the gate evaluated.
            passed: the verdict.
            kind: ``"promote"`` or ``"rollback"``.
            report: the full report (JSON-able; numpy values are converted, NaN/inf stored as null).
            calibration: the score transform the gate fitted and measured with, which serving
                applies while this report backs the alias; a JSON-able dict (converted like
                ``report``), or ``None`` for none.

        Raises:
            UnknownGeneration: no such generation.
            ConstraintViolation: an unknown kind, a report that is not JSON-able, or a calibration
                that is not a JSON-able dict.
        """
        validation.gate_kind(kind)
        if calibration is not None and not isinstance(calibration, Mapping):
            raise ConstraintViolation(
                f"a score calibration is a dict (a JSON object), got {type(calibration).__name__}; "
                f"pass a dict, or None for no calibration"
            )
        stored = None if calibration is None else json_value(dict(calibration), "the score calibration")
        with self._uow.session(write=True) as s:
            gen = self._generations.row(s, gen_id)
            row = GateReportRow(
                generation_id=gen.id,
                artifact_sha256=artifact_sha256,
                passed=bool(passed),
                kind=kind,
                report=json_value(dict(report), "the gate report"),
                calibration=stored,
            )
            s.add(row)
            s.flush()
            s.refresh(row)
            return to_gate_report(row)

    def get_gate_report(self, report_id: int) -> GateReport:
        """A gate report by id.

        Raises:
            UnknownGateReport: no such report.
        """
        with self._uow.session() as s:
            row = s.get(GateReportRow, int(report_id))
            if row is None:
                raise UnknownGateReport(f"no gate report with id {report_id}; run the gate to make one")
            return to_gate_report(row)

    def gate_reports(self, gen_id: int | str | None = None) -> list[GateReport]:
        """Gate reports, newest first, optionally of one generation."""
        with self._uow.session() as s:
            stmt = select(GateReportRow).order_by(GateReportRow.id.desc())
            if gen_id is not None:
                stmt = stmt.where(GateReportRow.generation_id == self._generations.row(s, gen_id).id)
            return [to_gate_report(r) for r in s.scalars(stmt)]


def _upsert_factory(conn: Connection) -> Upsert:
    """An evaluation upsert for the connection's dialect: native ON CONFLICT where there is one."""
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert

        def upsert(q: int, g: int, shas: tuple[str, str], metrics: dict[str, Any], now: datetime) -> None:
            stmt = dialect_insert(EvaluationRow.__table__).values(
                query_gen=q, gallery_gen=g, query_sha256=shas[0], gallery_sha256=shas[1], metrics=metrics, created_at=now
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["query_gen", "gallery_gen"],
                set_={col: stmt.excluded[col] for col in ("query_sha256", "gallery_sha256", "metrics", "created_at")},
            )
            conn.execute(stmt)

        return upsert

    table = EvaluationRow.__table__

    def upsert_generic(q: int, g: int, shas: tuple[str, str], metrics: dict[str, Any], now: datetime) -> None:
        values = {"query_sha256": shas[0], "gallery_sha256": shas[1], "metrics": metrics, "created_at": now}
        res = conn.execute(update(table).where(table.c.query_gen == q, table.c.gallery_gen == g).values(**values))
        if not res.rowcount:
            conn.execute(insert(table).values(query_gen=q, gallery_gen=g, **values))

    return upsert_generic
