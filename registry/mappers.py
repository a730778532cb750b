"""ORM rows -> the frozen entities callers get; the one place that knows both shapes.

JSON columns are copied into fresh dicts so an entity never shares state with a session's row.
"""

from __future__ import annotations

from collections.abc import Iterable

from registry.entities import AliasMove, Evaluation, GateReport, Generation, Interface
from registry.schema import (
    AliasHistoryRow,
    EvaluationRow,
    GateReportRow,
    GenerationRow,
    InterfaceRow,
)


def to_interface(row: InterfaceRow, classes: Iterable[tuple[str, int]]) -> Interface:
    """The interface from its row and the label map's ``(name, vertex)`` pairs."""
    return Interface(
        num_classes=row.num_classes,
        embedding_dim=row.embedding_dim,
        label_map={name: vertex for name, vertex in classes},
        created_at=row.created_at,
        embedding_dtype=row.embedding_dtype,
    )


def to_generation(row: GenerationRow) -> Generation:
    """A generation from its row."""
    return Generation(
        id=row.id,
        name=row.name,
        kind=row.kind,
        method=row.method,
        architecture=row.architecture,
        parent_id=row.parent_id,
        num_classes=row.num_classes,
        train_config=dict(row.train_config or {}),
        data_fingerprint=row.data_fingerprint,
        onnx_path=row.onnx_path,
        onnx_sha256=row.onnx_sha256,
        onnx_metadata=dict(row.onnx_metadata or {}),
        checkpoint_path=row.checkpoint_path,
        status=row.status,
        created_at=row.created_at,
        metrics=dict(row.metrics or {}),
        checkpoint_sha256=row.checkpoint_sha256,
    )


def to_evaluation(row: EvaluationRow) -> Evaluation:
    """An evaluation (one query generation x gallery generation pair) from its row."""
    return Evaluation(
        id=row.id,
        query_gen=row.query_gen,
        gallery_gen=row.gallery_gen,
        metrics=dict(row.metrics or {}),
        created_at=row.created_at,
        query_sha256=row.query_sha256,
        gallery_sha256=row.gallery_sha256,
    )


def to_gate_report(row: GateReportRow) -> GateReport:
    """A gate report from its row."""
    return GateReport(
        id=row.id,
        generation_id=row.generation_id,
        artifact_sha256=row.artifact_sha256,
        passed=bool(row.passed),
        kind=row.kind,
        report=dict(row.report or {}),
        created_at=row.created_at,
        calibration=None if row.calibration is None else dict(row.calibration),
    )


def to_alias_move(row: AliasHistoryRow) -> AliasMove:
    """One alias history entry from its row."""
    return AliasMove(
        id=row.id,
        alias=row.alias,
        from_gen=row.from_gen,
        to_gen=row.to_gen,
        at=row.at,
        actor=row.actor,
        gate_report_id=row.gate_report_id,
        reason=row.reason,
        forced=bool(row.forced),
    )
