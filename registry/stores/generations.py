"""Generations: registration, lookup by id / name / alias, status changes, artifact updates, removal."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from registry import validation
from registry.db import UnitOfWork, json_value
from registry.entities import PRODUCTION, Generation, NewGeneration
from registry.errors import (
    ConstraintViolation,
    DuplicateItem,
    InterfaceError,
    InvalidStatus,
    UnknownGeneration,
)
from registry.mappers import to_generation
from registry.schema import (
    AliasHistoryRow,
    EvaluationRow,
    GalleryItemRow,
    GalleryLabelCountRow,
    GateReportRow,
    GenerationRow,
    ProbeEmbeddingRow,
)
from registry.stores.agreement import alias_target, possible_holders
from registry.stores.interface import InterfaceStore

#: ``then(session, new_row)``: more writes in a registration's transaction.
AfterInsert = Callable[[Session, GenerationRow], None]


class GenerationStore:
    """Reads and writes generation rows; the other stores resolve generations through :meth:`row`."""

    def __init__(self, uow: UnitOfWork, interfaces: InterfaceStore) -> None:
        """Bind the store to the unit of work and the interface (K is checked at registration)."""
        self._uow = uow
        self._interfaces = interfaces

    def row(self, s: Session, ref: int | str, *, lock: bool = False) -> GenerationRow:
        """Resolve an id, a numeric string, a name or an alias to a generation row.

        Args:
            s: the open session.
            ref: what names the generation.
            lock: hold the row for the transaction (``SELECT ... FOR UPDATE``).

        Raises:
            UnknownGeneration: nothing matches, or ``ref`` is neither an int nor a string.
            AliasTampered: ``ref`` is an alias that disagrees with its history.
        """
        gid: int | None = None
        if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
            gid = int(ref)
        elif isinstance(ref, str):
            key = ref.strip()
            if key.isdigit():
                gid = int(key)
            else:
                gid = s.execute(select(GenerationRow.id).where(GenerationRow.name == key)).scalar_one_or_none()
                if gid is None:
                    gid = alias_target(s, key)
        else:
            raise UnknownGeneration(f"a generation is named by id, name or alias, got {ref!r}")
        row = None
        if gid is not None:
            stmt = select(GenerationRow).where(GenerationRow.id == gid)
            if lock:
                stmt = stmt.with_for_update()
            row = s.execute(stmt).scalar_one_or_none()
        if row is None:
            raise UnknownGeneration(f"no generation with id, name or alias {ref!r}; list them to check")
        return row

    def add_generation(self, new: NewGeneration, *, then: AfterInsert | None = None) -> Generation:
        """Register a generation (status ``candidate``).

        Args:
            new: what the caller supplies; ``num_classes`` must equal the interface's K.
            then: more writes in the same transaction (the probe embeddings), given the new row; if
                it raises, the generation is not registered either.

        Returns:
            The stored generation.

        Raises:
            InterfaceError: no interface, or a different K.
            DuplicateItem: the name is taken.
            UnknownGeneration: the parent does not exist.
            ConstraintViolation: an unknown kind, or a name outside
                :data:`registry.validation.GENERATION_NAME_PATTERN` (or numeric, or an alias).
        """
        name = validation.generation_name(new.name)
        validation.generation_kind(new.kind)
        with self._uow.session(write=True) as s:
            iface = self._interfaces.row(s)
            if new.num_classes != iface.num_classes:
                raise InterfaceError(
                    f"generation {name!r} was trained for K={new.num_classes} but the workspace interface "
                    f"has K={iface.num_classes}; train it against this workspace's interface"
                )
            if s.execute(select(GenerationRow.id).where(GenerationRow.name == name)).first() is not None:
                raise DuplicateItem(f"a generation named {name!r} already exists; choose another name")
            if new.parent_id is not None and s.get(GenerationRow, new.parent_id) is None:
                raise UnknownGeneration(f"parent generation {new.parent_id} does not exist; register it first")
            row = GenerationRow(
                name=name,
                kind=new.kind,
                method=new.method,
                architecture=new.architecture,
                parent_id=new.parent_id,
                num_classes=new.num_classes,
                train_config=json_value(dict(new.train_config), "train_config"),
                data_fingerprint=new.data_fingerprint,
                onnx_path=str(new.onnx_path),
                onnx_sha256=new.onnx_sha256,
                onnx_metadata={str(k): str(v) for k, v in new.onnx_metadata.items()},
                checkpoint_path=None if new.checkpoint_path is None else str(new.checkpoint_path),
                checkpoint_sha256=new.checkpoint_sha256,
                status="candidate",
                metrics=json_value(dict(new.metrics), "metrics"),
            )
            s.add(row)
            s.flush()
            s.refresh(row)
            if then is not None:
                then(s, row)
            return to_generation(row)

    def get_generation(self, ref: int | str) -> Generation:
        """A generation by id, numeric string, name or alias name (``"production"``).

        Raises:
            UnknownGeneration: nothing matches.
        """
        with self._uow.session() as s:
            return to_generation(self.row(s, ref))

    def list_generations(self) -> list[Generation]:
        """Every generation, ascending id."""
        with self._uow.session() as s:
            return [to_generation(r) for r in s.scalars(select(GenerationRow).order_by(GenerationRow.id))]

    def set_status(self, gen_id: int | str, status: str) -> Generation:
        """Set a generation's status; ``production`` is only reached by moving the production alias.

        Raises:
            InvalidStatus: unknown status, ``production``, or the generation serves production.
            UnknownGeneration: no such generation.
        """
        validation.settable_status(status)
        with self._uow.session(write=True) as s:
            row = self.row(s, gen_id, lock=True)
            if row.id in possible_holders(s, PRODUCTION):
                raise InvalidStatus(
                    f"generation {row.name!r} serves production; promote or roll back to another "
                    f"generation before changing its status"
                )
            row.status = status
            s.flush()
            return to_generation(row)

    def update_artifact(
        self,
        gen_id: int | str,
        onnx_path: str,
        onnx_sha256: str,
        onnx_metadata: dict[str, str],
        *,
        checkpoint_sha256: str | None = None,
    ) -> Generation:
        """Point a generation at a new ONNX artifact (e.g. a re-export) and drop what described the old one.

        In one transaction: its probe embeddings and every evaluation it takes part in (as query or
        gallery generation) are deleted, since they were computed with the old artifact, and its
        status goes back to ``candidate`` (a retired one stays retired) until the gate judges the new
        artifact. Gate reports stay: they name the sha256 they judged, so they no longer allow a move.

        Args:
            checkpoint_sha256: the checkpoint's new checksum; ``None`` keeps the recorded one.

        Raises:
            UnknownGeneration: no such generation.
            ConstraintViolation: the generation holds production (its artifact must not change under it).
        """
        with self._uow.session(write=True) as s:
            row = self.row(s, gen_id, lock=True)
            _refuse_if_serving(s, row, "its artifact cannot change")
            s.execute(delete(ProbeEmbeddingRow).where(ProbeEmbeddingRow.generation_id == row.id))
            s.execute(delete(EvaluationRow).where(or_(EvaluationRow.query_gen == row.id, EvaluationRow.gallery_gen == row.id)))
            row.onnx_path = str(onnx_path)
            row.onnx_sha256 = onnx_sha256
            row.onnx_metadata = {str(k): str(v) for k, v in onnx_metadata.items()}
            if checkpoint_sha256 is not None:
                row.checkpoint_sha256 = checkpoint_sha256
            if row.status != "retired":
                row.status = "candidate"
            s.flush()
            return to_generation(row)

    def remove_generation(self, ref: int | str) -> tuple[Generation, bool]:
        """Delete a generation that never served, or retire one the alias history names.

        A generation any alias history row names (moved to or from, or whose gate report a move
        cites) is set to ``retired``, keeping its history, reports and embeddings. Any other is
        deleted with its probe embeddings, evaluations (either side) and gate reports, so its name is
        free again; all in one transaction.

        Returns:
            (the generation as it was when deleted, or as it is now when retired; whether it was deleted).

        Raises:
            UnknownGeneration: no such generation.
            ConstraintViolation: it holds production; or (to delete) it still has gallery items or
                other generations name it as their parent.
        """
        with self._uow.session(write=True) as s:
            row = self.row(s, ref, lock=True)
            _refuse_if_serving(s, row, "it cannot be removed")
            if _in_history(s, row.id):
                row.status = "retired"
                s.flush()
                return to_generation(row), False
            items = s.execute(
                select(func.coalesce(func.sum(GalleryLabelCountRow.items), 0)).where(
                    GalleryLabelCountRow.generation_id == row.id
                )
            ).scalar_one()
            if items or s.execute(select(GalleryItemRow.id).where(GalleryItemRow.generation_id == row.id).limit(1)).first():
                raise ConstraintViolation(
                    f"generation {row.name!r} still has {int(items)} gallery items; delete its gallery items "
                    f"first (every item of generation {row.name!r}), then remove it"
                )
            children = s.scalars(select(GenerationRow.name).where(GenerationRow.parent_id == row.id)).all()
            if children:
                raise ConstraintViolation(
                    f"generation {row.name!r} is the parent of {validation.preview(children)}; remove those first"
                )
            gone = to_generation(row)
            for stmt in (
                delete(ProbeEmbeddingRow).where(ProbeEmbeddingRow.generation_id == row.id),
                delete(EvaluationRow).where(or_(EvaluationRow.query_gen == row.id, EvaluationRow.gallery_gen == row.id)),
                delete(GateReportRow).where(GateReportRow.generation_id == row.id),
                delete(GalleryLabelCountRow).where(GalleryLabelCountRow.generation_id == row.id),
                delete(GenerationRow).where(GenerationRow.id == row.id),
            ):
                s.execute(stmt)
            return gone, True


def _refuse_if_serving(s: Session, row: GenerationRow, what: str) -> None:
    """Refuse to change a generation the production alias (or its history's last move) names."""
    if row.id in possible_holders(s, PRODUCTION):
        raise ConstraintViolation(
            f"generation {row.name!r} serves production and {what}; roll back or promote another "
            f"generation first"
        )


def _in_history(s: Session, gen_id: int) -> bool:
    """Whether any alias history row names the generation or cites one of its gate reports."""
    named = s.execute(
        select(AliasHistoryRow.id)
        .where(
            or_(
                AliasHistoryRow.to_gen == gen_id,
                AliasHistoryRow.from_gen == gen_id,
                AliasHistoryRow.gate_report_id.in_(select(GateReportRow.id).where(GateReportRow.generation_id == gen_id)),
            )
        )
        .limit(1)
    ).first()
    return named is not None
