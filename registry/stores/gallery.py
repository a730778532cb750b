"""The gallery: items embedded by any live generation, searched as one mixed matrix.

The gallery is the one table that holds millions of rows, so ingest and load skip the ORM and
SQLAlchemy's per-row parameter and result processing: rows go to the driver's ``executemany`` as
plain tuples and come back as plain tuples (``exec_driver_sql``), and embeddings are decoded a chunk
at a time with one ``np.frombuffer`` over the joined blobs. The SQL is plain and portable (only the
parameter marker differs between drivers); errors still pass through SQLAlchemy, so the unit of work
translates them like any other. ``gallery_label_counts`` is kept in step by every write, in the same
transaction, so per-generation counts never scan the items. Every write also takes versions from the
gallery's change sequence (:mod:`registry.stores.gallery_clock`), which servers follow; the reads of
that sequence, re-embedding and the list of sources are in :mod:`registry.stores.gallery_changes`.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import repeat
from typing import Any

import numpy as np
from sqlalchemy import Connection, exc, select

from registry import validation
from registry.db import UnitOfWork
from registry.entities import GalleryMatrix
from registry.errors import ConstraintViolation, DuplicateItem, EmbeddingError
from registry.schema import GalleryItemRow, GalleryLabelCountRow
from registry.stores import gallery_clock
from registry.stores.gallery_clock import param_marker as _param_marker
from registry.stores.generations import GenerationStore
from registry.stores.interface import InterfaceStore

#: Ids per IN (...) list: well under SQLite's and PostgreSQL's bound-parameter limits.
IN_CHUNK = 5_000
#: Rows fetched per round trip when loading the gallery.
LOAD_CHUNK = 65_536


class GalleryStore:
    """Adds, counts, loads and deletes gallery items."""

    def __init__(self, uow: UnitOfWork, interfaces: InterfaceStore, generations: GenerationStore) -> None:
        """Bind the store to the unit of work, the gallery codec and generation lookup."""
        self._uow = uow
        self._interfaces = interfaces
        self._generations = generations

    def add_gallery_items(
        self,
        generation_id: int | str,
        external_ids: Sequence[str],
        embeddings: np.ndarray,
        labels: Sequence[str | None] | None = None,
        source_uris: Sequence[str | None] | None = None,
    ) -> int:
        """Add a batch of gallery items embedded by one generation; all or nothing.

        The rows take consecutive versions of the gallery's change sequence, in batch order.

        Args:
            generation_id: the generation that produced the embeddings.
            external_ids: ``[N]`` unique item keys (unique across the whole gallery).
            embeddings: ``[N, D]`` floats, stored in the workspace's gallery dtype.
            labels: ``[N]`` optional labels.
            source_uris: ``[N]`` optional sources.

        Returns:
            The number of items added.

        Raises:
            DuplicateItem: an external id already in the gallery or repeated in the batch.
            EmbeddingError: wrong dimension, NaN/inf, or a row count unlike the ids.
            UnknownGeneration: no such generation.
        """
        ids = validation.external_ids(external_ids)
        n = len(ids)
        labs = validation.optional_strings(labels, n)
        uris = validation.optional_strings(source_uris, n)
        if len(labs) != n or len(uris) != n:
            raise EmbeddingError(f"{n} ids but {len(labs)} labels and {len(uris)} source URIs; pass one per item")
        # Encode (validate) before taking the write lock, so the lock is held only for the insert.
        blobs = self._interfaces.codec().encode(embeddings, rows=n)
        try:
            with self._uow.session(write=True) as s:
                conn = s.connection()
                # The clock's lock first, before anything else this transaction locks.
                first = gallery_clock.take(conn, n) if n else 0
                gen_id = self._generations.row(s, generation_id).id
                if n:
                    _insert_items(conn, gen_id, ids, labs, uris, blobs, first_version=first)
                    _add_counts(conn, {(gen_id, lab): c for lab, c in Counter(labs).items()})
        except DuplicateItem as err:
            taken = sorted(self.existing_external_ids(ids))
            raise DuplicateItem(
                f"external ids already in the gallery: {validation.preview(taken)}; "
                f"delete them first, skip them, or use new ids"
            ) from err
        return n

    def existing_external_ids(self, ids: Iterable[str]) -> set[str]:
        """Which of these external ids are already in the gallery (to skip them when resuming an add).

        The ids are looked up :data:`IN_CHUNK` at a time, so any number can be asked about.
        """
        wanted = list(dict.fromkeys(str(x) for x in ids))
        found: set[str] = set()
        with self._uow.session() as s:
            for chunk in _chunks(wanted):
                found.update(
                    s.scalars(select(GalleryItemRow.external_id).where(GalleryItemRow.external_id.in_(chunk))).all()
                )
        return found

    def gallery_counts(self) -> dict[int, int]:
        """Number of gallery items per generation id (generations with items only)."""
        counts: dict[int, int] = {}
        for (gen, _), n in self.gallery_label_counts().items():
            counts[gen] = counts.get(gen, 0) + n
        return counts

    def gallery_label_counts(self) -> dict[tuple[int, str | None], int]:
        """Number of gallery items per (generation id, label); unlabelled items count under None.

        Why: the gate estimates how a candidate's queries rank the real mixed gallery, and needs to
        know which generation wrote (most of) each class's items there, without loading embeddings.
        Read from ``gallery_label_counts``, which every gallery write keeps in step, so the cost does
        not grow with the gallery.
        """
        with self._uow.session() as s:
            rows = s.execute(
                select(GalleryLabelCountRow.generation_id, GalleryLabelCountRow.label_key, GalleryLabelCountRow.items)
            )
            return {(int(g), _label_from_key(key)): int(n) for g, key, n in rows if n > 0}

    def load_gallery(self, *, after_row_id: int = 0, generation_ids: Iterable[int] | None = None) -> GalleryMatrix:
        """Load the gallery (or the rows after a cursor) as a search-ready float32 matrix.

        Args:
            after_row_id: only rows with a larger row id (pass the last ``row_ids`` value to load
                what was added since). On PostgreSQL ids commit out of order, so such a cursor can
                miss rows, and it never sees re-embeds or deletions; a server that follows the
                gallery reads :meth:`registry.stores.gallery_changes.GalleryChangeStore.gallery_changes`.
            generation_ids: only rows written by these generations.

        Returns:
            The rows in ascending row id order with a C-contiguous float32 ``[N, D]`` matrix.
        """
        codec = self._interfaces.codec()
        gens_filter = None if generation_ids is None else [int(g) for g in generation_ids]
        row_ids: list[int] = []
        ext: list[str] = []
        gens: list[int] = []
        labels: list[str | None] = []
        filled = 0
        with self._uow.session() as s, _gc_paused():
            conn = s.connection()
            # One preallocated matrix filled chunk by chunk: a single copy of the embeddings, and
            # the per-row bytes objects of only one chunk alive at a time.
            matrix = np.empty((_count_items(conn, after_row_id, gens_filter), codec.dim), np.float32)
            for ids_c, ext_c, gen_c, lab_c, blob_c in _iter_items(
                conn, after_row_id=after_row_id, generation_ids=gens_filter, chunk=LOAD_CHUNK
            ):
                row_ids.extend(ids_c)
                ext.extend(ext_c)
                gens.extend(gen_c)
                labels.extend(lab_c)
                block = codec.decode_raw(blob_c)
                if filled + len(block) > len(matrix):
                    # Rows committed after the count (READ COMMITTED backends): grow.
                    matrix = np.concatenate([matrix[:filled], np.empty((len(block), codec.dim), np.float32)])
                matrix[filled : filled + len(block)] = block
                filled += len(block)
        matrix = matrix[:filled] if filled < len(matrix) else matrix
        return GalleryMatrix(
            row_ids=np.asarray(row_ids, dtype=np.int64),
            external_ids=ext,
            generation_ids=np.asarray(gens, dtype=np.int64),
            labels=labels,
            matrix=np.ascontiguousarray(matrix),
        )

    def delete_gallery_items(
        self, external_ids: Iterable[str] | None = None, *, generation: int | str | None = None
    ) -> int:
        """Delete gallery items by external id (unknown ids are ignored), or every item of one generation.

        Exactly one of the two is given. Either way one transaction, with ``gallery_label_counts``
        brought down by what was actually deleted and one tombstone per deleted row, its versions
        taken from the gallery's change sequence in ascending row id order.

        Returns:
            The number of items deleted.

        Raises:
            ConstraintViolation: both or neither of ``external_ids`` and ``generation``.
            UnknownGeneration: ``generation`` names no generation.
        """
        if (external_ids is None) == (generation is None):
            raise ConstraintViolation(
                "delete gallery items either by external ids or by generation; give exactly one of the two"
            )
        ids = [] if external_ids is None else list(dict.fromkeys(str(x) for x in external_ids))
        deleted = 0
        with self._uow.session(write=True) as s:
            conn = s.connection()
            nxt = gallery_clock.lock(conn) + 1
            if generation is not None:
                gone, buried = _delete_generation_items(conn, self._generations.row(s, generation).id)
                _add_counts(conn, {key: -n for key, n in gone.items()})
                gallery_clock.advance(conn, gallery_clock.bury(conn, nxt, buried) - 1)
                return sum(gone.values())
            for chunk in _chunks(ids):
                gone, buried = _delete_items(conn, chunk)
                _add_counts(conn, {key: -n for key, n in gone.items()})
                nxt = gallery_clock.bury(conn, nxt, buried)
                deleted += sum(gone.values())
            gallery_clock.advance(conn, nxt - 1)
        return deleted

    def live_generations(self) -> list[int]:
        """Ids of the generations that have embeddings in the gallery, ascending."""
        return sorted(self.gallery_counts())


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of row tuples are created.

    Every fetched row is a new GC-tracked tuple; with the collector on, its repeated passes over
    the growing heap double the time of a large gallery load. Nothing cyclic is created meanwhile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _chunks(seq: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


# The fast SQL paths: plain tuples to and from the driver, no ORM objects per row.

#: Columns written by an ingest, in tuple order.
INSERT_COLUMNS = ("external_id", "label", "source_uri", "generation_id", "embedding", "version")


def _insert_items(
    conn: Connection,
    generation_id: int,
    external_ids: Sequence[str],
    labels: Sequence[str | None],
    source_uris: Sequence[str | None],
    blobs: Sequence[bytes],
    *,
    first_version: int,
) -> None:
    """Insert gallery rows with one ``executemany`` inside the caller's transaction.

    Args:
        conn: a connection inside a write transaction.
        generation_id: the generation that wrote every row.
        external_ids: unique keys.
        labels: optional labels.
        source_uris: optional sources.
        blobs: encoded embeddings.
        first_version: the version of the first row (taken from the locked clock); the others follow.
    """
    ph = _param_marker(conn)
    sql = (
        f"INSERT INTO gallery_items ({', '.join(INSERT_COLUMNS)}) "
        f"VALUES ({', '.join([ph] * len(INSERT_COLUMNS))})"
    )
    versions = range(int(first_version), int(first_version) + len(blobs))
    rows = list(zip(external_ids, labels, source_uris, repeat(int(generation_id)), blobs, versions))
    conn.exec_driver_sql(sql, rows)


def _label_key(label: str | None) -> str:
    """The ``gallery_label_counts`` key of a label: ``""`` for none, ``"=" + label`` otherwise."""
    return "" if label is None else "=" + label


def _label_from_key(key: str) -> str | None:
    """Inverse of :func:`_label_key`."""
    return key[1:] if key else None


def _add_counts(conn: Connection, deltas: dict[tuple[int, str | None], int]) -> None:
    """Add ``deltas`` (items per (generation id, label), may be negative) to ``gallery_label_counts``.

    One upsert per key, in key order (concurrent writers lock rows in the same order), then the
    rows that reached zero are removed. Runs inside the caller's transaction, next to the item
    writes it accounts for, so the counts and the items commit or roll back together.
    """
    rows = sorted((int(g), _label_key(lab), int(n)) for (g, lab), n in deltas.items() if n)
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


#: What a delete hands back: items gone per (generation id, label), and the ``(row id, external id)``
#: of each deleted row in ascending row id order (for its tombstone).
Deleted = tuple[dict[tuple[int, str | None], int], list[tuple[int, str]]]


def _delete_items(conn: Connection, external_ids: Sequence[str]) -> Deleted:
    """Delete gallery rows by external id; returns what went (see :data:`Deleted`)."""
    if not external_ids:
        return {}, []
    ph = _param_marker(conn)
    result = conn.exec_driver_sql(
        f"DELETE FROM gallery_items WHERE external_id IN ({', '.join([ph] * len(external_ids))}) "
        "RETURNING id, external_id, generation_id, label",
        tuple(external_ids),
    )
    rows = sorted(result.fetchall(), key=lambda r: int(r[0]))
    gone = Counter((int(gen), label) for _, _, gen, label in rows)
    return dict(gone), [(int(row_id), ext) for row_id, ext, _, _ in rows]


def _delete_generation_items(conn: Connection, generation_id: int) -> Deleted:
    """Delete every gallery row of one generation; returns what went (see :data:`Deleted`)."""
    result = conn.exec_driver_sql(
        f"DELETE FROM gallery_items WHERE generation_id = {_param_marker(conn)} RETURNING id, external_id, label",
        (int(generation_id),),
    )
    rows = sorted(result.fetchall(), key=lambda r: int(r[0]))
    labels = Counter(label for _, _, label in rows)
    return {(int(generation_id), label): n for label, n in labels.items()}, [(int(r), ext) for r, ext, _ in rows]


def _filter_sql(ph: str, after_row_id: int, generation_ids: Sequence[int] | None) -> tuple[str, list[int]]:
    sql = "WHERE id > " + ph
    params = [int(after_row_id)]
    if generation_ids is not None:
        sql += f" AND generation_id IN ({', '.join([ph] * len(generation_ids))})" if generation_ids else " AND 1 = 0"
        params.extend(int(g) for g in generation_ids)
    return sql, params


def _count_items(conn: Connection, after_row_id: int, generation_ids: Sequence[int] | None) -> int:
    """Number of rows :func:`_iter_items` would return (used to preallocate the matrix)."""
    where, params = _filter_sql(_param_marker(conn), after_row_id, generation_ids)
    return int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM gallery_items {where}", tuple(params)).scalar_one())


def _iter_items(
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
    last = int(after_row_id)
    # Keyset pagination (id > last ... LIMIT n): bounded memory on every backend without relying
    # on server-side cursors, and each page is one indexed range scan.
    while True:
        part = fetch_tuples(conn, sql, (last, *extra))
        if not part:
            return
        ids, ext, gens_c, labels, blobs = zip(*part)
        yield ids, ext, gens_c, labels, blobs
        if len(part) < chunk:
            return
        last = int(ids[-1])


def fetch_tuples(conn: Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run one query and fetch its rows as the DBAPI's plain tuples (no per-row ``Row`` objects)."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    result = conn.exec_driver_sql(sql, tuple(params))
    try:
        return list(result.cursor.fetchall())
    except dbapi_error as err:
        # Wrapped like SQLAlchemy wraps it, so the unit of work translates it.
        raise exc.DBAPIError.instance(sql, tuple(params), err, dbapi_error) from err
    finally:
        result.close()
