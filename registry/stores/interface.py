"""The workspace interface: K, the embedding dim (K-1), the gallery dtype and the label map."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import validation
from registry.codec import EmbeddingCodec
from registry.db import UnitOfWork
from registry.entities import Interface
from registry.errors import DuplicateItem, InterfaceError
from registry.mappers import to_interface
from registry.schema import ClassRow, InterfaceRow


def _no_interface() -> InterfaceError:
    return InterfaceError("the workspace has no interface yet; initialise it with K classes (set_interface)")


class InterfaceStore:
    """Reads and writes the single interface row and the label map."""

    def __init__(self, uow: UnitOfWork) -> None:
        """Bind the store to the registry's unit of work."""
        self._uow = uow
        # K, the dimension and the gallery dtype never change once set, so the codec is cached.
        self._codec: EmbeddingCodec | None = None

    def set_interface(self, num_classes: int, *, embedding_dtype: str = "float32") -> Interface:
        """Fix the workspace interface: K vertices, embedding dim K-1. Allowed once.

        Args:
            num_classes: K, the number of preallocated d-Simplex vertices (at least 2).
            embedding_dtype: storage dtype of gallery embeddings, ``"float32"`` or ``"float16"``.

        Returns:
            The interface.

        Raises:
            InterfaceError: already set, or K below 2.
            EmbeddingError: an unknown dtype.
        """
        k = validation.num_classes(num_classes)
        validation.embedding_dtype(embedding_dtype)
        try:
            with self._uow.session(write=True) as s:
                existing = s.get(InterfaceRow, 1)
                if existing is not None:
                    raise InterfaceError(
                        f"the workspace interface is already set (K={existing.num_classes}); it is fixed "
                        f"for the life of the workspace — create a new workspace for another K"
                    )
                s.add(InterfaceRow(id=1, num_classes=k, embedding_dim=k - 1, embedding_dtype=embedding_dtype))
                s.flush()
                return self.read(s)
        except DuplicateItem as err:
            # Another process set it between our check and our insert.
            raise InterfaceError(
                "the workspace interface was set concurrently; it is fixed for the life of the workspace"
            ) from err

    def interface(self) -> Interface:
        """The workspace interface.

        Raises:
            InterfaceError: not set yet.
        """
        with self._uow.session() as s:
            return self.read(s)

    def read(self, s: Session) -> Interface:
        """The interface inside an open session.

        Raises:
            InterfaceError: not set yet.
        """
        row = self.row(s)
        classes = s.execute(select(ClassRow.name, ClassRow.vertex).order_by(ClassRow.vertex)).all()
        return to_interface(row, classes)

    def row(self, s: Session, *, lock: bool = False) -> InterfaceRow:
        """The interface row; ``lock`` holds it for the transaction (serialises label-map writers).

        Raises:
            InterfaceError: not set yet.
        """
        if lock:
            stmt = select(InterfaceRow).where(InterfaceRow.id == 1).with_for_update()
            row = s.execute(stmt).scalar_one_or_none()
        else:
            row = s.get(InterfaceRow, 1)
        if row is None:
            raise _no_interface()
        return row

    def codec(self) -> EmbeddingCodec:
        """The gallery codec (the interface's dim and dtype), read once and cached.

        Raises:
            InterfaceError: no interface yet.
        """
        if self._codec is None:
            with self._uow.session() as s:
                row = self.row(s)
                self._codec = EmbeddingCodec(row.embedding_dim, row.embedding_dtype)
        return self._codec

    def assign_classes(self, names: Iterable[str]) -> dict[str, int]:
        """Give each class name a vertex; known names keep theirs, new ones take the next free vertex.

        Args:
            names: class names, in the order new ones should be assigned.

        Returns:
            ``{name: vertex}`` for the names given.

        Raises:
            InterfaceError: no interface, an empty name, or more classes than K vertices.
        """
        wanted = validation.class_names(names)
        with self._uow.session(write=True) as s:
            iface = self.row(s, lock=True)
            known: dict[str, int] = {n: v for n, v in s.execute(select(ClassRow.name, ClassRow.vertex))}
            new = [n for n in wanted if n not in known]
            nxt = max(known.values(), default=-1) + 1
            if nxt + len(new) > iface.num_classes:
                raise InterfaceError(
                    f"the label map is full: {len(known)} of K={iface.num_classes} vertices used and "
                    f"{len(new)} new classes asked for; create a workspace with a larger K"
                )
            for offset, name in enumerate(new):
                s.add(ClassRow(vertex=nxt + offset, name=name))
                known[name] = nxt + offset
            s.flush()
            return {n: known[n] for n in wanted}
