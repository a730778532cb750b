"""The row metadata behind :class:`~upgrader.runtime.index.GallerySearch`: what each FAISS id stands for.

FAISS stores one int64 id per vector and nothing else. The index gives every row it adds a *slot*
(the next free int, never reused) and stores that as the id; :class:`RowTable` maps a slot to the
row's external id, generation, label and registry row id by plain array indexing, and keeps which
external ids are live. Kept apart from :mod:`upgrader.runtime.index` so that module holds the FAISS
side (shards, locking, search) and this one the bookkeeping, each readable on its own.

Because a slot is never reused, its metadata never changes once written: turning search positions
into :class:`Hit` lists may happen after the index's lock is released. Writes are not thread-safe on
their own: the index calls :meth:`RowTable.append` and :meth:`RowTable.kill` under its write lock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from upgrader.runtime.kernels import Batch


@dataclass(frozen=True)
class Hit:
    """One search result."""

    external_id: str  # the caller's id of the gallery item
    score: float  # what results are ranked by: cosine similarity, mapped by its generation's score map if any
    generation_id: int  # generation whose model wrote this embedding
    label: str | None  # the item's label, if it has one
    row_id: int  # registry row id of the gallery item


class RowTable:
    """Slot -> metadata of every row ever added, and live external id -> slot."""

    def __init__(self) -> None:
        # Slot arrays: a slot indexes each of them; removed rows keep their metadata (alive False).
        self._row_ids = np.empty(0, dtype=np.int64)
        self._gen_ids = np.empty(0, dtype=np.int64)
        self._external: list[str] = []
        self._labels: list[str | None] = []
        self._alive = np.empty(0, dtype=bool)
        self._slot_of: dict[str, int] = {}  # live external id -> slot
        self._last_row_id = 0

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        """Live rows."""
        return len(self._slot_of)

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._slot_of

    @property
    def last_row_id(self) -> int:
        """Highest registry row id ever appended (0 when none); killing rows does not lower it."""
        return self._last_row_id

    def known(self, external_ids: Iterable[str]) -> list[str]:
        """The ids of ``external_ids`` that are live, in their order."""
        return [e for e in external_ids if e in self._slot_of]

    def slots_of(self, external_ids: Iterable[str]) -> np.ndarray:
        """Slots (int64) of the live ids among ``external_ids``, in their order; unknown ids are skipped."""
        return np.array([self._slot_of[e] for e in external_ids if e in self._slot_of], dtype=np.int64)

    def live_slots_of_rows(self, row_ids: np.ndarray) -> np.ndarray:
        """Slots (int64, ascending) of the live rows whose registry row id is in ``row_ids``."""
        return np.flatnonzero(self._alive & np.isin(self._row_ids, row_ids))

    def generations_of(self, slots: np.ndarray) -> np.ndarray:
        """Generation id of each slot."""
        return self._gen_ids[slots]

    # ------------------------------------------------------------------ writing (the index's write lock held)

    def next_slots(self, n: int) -> np.ndarray:
        """The slots the next :meth:`append` of ``n`` rows takes."""
        start = self._alive.size
        return np.arange(start, start + n, dtype=np.int64)

    def append(self, batch: Batch) -> None:
        """Record a checked batch at :meth:`next_slots` of its length (stored in FAISS already)."""
        ext, rows = batch.external_ids, batch.row_ids
        slots = self.next_slots(len(ext))
        self._row_ids = np.concatenate([self._row_ids, rows])
        self._gen_ids = np.concatenate([self._gen_ids, batch.generation_ids])
        self._alive = np.concatenate([self._alive, np.ones(len(ext), dtype=bool)])
        self._external.extend(ext)
        self._labels.extend(batch.labels)
        self._slot_of.update(zip(ext, slots.tolist()))
        self._last_row_id = max(self._last_row_id, int(rows.max()))

    def kill(self, slots: np.ndarray) -> None:
        """Mark live slots removed (their metadata stays, for hits read before the removal)."""
        self._alive[slots] = False
        for s in slots.tolist():
            del self._slot_of[self._external[s]]

    # ------------------------------------------------------------------ positions -> metadata

    def hits_from(self, scores: np.ndarray, positions: np.ndarray) -> list[list[Hit]]:
        """:class:`Hit` lists from search scores and positions (slots), dropping ``-1`` positions."""
        out: list[list[Hit]] = []
        for srow, prow in zip(scores.tolist(), positions.tolist()):
            out.append([
                Hit(self._external[p], float(s), int(self._gen_ids[p]), self._labels[p],
                    int(self._row_ids[p]))
                for s, p in zip(srow, prow) if p >= 0
            ])
        return out

    def row_ids_at(self, positions: np.ndarray) -> np.ndarray:
        """Registry row ids of positions (``-1`` stays ``-1``)."""
        p = np.asarray(positions, dtype=np.int64)
        return np.where(p >= 0, self._row_ids[np.maximum(p, 0)] if self._row_ids.size else -1, -1)

    def generation_ids_at(self, positions: np.ndarray) -> np.ndarray:
        """Generation ids of positions (``-1`` stays ``-1``)."""
        p = np.asarray(positions, dtype=np.int64)
        return np.where(p >= 0, self._gen_ids[np.maximum(p, 0)] if self._gen_ids.size else -1, -1)

    def external_ids_at(self, positions: np.ndarray) -> list[list[str | None]]:
        """External ids of a [N, k] position array (None for ``-1``)."""
        return [[self._external[p] if p >= 0 else None for p in row]
                for row in np.asarray(positions, dtype=np.int64).tolist()]


__all__ = ["Hit", "RowTable"]
