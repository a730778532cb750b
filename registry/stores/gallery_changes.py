"""Following and rewriting the gallery: its change sequence, re-embedding items, and where items come from.

A server loads the gallery once and then follows it with :meth:`GalleryChangeStore.gallery_changes`,
a version cursor over :mod:`registry.stores.gallery_clock`'s sequence: rows added or re-embedded
since, and rows deleted since, read on one snapshot. A backfill lists items with
:meth:`GalleryChangeStore.gallery_sources` (no embeddings), re-reads them from their source, and
replaces their embeddings with :meth:`GalleryChangeStore.reembed_gallery_items`, one transaction per
batch, so each item switches generation atomically and running servers see it as an upsert.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from registry import validation
from registry.db import UnitOfWork
from registry.entities import GalleryChanges, GalleryMatrix, GallerySource
from registry.errors import ConstraintViolation, UnknownGalleryItem
from registry.stores import gallery_clock
from registry.stores.gallery import LOAD_CHUNK, _add_counts, _chunks, _gc_paused, fetch_tuples
from registry.stores.gallery_clock import param_marker
from registry.stores.generations import GenerationStore
from registry.stores.interface import InterfaceStore


class GalleryChangeStore:
    """Reads the gallery's changes and sources; re-embeds items in place."""

    def __init__(self, uow: UnitOfWork, interfaces: InterfaceStore, generations: GenerationStore) -> None:
        """Bind the store to the unit of work, the gallery codec and generation lookup."""
        self._uow = uow
        self._interfaces = interfaces
        self._generations = generations

    def gallery_version(self) -> int:
        """The gallery's current version: the newest version any gallery write took (0: never written).

        A server that loads the gallery with ``load_gallery`` reads this first and follows from it (a
        row committed in between then comes again as an upsert, which is harmless);
        ``gallery_changes(0)`` gives the whole gallery and its version in one read.
        """
        with self._uow.session() as s:
            return gallery_clock.current(s.connection())

    def gallery_changes(self, after_version: int) -> GalleryChanges:
        """What changed after a version: rows written since (upserts) and rows deleted since.

        Versions are taken under a lock and become visible in the order they were taken (see
        :mod:`registry.stores.gallery_clock`), so following ``version`` from call to call never
        misses a write, on PostgreSQL too, where a row-id cursor can. All is read on one snapshot: the
        upserts and deletions are exactly those with a version in ``(after_version, version]``.

        Args:
            after_version: the ``version`` of the previous call (0: everything).

        Returns:
            ``upserts``: the rows added or re-embedded after ``after_version``, with their current
            generation and embedding, ascending row id (fields as ``load_gallery``);
            ``deleted_row_ids``: rows deleted since, ascending, leaving out any row id that exists
            again; ``version``: the cursor for the next call.

        Raises:
            InterfaceError: no interface yet.
        """
        after = int(after_version)
        codec = self._interfaces.codec()
        with self._uow.session(snapshot=True) as s, _gc_paused():
            conn = s.connection()
            ph = param_marker(conn)
            version = gallery_clock.current(conn)
            window = f"version > {ph} AND version <= {ph}"
            total = conn.exec_driver_sql(f"SELECT COUNT(*) FROM gallery_items WHERE {window}", (after, version))
            matrix = np.empty((int(total.scalar_one()), codec.dim), np.float32)
            row_ids: list[int] = []
            ext: list[str] = []
            gens: list[int] = []
            labels: list[str | None] = []
            sql = (
                "SELECT id, external_id, generation_id, label, embedding, version FROM gallery_items "
                f"WHERE {window} ORDER BY version LIMIT {LOAD_CHUNK}"
            )
            last = after
            # Keyset pages over the version index: the cost follows the changes, not the gallery.
            while part := fetch_tuples(conn, sql, (last, version)):
                ids_c, ext_c, gen_c, lab_c, blob_c, ver_c = zip(*part)
                block = codec.decode_raw(blob_c)
                if len(row_ids) + len(block) > len(matrix):  # only if the snapshot was not one
                    matrix = np.concatenate([matrix[: len(row_ids)], np.empty((len(block), codec.dim), np.float32)])
                matrix[len(row_ids) : len(row_ids) + len(block)] = block
                row_ids.extend(ids_c)
                ext.extend(ext_c)
                gens.extend(gen_c)
                labels.extend(lab_c)
                last = int(ver_c[-1])
                if len(part) < LOAD_CHUNK:
                    break
            deleted = conn.exec_driver_sql(
                f"SELECT DISTINCT t.row_id FROM gallery_tombstones t WHERE t.version > {ph} AND t.version <= {ph} "
                "AND NOT EXISTS (SELECT 1 FROM gallery_items g WHERE g.id = t.row_id) ORDER BY t.row_id",
                (after, version),
            ).scalars().all()
        return GalleryChanges(
            upserts=_by_row_id(row_ids, ext, gens, labels, matrix[: len(row_ids)]),
            deleted_row_ids=np.asarray(deleted, dtype=np.int64),
            version=int(version),
        )

    def reembed_gallery_items(
        self, external_ids: Sequence[str], generation: int | str, embeddings: np.ndarray
    ) -> int:
        """Replace the embeddings of existing gallery items with another generation's, in one transaction.

        Each item keeps its row id, external id, label and source; its embedding and generation
        change, it takes a new version (consecutive versions, in ascending row id order), and
        ``gallery_label_counts`` move from its old generation to the new one, all in the same
        transaction: a reader sees every item of the batch switch at once, or none.

        Args:
            external_ids: ``[N]`` items already in the gallery.
            generation: the generation that produced the new embeddings.
            embeddings: ``[N, D]`` floats, validated and stored like ``add_gallery_items``'s.

        Returns:
            The number of items re-embedded (``N``).

        Raises:
            UnknownGalleryItem: an id not in the gallery (nothing is written).
            DuplicateItem: an empty id, or one repeated within the batch.
            EmbeddingError: wrong dimension, NaN/inf, or a row count unlike the ids.
            UnknownGeneration: no such generation.
        """
        ids = validation.external_ids(external_ids)
        # Encode (validate) before taking the write lock, so the lock is held only for the update.
        blobs = dict(zip(ids, self._interfaces.codec().encode(embeddings, rows=len(ids))))
        with self._uow.session(write=True) as s:
            conn = s.connection()
            # The clock's lock first, before anything else this transaction locks.
            first = gallery_clock.lock(conn) + 1 if ids else 0
            gen_id = self._generations.row(s, generation).id
            if not ids:
                return 0
            ph = param_marker(conn)
            found: list[tuple[int, str, int, str | None]] = []
            for chunk in _chunks(ids):
                found.extend(
                    fetch_tuples(
                        conn,
                        "SELECT id, external_id, generation_id, label FROM gallery_items "
                        f"WHERE external_id IN ({', '.join([ph] * len(chunk))})",
                        chunk,
                    )
                )
            missing = sorted(set(ids) - {ext for _, ext, _, _ in found})
            if missing:
                raise UnknownGalleryItem(
                    f"{len(missing)} of the {len(ids)} items to re-embed are not in the gallery: "
                    f"{validation.preview(missing)}; add them as new items, or leave them out "
                    f"(nothing was re-embedded)"
                )
            found.sort(key=lambda row: int(row[0]))
            conn.exec_driver_sql(
                f"UPDATE gallery_items SET embedding = {ph}, generation_id = {ph}, version = {ph} WHERE id = {ph}",
                [(blobs[ext], gen_id, first + i, int(row_id)) for i, (row_id, ext, _, _) in enumerate(found)],
            )
            deltas: Counter[tuple[int, str | None]] = Counter()
            for _, _, old_gen, label in found:
                deltas[(int(old_gen), label)] -= 1
                deltas[(gen_id, label)] += 1
            _add_counts(conn, dict(deltas))
            gallery_clock.advance(conn, first + len(found) - 1)
        return len(found)

    def gallery_sources(
        self, *, generation_ids: Iterable[int] | None = None, after_row_id: int = 0, limit: int | None = None
    ) -> list[GallerySource]:
        """Gallery items without their embeddings, ascending row id: what a backfill re-embeds, and from where.

        Args:
            generation_ids: only items whose embedding is of these generations.
            after_row_id: only items with a larger row id (the last ``row_id`` of the previous page).
            limit: at most this many items (``None``: all).

        Raises:
            ConstraintViolation: a negative ``limit``.
        """
        if limit is not None and int(limit) < 0:
            raise ConstraintViolation(f"the number of gallery sources to list cannot be negative, got {limit}")
        gens = None if generation_ids is None else sorted({int(g) for g in generation_ids})
        wanted = None if limit is None else int(limit)
        out: list[GallerySource] = []
        if gens == [] or wanted == 0:
            return out
        with self._uow.session() as s:
            conn = s.connection()
            ph = param_marker(conn)
            where = f"id > {ph}" + ("" if gens is None else f" AND generation_id IN ({', '.join([ph] * len(gens))})")
            last = int(after_row_id)
            while wanted is None or len(out) < wanted:
                page = LOAD_CHUNK if wanted is None else min(LOAD_CHUNK, wanted - len(out))
                part = fetch_tuples(
                    conn,
                    f"SELECT id, external_id, label, source_uri, generation_id FROM gallery_items "
                    f"WHERE {where} ORDER BY id LIMIT {page}",
                    (last, *(gens or ())),
                )
                out.extend(GallerySource(int(r), e, lab, uri, int(g)) for r, e, lab, uri, g in part)
                if len(part) < page:
                    break
                last = int(part[-1][0])
        return out


def _by_row_id(
    row_ids: list[int], ext: list[str], gens: list[int], labels: list[str | None], matrix: np.ndarray
) -> GalleryMatrix:
    """The rows read in version order as a :class:`GalleryMatrix` in ascending row id order."""
    ids = np.asarray(row_ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    if ids.size and not np.all(order == np.arange(ids.size)):
        ids, matrix = ids[order], matrix[order]
        ext = [ext[i] for i in order]
        gens = [gens[i] for i in order]
        labels = [labels[i] for i in order]
    return GalleryMatrix(
        row_ids=ids,
        external_ids=list(ext),
        generation_ids=np.asarray(gens, dtype=np.int64),
        labels=list(labels),
        matrix=np.ascontiguousarray(matrix),
    )
