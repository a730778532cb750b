"""Generations: registration, lookup by id / name / alias, status changes and artifact updates."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import validation
from registry.db import UnitOfWork, json_value
from registry.entities import PRODUCTION, Generation, NewGeneration
from registry.errors import (
    DuplicateItem,
    InterfaceError,
    InvalidStatus,
    UnknownGeneration,
)
from registry.mappers import to_generation
from registry.schema import AliasRow, GenerationRow
from registry.stores.interface import InterfaceStore


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
                    gid = s.execute(select(AliasRow.generation_id).where(AliasRow.name == key)).scalar_one_or_none()
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

    def add_generation(self, new: NewGeneration) -> Generation:
        """Register a generation (status ``candidate``).

        Args:
            new: what the caller supplies; ``num_classes`` must equal the interface's K.

        Returns:
            The stored generation.

        Raises:
            InterfaceError: no interface, or a different K.
            DuplicateItem: the name is taken.
            UnknownGeneration: the parent does not exist.
            ConstraintViolation: an unknown kind, or a name that is empty, numeric or an alias.
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
                status="candidate",
                metrics=json_value(dict(new.metrics), "metrics"),
            )
            s.add(row)
            s.flush()
            s.refresh(row)
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
            if _production_holder(s) == row.id:
                raise InvalidStatus(
                    f"generation {row.name!r} serves production; promote or roll back to another "
                    f"generation before changing its status"
                )
            row.status = status
            s.flush()
            return to_generation(row)

    def update_artifact(
        self, gen_id: int | str, onnx_path: str, onnx_sha256: str, onnx_metadata: dict[str, str]
    ) -> Generation:
        """Point a generation at a new ONNX artifact (e.g. a re-export).

        Gate reports stay tied to the sha256 they judged, so a report about the old artifact no
        longer allows a promotion.

        Raises:
            UnknownGeneration: no such generation.
            InvalidStatus: the generation serves production (its artifact must not change under it).
        """
        with self._uow.session(write=True) as s:
            row = self.row(s, gen_id, lock=True)
            if _production_holder(s) == row.id:
                raise InvalidStatus(
                    f"generation {row.name!r} serves production and its artifact cannot change; "
                    f"register the new artifact as a new generation"
                )
            row.onnx_path = str(onnx_path)
            row.onnx_sha256 = onnx_sha256
            row.onnx_metadata = {str(k): str(v) for k, v in onnx_metadata.items()}
            s.flush()
            return to_generation(row)


def _production_holder(s: Session) -> int | None:
    return s.execute(select(AliasRow.generation_id).where(AliasRow.name == PRODUCTION)).scalar_one_or_none()
