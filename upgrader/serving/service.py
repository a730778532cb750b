"""The query service behind ``upgrader serve``, usable on its own inside another server.

:class:`QueryService` embeds query images with the *production* generation's ONNX artifact and
searches the whole stored gallery — items written by any number of generations — with one
:class:`~upgrader.runtime.index.GallerySearch` index. It follows the registry while it runs:

* **Promotion without a restart.** A watcher thread polls the ``production`` alias every
  ``poll_seconds`` (one indexed single-row query). When it moves, the new artifact is loaded and
  warmed up *beside* the old one, then a single reference — an immutable :class:`ModelSnapshot`
  (generation, embedder) — is swapped. Every request reads that reference once and uses it from
  decoding to the reply, so requests in flight finish on the generation they started with and new
  requests get the new one; nothing is dropped and the gallery is never re-embedded (compatible
  generations share one embedding space: that is what the gate proved before the alias moved). If
  the new artifact cannot be loaded (missing file, checksum mismatch) the service keeps serving the
  old generation and reports the error in :meth:`QueryService.status`. If the alias disagrees with
  its append-only history (``AliasTampered``: the database was edited outside the registry), it is
  not followed and every request is refused (:class:`~upgrader.serving.errors.ServingRefused`)
  until the two agree again.
* **Gallery sync, incremental.** New gallery rows — added through :meth:`QueryService.add` or by
  another process (``upgrader gallery add``) — are pulled with
  ``registry.load_gallery(after_row_id=index.last_row_id)`` on each tick (and after each ``add``, so
  a caller reads its own writes; ``sync_on_search=True`` also pulls before every search). Row ids
  grow in commit order on SQLite (writers are serialised), so the cursor never skips a row there.
* **Deletions** (``registry.delete_gallery_items``) are not visible to a cursor. Every
  ``recount_seconds`` the tick compares the registry's item count with the index and, when they
  differ, rebuilds the index from the registry off to the side and swaps it in (searches keep using
  the old index until then). The same recount repairs rows a cursor could miss on PostgreSQL, where
  concurrent transactions may commit out of row-id order. :meth:`QueryService.rebuild` forces one.

Server side: numpy, onnxruntime, Pillow, FAISS and the registry — never torch (docs/design.md §4).

Example::

    with QueryService("./ws") as svc:
        result = svc.search(images_uint8_nhwc, k=5)      # or a list of encoded image files (bytes)
        for hit in result.hits[0]:
            print(hit.external_id, hit.score, hit.generation_id)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from registry.errors import AliasTampered

from upgrader.core.errors import InterfaceMismatch, InvalidRequest, NoProduction
from upgrader.runtime.index import GallerySearch
from upgrader.services.registration import open_embedder
from upgrader.services.workspace import Workspace, open_workspace
from upgrader.serving.config import ServingConfig
from upgrader.serving.decoding import prepare_images
from upgrader.serving.errors import ServingRefused
from upgrader.serving.results import AddResult, EmbedResult, ModelSnapshot, SearchResult, ServiceStatus

log = logging.getLogger("upgrader.serving.service")

#: Gallery rows added to the index per write-lock hold while syncing, so searches are never held
#: back for long by a large backlog (FAISS flat adds ~1M rows/s; HNSW far fewer).
SYNC_CHUNK = 20_000


class QueryService:
    """Embeds and searches with the production generation, following promotions and gallery growth.

    Thread-safe: any number of threads may call :meth:`search`, :meth:`embed` and :meth:`add`
    while the watcher reloads and syncs.

    Args:
        home: workspace folder (None: ``$UPGRADER_HOME`` or ``./.upgrader``). Ignored when
            ``workspace`` is given.
        config: limits and behaviour; see :class:`ServingConfig`.
        workspace: an open workspace to use instead of opening ``home`` (the caller closes it).
        clock: monotonic seconds, read to decide when a recount is due (injectable for tests).

    Raises:
        WorkspaceError / RegistryError: no usable workspace. ArtifactError: the production artifact
        is missing or was modified. A workspace without a production generation is accepted: the
        service answers :class:`NoProduction` until something is promoted.
    """

    def __init__(self, home: str | Path | None = None, config: ServingConfig | None = None, *,
                 workspace: Workspace | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or ServingConfig()
        self._clock = clock  # when the next recount is due; tests pass a clock they advance by hand
        self._owns_ws = workspace is None
        self._ws = workspace if workspace is not None else open_workspace(home)
        try:
            self._dim = self._ws.registry.interface().embedding_dim
            self._snapshot: ModelSnapshot | None = None
            self._production_alias: int | None = None
            self._swap_lock = threading.Lock()  # one artifact load at a time
            self._sync_lock = threading.Lock()  # one gallery sync / rebuild at a time (cursor consistency)
            self._names: dict[int, str] = {}
            self._reloads = 0
            self._rebuilds = 0
            self._last_poll_at: datetime | None = None
            self._last_recount = self._clock()
            self._last_error: str | None = None
            self._refused: str | None = None  # why requests are refused (a tampered alias), else None
            self._started_at = datetime.now(timezone.utc)
            self._index = self._new_index()
            self.reload()
            self.sync()
        except BaseException:
            if self._owns_ws:
                self._ws.close()
            raise
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if self.config.poll_seconds > 0:
            self._watcher = threading.Thread(target=self._watch, name="upgrader-serving-watch", daemon=True)
            self._watcher.start()

    # ------------------------------------------------------------------ lifecycle

    @property
    def workspace(self) -> Workspace:
        """The workspace the service reads."""
        return self._ws

    def close(self) -> None:
        """Stop the watcher and release the registry (if the service opened it). Idempotent."""
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=max(5.0, 2 * self.config.poll_seconds))
        self._watcher = None
        if self._owns_ws:
            self._ws.close()
            self._owns_ws = False

    def __enter__(self) -> QueryService:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _watch(self) -> None:
        # Bounded by the stop event: close() ends it within one period.
        while not self._stop.wait(self.config.poll_seconds):
            self.refresh()

    # ------------------------------------------------------------------ following the registry

    def snapshot(self) -> ModelSnapshot:
        """The (generation, embedder) new requests use. Read it once per request.

        Raises:
            NoProduction: nothing has been promoted yet.
            ServingRefused: the production alias disagrees with its history (see :meth:`reload`).
        """
        if self._refused is not None:
            raise ServingRefused(f"the service answers no request: {self._refused}")
        snap = self._snapshot
        if snap is None:
            raise NoProduction("no production generation yet; promote one first", subject="production")
        return snap

    def reload(self) -> bool:
        """Swap to the generation the ``production`` alias names, if it moved. Returns True on a swap.

        The new artifact is loaded (checksum verified) and run once before the swap, so the first
        request on it pays no session start-up; requests holding the old snapshot finish on it.

        An alias that disagrees with its history (edited behind the registry's back) is not followed,
        and until it agrees again every request is refused (:class:`ServingRefused`): the old
        generation stays loaded but unused, since the history no longer says what production is.

        Raises:
            AliasTampered: the alias disagrees with its history (at start-up: the service is not built).
            ArtifactError: the new artifact is missing or modified (the old generation keeps serving).
            InterfaceMismatch: its embedding dimension differs from the workspace's.
        """
        with self._swap_lock:
            try:
                prod = self._ws.registry.get_alias()
            except AliasTampered as exc:
                self._refused = str(exc)
                log.error("refusing requests: %s", exc)
                raise
            if self._refused is not None:
                log.info("the production alias agrees with its history again: serving")
            self._refused = None
            self._production_alias = prod
            current = self._snapshot
            if prod is None or (current is not None and current.generation.id == prod):
                return False
            gen = self._ws.registry.get_generation(prod)
            embedder = open_embedder(self._ws, gen, threads=self.config.embed_threads)
            if embedder.embedding_dim != self._dim:
                raise InterfaceMismatch(
                    f"generation {gen.name} embeds to {embedder.embedding_dim} dims, the gallery holds {self._dim}"
                )
            embedder.embed(np.zeros((1, *embedder.image_shape), dtype=np.uint8))  # warm-up
            self._names[gen.id] = gen.name
            # One reference assignment: atomic for every reader.
            self._snapshot = ModelSnapshot(gen, embedder, datetime.now(timezone.utc))
            self._reloads += 1 if current is not None else 0
            log.info("serving generation %s (id %d)%s", gen.name, gen.id,
                     f", was {current.generation.name}" if current is not None else "")
            return True

    def sync(self) -> int:
        """Add gallery rows written since the last sync (by anyone) to the index. Returns how many.

        Rows whose external id the index already holds (deleted and re-added under the same id)
        cannot be appended; the index is rebuilt instead.
        """
        with self._sync_lock:
            index = self._index
            new = self._ws.registry.load_gallery(after_row_id=index.last_row_id)
            n = len(new)
            if n == 0:
                return 0
            if any(e in index for e in new.external_ids):
                self._rebuild_locked()
                return n
            for s in range(0, n, SYNC_CHUNK):
                e = min(n, s + SYNC_CHUNK)
                index.add(new.row_ids[s:e], new.external_ids[s:e], new.generation_ids[s:e],
                          new.labels[s:e], new.matrix[s:e])
            return n

    def rebuild(self) -> int:
        """Rebuild the index from the whole registry gallery and swap it in. Returns its size.

        Searches keep using the old index until the swap; syncs and adds wait for it.
        """
        with self._sync_lock:
            return self._rebuild_locked()

    def _rebuild_locked(self) -> int:
        fresh = self._new_index()
        gallery = self._ws.registry.load_gallery()
        for s in range(0, len(gallery), SYNC_CHUNK):
            e = min(len(gallery), s + SYNC_CHUNK)
            fresh.add(gallery.row_ids[s:e], gallery.external_ids[s:e], gallery.generation_ids[s:e],
                      gallery.labels[s:e], gallery.matrix[s:e])
        self._index = fresh
        self._rebuilds += 1
        log.info("gallery index rebuilt: %d items", len(fresh))
        return len(fresh)

    def refresh(self, *, recount: bool | None = None) -> None:
        """One watcher tick: follow the alias, pull new gallery rows, and now and then recount.

        Args:
            recount: True compares the registry's item count with the index now, False skips it,
                None (the watcher's choice) recounts when ``recount_seconds`` have passed since the
                last one.

        Never raises: a failure is logged and kept in :attr:`ServiceStatus.last_error`, and the
        service keeps serving what it has.
        """
        try:
            self.reload()
            due = recount if recount is not None else (
                self.config.recount_seconds > 0 and self._clock() - self._last_recount >= self.config.recount_seconds)
            # Count before syncing: the sync then sees at least these rows, so after it the index
            # can only hold fewer (a skipped row) or more (a deletion) when the two really differ.
            before = sum(self._ws.registry.gallery_counts().values()) if due else 0
            self.sync()
            if due:
                self._last_recount = self._clock()
                if len(self._index) != before:
                    log.info("gallery count %d differs from the index (%d): rebuilding", before, len(self._index))
                    self.rebuild()
            self._last_error = None
        except Exception as exc:  # the watcher must survive a bad tick (e.g. a broken artifact)
            self._last_error = f"{exc.__class__.__name__}: {exc}"
            log.warning("serving refresh failed: %s", self._last_error)
        finally:
            self._last_poll_at = datetime.now(timezone.utc)

    # ------------------------------------------------------------------ requests

    def search(self, images: np.ndarray | Sequence[bytes], k: int = 10) -> SearchResult:
        """Embed query images with production and return the top-k gallery items for each.

        Args:
            images: uint8 ``[N, H, W, C]`` of the production artifact's shape, or a sequence of
                encoded image files (bytes; decoded and resized, see
                :func:`upgrader.runtime.images.decode_image`).
            k: results per query, 1..``max_k``; an empty gallery gives empty lists.

        Raises:
            InvalidRequest (BadImage, ImageTooLarge, PixelBudgetExceeded): bad input. NoProduction: nothing promoted.
        """
        snap = self.snapshot()
        self._check_k(k)
        batch = self._prepare(images, snap)
        if self.config.sync_on_search:
            self._try_sync()
        queries = snap.embedder.embed(batch, self.config.batch_size)  # [N, D]
        return SearchResult(snap.generation, self._index.search(queries, int(k)))

    def embed(self, images: np.ndarray | Sequence[bytes]) -> EmbedResult:
        """Embed images with production (same inputs as :meth:`search`)."""
        snap = self.snapshot()
        batch = self._prepare(images, snap)
        return EmbedResult(snap.generation, snap.embedder.embed(batch, self.config.batch_size))

    def add(self, images: np.ndarray | Sequence[bytes], ids: Sequence[str],
            labels: Sequence[str | None] | None = None) -> AddResult:
        """Embed images with production and store them in the gallery (all or nothing), then index them.

        Raises:
            InvalidRequest: bad images, ids or labels. registry.errors.DuplicateItem: an id exists.
        """
        snap = self.snapshot()
        ids = list(ids)
        batch = self._prepare(images, snap)
        n = batch.shape[0]
        if len(ids) != n:
            raise InvalidRequest(f"{n} images but {len(ids)} ids; give one id per image")
        bad = [i for i in ids if not isinstance(i, str) or not i.strip() or len(i) > self.config.max_id_length]
        if bad:
            raise InvalidRequest(f"ids must be non-empty strings of at most {self.config.max_id_length} characters, got {bad[0]!r}")
        if len(set(ids)) != n:
            raise InvalidRequest("ids repeat within the request; give each image its own id")
        if labels is not None:
            labels = list(labels)
            if len(labels) != n:
                raise InvalidRequest(f"{n} images but {len(labels)} labels; give one label (or null) per image")
            longest = self.config.max_label_length
            if any(lbl is not None and (not isinstance(lbl, str) or len(lbl) > longest) for lbl in labels):
                raise InvalidRequest(f"labels must be strings of at most {longest} characters, or null")
        feats = snap.embedder.embed(batch, self.config.batch_size)  # [N, D]
        # Recorded as written by the snapshot's generation: the one that really embedded them, even
        # if the alias moved meanwhile.
        self._ws.registry.add_gallery_items(snap.generation.id, ids, feats, labels=labels)
        self.sync()
        return AddResult(snap.generation, n, len(self._index))

    # ------------------------------------------------------------------ introspection

    def generation_name(self, gen_id: int) -> str:
        """Name of a generation id (cached; unknown ids read the registry once)."""
        name = self._names.get(int(gen_id))
        if name is None:
            for g in self._ws.registry.list_generations():
                self._names[g.id] = g.name
            name = self._names.get(int(gen_id), str(gen_id))
        return name

    def status(self) -> ServiceStatus:
        """What the service serves and how its index stands."""
        snap = self._snapshot
        index = self._index
        return ServiceStatus(
            serving=snap.generation if snap else None,
            production_alias=self._production_alias,
            serving_since=snap.loaded_at if snap else None,
            gallery_items=len(index),
            items_by_generation=index.generation_counts(),
            last_row_id=index.last_row_id,
            index=self.config.index,
            reloads=self._reloads,
            rebuilds=self._rebuilds,
            last_poll_at=self._last_poll_at,
            last_error=self._last_error,
            watching=self._watcher is not None and self._watcher.is_alive(),
            refused=self._refused,
            started_at=self._started_at,
        )

    # ------------------------------------------------------------------ helpers

    def _new_index(self) -> GallerySearch:
        return GallerySearch(self._dim, index=self.config.index, threads=self.config.search_threads)

    def _try_sync(self) -> None:
        # A search never waits behind another thread's sync or rebuild: it serves what is indexed.
        if self._sync_lock.locked():
            return
        self.sync()

    def _check_k(self, k: Any) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= self.config.max_k:
            raise InvalidRequest(f"k must be an integer from 1 to {self.config.max_k}, got {k!r}")

    def _prepare(self, images: np.ndarray | Sequence[bytes], snap: ModelSnapshot) -> np.ndarray:
        """Images as uint8 [N, H, W, C] of the snapshot's artifact, within the limits."""
        return prepare_images(images, snap.image_shape, snap.generation.name, self.config)


__all__ = ["QueryService"]
