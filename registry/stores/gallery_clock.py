"""The gallery's change sequence: one counter row, the versions writes take from it, and tombstones.

Why versions and not row ids: a server follows the gallery incrementally. Row ids come from a
sequence (PostgreSQL) and are handed out when a row is inserted, not when it commits, so a reader
holding "everything up to id 100" can see 101..110 committed before 95 commits, and 95 is missed for
good; an id cursor also never sees a row change (a re-embed) or go (a delete). Versions are taken
under a lock: every gallery write transaction (add, re-embed, delete) first locks the single
``gallery_clock`` row (``SELECT ... FOR UPDATE``; on SQLite the writer's ``BEGIN IMMEDIATE`` already
holds the database's one write lock), takes the next consecutive versions, moves the counter past
them and keeps the lock until it commits. The next writer can only read the counter after that
commit, so versions become visible in the order they were taken, and a reader that has seen every
version up to V has seen every write up to V: a version cursor never misses a row.

An added or re-embedded row carries its version in ``gallery_items.version``; a deleted row leaves a
``gallery_tombstones`` row with its own version. The lock is always the first one a gallery write
takes, so gallery writers never wait on each other in two orders.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection


def param_marker(conn: Connection) -> str:
    """The DBAPI parameter marker: pysqlite takes qmark, psycopg and most others format (``%s``)."""
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def _clock_sql(conn: Connection, *, lock: bool) -> str:
    # SQLite has no FOR UPDATE (and needs none: a write transaction holds the database's write lock).
    sql = "SELECT version FROM gallery_clock WHERE id = 1"
    return sql + " FOR UPDATE" if lock and conn.dialect.name != "sqlite" else sql


#: The newest version any surviving row or tombstone carries: what the counter must be at least.
_HIGHEST_VERSION = (
    "SELECT COALESCE(MAX(v), 0) FROM (SELECT MAX(version) AS v FROM gallery_items "
    "UNION ALL SELECT MAX(version) AS v FROM gallery_tombstones) AS highest"
)


def lock(conn: Connection) -> int:
    """Lock the counter row for the rest of the transaction and return the newest version taken.

    Call it before any other write of the transaction. A missing counter row (a database emptied
    outside the registry) is recreated from the highest version stored, so writes carry on above it.
    """
    current = conn.exec_driver_sql(_clock_sql(conn, lock=True)).scalar_one_or_none()
    if current is None:
        # WHERE 1 = 1: SQLite needs a WHERE in INSERT ... SELECT ... ON CONFLICT (parsing ambiguity).
        conn.exec_driver_sql(
            f"INSERT INTO gallery_clock (id, version) SELECT 1, ({_HIGHEST_VERSION}) WHERE 1 = 1 "
            "ON CONFLICT (id) DO NOTHING"
        )
        # Inserted above, or by a concurrent writer whose commit the insert waited for.
        current = conn.exec_driver_sql(_clock_sql(conn, lock=True)).scalar_one()
    return int(current)


def advance(conn: Connection, version: int) -> None:
    """Move the locked counter to ``version``, the newest version this transaction took."""
    conn.exec_driver_sql(f"UPDATE gallery_clock SET version = {param_marker(conn)} WHERE id = 1", (int(version),))


def take(conn: Connection, n: int) -> int:
    """Lock the counter and take ``n`` consecutive versions; returns the first of them."""
    first = lock(conn) + 1
    advance(conn, first + n - 1)
    return first


def current(conn: Connection) -> int:
    """The newest version taken (0 for a gallery never written), without locking."""
    value = conn.exec_driver_sql(_clock_sql(conn, lock=False)).scalar_one_or_none()
    if value is None:
        return int(conn.exec_driver_sql(_HIGHEST_VERSION).scalar_one())
    return int(value)


def bury(conn: Connection, first_version: int, rows: Sequence[tuple[int, str]]) -> int:
    """Write one tombstone per deleted ``(row id, external id)``, versions from ``first_version`` on.

    Returns:
        The next free version (``first_version + len(rows)``).
    """
    if rows:
        ph = param_marker(conn)
        conn.exec_driver_sql(
            f"INSERT INTO gallery_tombstones (version, row_id, external_id) VALUES ({ph}, {ph}, {ph})",
            [(first_version + i, int(row_id), ext) for i, (row_id, ext) in enumerate(rows)],
        )
    return first_version + len(rows)
