"""How a query service keeps its gallery index equal to the registry's gallery: the change sequence.

:class:`GalleryMirror` loads the whole gallery once (``registry.gallery_changes(0)``: every row and
the version it was read at, on one snapshot) and then follows ``registry.gallery_changes(version)``:
rows added or re-embedded since (an upsert: a re-embedded item arrives with its new generation and
embedding under the same row id) and rows deleted since. Versions are taken under a lock and become
visible in the order they were taken on SQLite and PostgreSQL alike (``registry.stores.gallery_clock``),
so following them misses nothing: no row committed out of row-id order, no re-embed, no deletion. The
service needs no recount of the gallery any more (the row-id cursor it replaced saw neither deletions
nor re-embeds, and could skip a row on PostgreSQL).

Each change is applied by :meth:`GallerySearch.apply_changes`, which swaps a re-embedded item's old
vector for its new one under one hold of the index's write lock: a search finds the item before or
after its switch, never missing. A large backlog is applied in chunks of :data:`SYNC_CHUNK` rows so
searches are never held back for long; a chunk never splits one item's switch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from registry import GalleryMatrix, Registry

from upgrader.runtime.index import GallerySearch

log = logging.getLogger("upgrader.serving.following")

#: Gallery rows added to the index per write-lock hold while syncing, so searches are never held
#: back for long by a large backlog (FAISS flat adds ~1M rows/s; HNSW far fewer).
SYNC_CHUNK = 20_000


def _rows(m: GalleryMatrix, start: int, end: int) -> GalleryMatrix:
    """Rows ``start:end`` of a gallery matrix."""
    return GalleryMatrix(m.row_ids[start:end], m.external_ids[start:end], m.generation_ids[start:end],
                         m.labels[start:end], m.matrix[start:end])


class GalleryMirror:
    """A gallery index that follows the registry's change sequence.

    Thread-safe: one sync or rebuild runs at a time; searches read :attr:`index` at any moment.

    Args:
        registry: the registry whose gallery is mirrored.
        new_index: makes an empty index (the service's kind and threads).
    """

    def __init__(self, registry: Registry, new_index: Callable[[], GallerySearch]) -> None:
        self._registry = registry
        self._new_index = new_index
        self._lock = threading.Lock()  # one sync / rebuild at a time: the version cursor stays consistent
        self._index = new_index()
        self._version = 0
        self.rebuilds = 0  # explicit rebuilds since start

    @property
    def index(self) -> GallerySearch:
        """The index searches use now (read it once per search)."""
        return self._index

    @property
    def version(self) -> int:
        """The gallery version the index reflects: every change up to it is applied."""
        return self._version

    @property
    def busy(self) -> bool:
        """Whether a sync or rebuild is running (a search does not wait for it)."""
        return self._lock.locked()

    def sync(self) -> int:
        """Apply the gallery's changes since :attr:`version` to the index. Returns how many rows changed.

        Raises:
            RegistryError: the registry could not be read (nothing is applied).
        """
        with self._lock:
            changes = self._registry.gallery_changes(self._version)
            up, gone = changes.upserts, changes.deleted_row_ids
            index = self._index
            if len(up) == 0 and gone.size:
                index.apply_changes(gone, up)
            for s in range(0, len(up), SYNC_CHUNK):
                # Deletions go with the first chunk; a re-embedded row's removal goes with its upsert.
                index.apply_changes(gone if s == 0 else gone[:0], _rows(up, s, min(len(up), s + SYNC_CHUNK)))
            self._version = changes.version
            return len(changes)

    def load(self) -> int:
        """Load the whole gallery into a fresh index and swap it in. Returns its size.

        Searches keep using the old index until the swap; syncs wait for it.

        Raises:
            RegistryError: the registry could not be read (the old index stays).
        """
        with self._lock:
            fresh = self._new_index()
            everything = self._registry.gallery_changes(0)  # every row, and the version they are at
            rows = everything.upserts
            for s in range(0, len(rows), SYNC_CHUNK):
                fresh.apply_changes(np.empty(0, np.int64), _rows(rows, s, min(len(rows), s + SYNC_CHUNK)))
            self._index, self._version = fresh, everything.version
            log.info("gallery index loaded: %d items at version %d", len(fresh), everything.version)
            return len(fresh)

    def rebuild(self) -> int:
        """:meth:`load` again, counted in :attr:`rebuilds` (the change sequence makes it a repair, never a need)."""
        size = self.load()
        self.rebuilds += 1
        return size


__all__ = ["SYNC_CHUNK", "GalleryMirror"]
