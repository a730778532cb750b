"""Whether an alias agrees with its append-only history: the one read every alias lookup goes through.

Triggers keep the two in step for every client of the database, but a user who can drop a trigger
(or restore a file half-way) can still set an alias row behind the history's back. Readers therefore
compare the alias row with the ``to_gen`` of the alias's newest history row and refuse to name a
generation when they differ, so no server follows an alias the history does not account for.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import AliasTampered
from registry.schema import AliasHistoryRow, AliasRow

_RESTORE = (
    "the registry was edited outside upgrader; restore it from a backup "
    "(upgrader refuses to serve or move it until they agree)"
)


def last_move_target(s: Session, alias: str) -> int | None:
    """The ``to_gen`` of the alias's newest history row, or ``None`` without history."""
    return s.execute(
        select(AliasHistoryRow.to_gen)
        .where(AliasHistoryRow.alias == alias)
        .order_by(AliasHistoryRow.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def alias_target(s: Session, alias: str, *, lock: bool = False) -> int | None:
    """The generation id an alias points at, checked against its history.

    Args:
        s: the open session.
        alias: the alias name.
        lock: hold the alias row for the transaction (``SELECT ... FOR UPDATE``).

    Returns:
        The generation id, or ``None`` when the alias was never set (no row and no history).

    Raises:
        AliasTampered: the row and the newest history row disagree, or only one of them exists.
    """
    stmt = select(AliasRow.generation_id).where(AliasRow.name == alias)
    if lock:
        stmt = stmt.with_for_update()
    current = s.execute(stmt).scalar_one_or_none()
    last = last_move_target(s, alias)
    if current is None and last is None:
        return None
    if current is None:
        raise AliasTampered(
            f"alias {alias!r} has no row but its history's last move is to generation {last}: {_RESTORE}"
        )
    if last is None:
        raise AliasTampered(f"alias {alias!r} points at generation {current} but has no history of moves: {_RESTORE}")
    if current != last:
        raise AliasTampered(
            f"alias {alias!r} points at generation {current} but its history's last move is to "
            f"generation {last}: {_RESTORE}"
        )
    return int(current)


def possible_holders(s: Session, alias: str) -> set[int]:
    """Every generation an alias might be taken to name: its row's and its history's last (no check).

    For guards that must refuse to touch a serving generation even when the two disagree.
    """
    current = s.execute(select(AliasRow.generation_id).where(AliasRow.name == alias)).scalar_one_or_none()
    return {int(g) for g in (current, last_move_target(s, alias)) if g is not None}
