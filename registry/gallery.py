"""Fast paths for the gallery, the one table that holds millions of rows.

Ingest and load skip the ORM and SQLAlchemy's per-row parameter and result processing: rows go to
the driver's ``executemany`` as plain tuples and come back as plain tuples (``exec_driver_sql``), and
embeddings are decoded a chunk at a time with one ``np.frombuffer`` over the joined blobs. The SQL
is plain and portable (only the parameter marker differs between drivers); errors still pass through
SQLAlchemy, so the unit of work translates them like any other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import repeat

from sqlalchemy import Connection, exc

#: Columns written by an ingest, in tuple order.
INSERT_COLUMNS = ("external_id", "label", "source_uri", "generation_id", "embedding")


def _param_marker(conn: Connection) -> str:
    # pysqlite takes qmark; psycopg and most others take format/pyformat (%s).
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


def insert_items(
    conn: Connection,
    generation_id: int,
    external_ids: Sequence[str],
    labels: Sequence[str | None],
    source_uris: Sequence[str | None],
    blobs: Sequence[bytes],
) -> None:
    """Insert gallery rows with one ``executemany`` inside the caller's transaction.

    Args:
        conn: a connection inside a write transaction.
        generation_id: the generation that wrote every row.
        external_ids: unique keys.
        labels: optional labels.
        source_uris: optional sources.
        blobs: encoded embeddings.
    """
    ph = _param_marker(conn)
    sql = (
        f"INSERT INTO gallery_items ({', '.join(INSERT_COLUMNS)}) "
        f"VALUES ({', '.join([ph] * len(INSERT_COLUMNS))})"
    )
    rows = list(zip(external_ids, labels, source_uris, repeat(int(generation_id)), blobs))
    conn.exec_driver_sql(sql, rows)


def label_key(label: str | None) -> str:
    """The ``gallery_label_counts`` key of a label: ``""`` for none, ``"=" + label`` otherwise."""
    return "" if label is None else "=" + label


def label_from_key(key: str) -> str | None:
    """Inverse of :func:`label_key`."""
    return key[1:] if key else None


def add_counts(conn: Connection, deltas: dict[tuple[int, str | None], int]) -> None:
    """Add ``deltas`` (items per (generation id, label), may be negative) to ``gallery_label_counts``.

    One upsert per key, in key order (concurrent writers lock rows in the same order), then the
    rows that reached zero are removed. Runs inside the caller's transaction, next to the item
    writes it accounts for, so the counts and the items commit or roll back together.
    """
    rows = sorted((int(g), label_key(lab), int(n)) for (g, lab), n in deltas.items() if n)
    if not rows:
        return
    ph = _param_marker(conn)
    conn.exec_driver_sql(
        f"INSERT INTO gallery_label_counts (generation_id, label_key, items) VALUES ({ph}, {ph}, {ph}) "
        "ON CONFLICT (generation_id, label_key) DO UPDATE SET items = gallery_label_counts.items + excluded.items",
        rows,
    )
    if any(n < 0 for _, _, n in rows):
        conn.exec_driver_sql("DELETE FROM gallery_label_counts WHERE items <= 0")


def delete_items(conn: Connection, external_ids: Sequence[str]) -> dict[tuple[int, str | None], int]:
    """Delete gallery rows by external id; returns how many went per (generation id, label)."""
    if not external_ids:
        return {}
    ph = _param_marker(conn)
    result = conn.exec_driver_sql(
        f"DELETE FROM gallery_items WHERE external_id IN ({', '.join([ph] * len(external_ids))}) "
        "RETURNING generation_id, label",
        tuple(external_ids),
    )
    gone: dict[tuple[int, str | None], int] = {}
    for gen, label in result.fetchall():
        gone[(int(gen), label)] = gone.get((int(gen), label), 0) + 1
    return gone


def _filter_sql(ph: str, after_row_id: int, generation_ids: Sequence[int] | None) -> tuple[str, list[int]]:
    sql = "WHERE id > " + ph
    params = [int(after_row_id)]
    if generation_ids is not None:
        sql += f" AND generation_id IN ({', '.join([ph] * len(generation_ids))})" if generation_ids else " AND 1 = 0"
        params.extend(int(g) for g in generation_ids)
    return sql, params


def count_items(conn: Connection, after_row_id: int, generation_ids: Sequence[int] | None) -> int:
    """Number of rows :func:`iter_items` would return (used to preallocate the matrix)."""
    where, params = _filter_sql(_param_marker(conn), after_row_id, generation_ids)
    return int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM gallery_items {where}", tuple(params)).scalar_one())


def iter_items(
    conn: Connection, *, after_row_id: int, generation_ids: Sequence[int] | None, chunk: int
) -> Iterator[tuple[tuple[int, ...], tuple[str, ...], tuple[int, ...], tuple[str | None, ...], tuple[bytes, ...]]]:
    """Stream gallery rows in ascending id order, ``chunk`` rows at a time, as column tuples.

    Yields:
        ``(row_ids, external_ids, generation_ids, labels, blobs)`` for each chunk.
    """
    if generation_ids is not None and not generation_ids:
        return
    where, params0 = _filter_sql(_param_marker(conn), 0, generation_ids)
    extra = params0[1:]
    sql = f"SELECT id, external_id, generation_id, label, embedding FROM gallery_items {where} ORDER BY id LIMIT {int(chunk)}"
    dbapi_error = conn.dialect.loaded_dbapi.Error
    last = int(after_row_id)
    # Keyset pagination (id > last ... LIMIT n): bounded memory on every backend without relying
    # on server-side cursors, and each page is one indexed range scan.
    while True:
        params = (last, *extra)
        result = conn.exec_driver_sql(sql, params)
        try:
            # The DBAPI cursor hands back plain tuples: no per-row Row objects for a million rows.
            part = result.cursor.fetchall()
        except dbapi_error as err:
            # Wrapped like SQLAlchemy wraps it, so the unit of work translates it.
            raise exc.DBAPIError.instance(sql, params, err, dbapi_error) from err
        finally:
            result.close()
        if not part:
            return
        ids, ext, gens_c, labels, blobs = zip(*part)
        yield ids, ext, gens_c, labels, blobs
        if len(part) < chunk:
            return
        last = int(ids[-1])
