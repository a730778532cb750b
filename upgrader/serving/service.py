"""The query service behind ``upgrader serve``, usable on its own inside another server.

:class:`QueryService` embeds query images with the *production* generation's ONNX artifact and
searches the whole stored gallery — items written by any number of generations — with one
:class:`~upgrader.runtime.index.GallerySearch` index. It follows the registry while it runs:

* **Promotion without a restart.** A watcher thread polls the ``production`` alias every
  ``poll_seconds`` (the alias, the calibration its newest move cites, the alias again: three small
  indexed reads). When it moves, the new artifact is loaded and warmed up *beside* the old one, then
  a single reference — an immutable :class:`ModelSnapshot` (generation, embedder, calibration) — is
  swapped. Every request reads that reference once and uses it from
  decoding to the reply, so requests in flight finish on the generation they started with and new
  requests get the new one; nothing is dropped and the gallery is never re-embedded (compatible
  generations share one embedding space: that is what the gate proved before the alias moved). If
  the new artifact cannot be loaded (missing file, checksum mismatch) the service keeps serving the
  old generation and reports the error in :meth:`QueryService.status`. If the alias disagrees with
  its append-only history (``AliasTampered``: the database was edited outside the registry), it is
  not followed and every request is refused (:class:`~upgrader.serving.errors.ServingRefused`)
  until the two agree again.
* **Score calibration, with the generation.** A generation's queries score its own items higher than
  equally good items of older generations; the gate fits one score map per gallery generation and
  stores it with the report the promotion cites (``Registry.serving_calibration``). The snapshot
  holds the calibration with the embedder, read together with the alias
  (:func:`upgrader.services.gallery.serving_calibration`), so a request never pairs the new
  embedder with the old calibration. Each search maps every item's score by its generation's map
  before the top-k is taken (:meth:`GallerySearch.search`); order within a generation never changes.
  ``ServingConfig(calibrate=False)`` ranks by raw cosine, for comparison.
* **Gallery sync by the change sequence.** New, re-embedded and deleted gallery rows — written
  through :meth:`QueryService.add` or by another process (``upgrader gallery add``, a backfill,
  ``gallery rm``) — are pulled with ``registry.gallery_changes(version)`` on each tick (and after each
  ``add``, so a caller reads its own writes; ``sync_on_search=True`` also pulls before every search).
  See :mod:`upgrader.serving.following`: a re-embedded item changes generation in place, a deleted
  one disappears, and no recount is needed. :meth:`QueryService.rebuild` reloads everything on demand.

Server side: numpy, onnxruntime, Pillow, FAISS and the registry — never torch (docs/design.md §4).

Example::

    with QueryService("./ws") as svc:
        result = svc.search(images_uint8_nhwc, k=5)      # or a list of encoded image files (bytes)
        for hit in result.hits[0]:
            print(hit.external_id, hit.score, hit.generation_id)
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from registry.errors import AliasTampered

from upgrader.compat.score_calibration import Calibration
from upgrader.core.errors import InterfaceMismatch, InvalidRequest, NoProduction
from upgrader.runtime.index import GallerySearch
from upgrader.services.gallery import score_maps, serving_calibration
from upgrader.services.registration import open_embedder
from upgrader.services.workspace import Workspace, open_workspace
from upgrader.serving.config import ServingConfig
from upgrader.serving.decoding import prepare_images
from upgrader.serving.errors import ServingRefused
from upgrader.serving.following import GalleryMirror
from upgrader.serving.results import AddResult, EmbedResult, ModelSnapshot, SearchResult, ServiceStatus

log = logging.getLogger("upgrader.serving.service")


class QueryService:
    """Embeds and searches with the production generation, following promotions and the gallery.

    Thread-safe: any number of threads may call :meth:`search`, :meth:`embed` and :meth:`add`
    while the watcher reloads and syncs.

    Args:
        home: workspace folder (None: ``$UPGRADER_HOME`` or ``./.upgrader``). Ignored when
            ``workspace`` is given.
        config: limits and behaviour; see :class:`ServingConfig`.
        workspace: an open workspace to use instead of opening ``home`` (the caller closes it).

    Raises:
        WorkspaceError / RegistryError: no usable workspace. ArtifactError: the production artifact
        is missing or was modified. CalibrationUnusable: the calibration stored for production cannot
        be applied (serve with ``calibrate=False`` to rank by raw cosine). A workspace without a
        production generation is accepted: the service answers :class:`NoProduction` until something
        is promoted.
    """

    def __init__(self, home: str | Path | None = None, config: ServingConfig | None = None, *,
                 workspace: Workspace | None = None) -> None:
        self.config = config or ServingConfig()
        self._owns_ws = workspace is None
        self._ws = workspace if workspace is not None else open_workspace(home)
        try:
            self._dim = self._ws.registry.interface().embedding_dim
            self._snapshot: ModelSnapshot | None = None
            self._production_alias: int | None = None
            self._swap_lock = threading.Lock()  # one artifact load at a time
            self._names: dict[int, str] = {}
            self._reloads = 0
            self._last_poll_at: datetime | None = None
            self._last_error: str | None = None
            self._refused: str | None = None  # why requests are refused (a tampered alias), else None
            self._started_at = datetime.now(timezone.utc)
            self._gallery = GalleryMirror(self._ws.registry, self._new_index)
            self.reload()
            self._gallery.load()
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
        """Swap to the generation the ``production`` alias names, with its calibration, if either changed.

        Returns True on a swap. The new artifact is loaded (checksum verified) and run once before
        the swap, so the first request on it pays no session start-up; requests holding the old
        snapshot finish on it. The calibration is read together with the alias and swapped in the
        same snapshot as the embedder; the same generation promoted again with a new calibration
        swaps the calibration alone.

        An alias that disagrees with its history (edited behind the registry's back) is not followed,
        and until it agrees again every request is refused (:class:`ServingRefused`): the old
        generation stays loaded but unused, since the history no longer says what production is.

        Raises:
            AliasTampered: the alias disagrees with its history (at start-up: the service is not built).
            ArtifactError: the new artifact is missing or modified (the old generation keeps serving).
            CalibrationUnusable: the new calibration cannot be applied (the old snapshot keeps serving).
            InterfaceMismatch: its embedding dimension differs from the workspace's.
        """
        with self._swap_lock:
            try:
                if self.config.calibrate:
                    prod, cal = serving_calibration(self._ws.registry)
                else:
                    prod, cal = self._ws.registry.get_alias(), None
            except AliasTampered as exc:
                self._refused = str(exc)
                log.error("refusing requests: %s", exc)
                raise
            if self._refused is not None:
                log.info("the production alias agrees with its history again: serving")
            self._refused = None
            self._production_alias = prod
            current = self._snapshot
            if prod is None:
                return False
            if current is not None and current.generation.id == prod:
                if current.calibration == cal:
                    return False
                self._snapshot = dataclasses.replace(current, calibration=cal, score_maps=score_maps(cal))
                log.info("generation %s: calibration %s", current.generation.name, _describe(cal))
                return True
            gen = self._ws.registry.get_generation(prod)
            embedder = open_embedder(self._ws, gen, threads=self.config.embed_threads)
            if embedder.embedding_dim != self._dim:
                raise InterfaceMismatch(
                    f"generation {gen.name} embeds to {embedder.embedding_dim} dims, the gallery holds {self._dim}"
                )
            embedder.embed(np.zeros((1, *embedder.image_shape), dtype=np.uint8))  # warm-up
            self._names[gen.id] = gen.name
            # One reference assignment: atomic for every reader; embedder and calibration travel together.
            self._snapshot = ModelSnapshot(gen, embedder, datetime.now(timezone.utc), cal, score_maps(cal))
            self._reloads += 1 if current is not None else 0
            log.info("serving generation %s (id %d), calibration %s%s", gen.name, gen.id, _describe(cal),
                     f", was {current.generation.name}" if current is not None else "")
            return True

    def sync(self) -> int:
        """Apply the gallery's changes since the last sync (anyone's writes) to the index. Returns how
        many rows were added, re-embedded or deleted."""
        return self._gallery.sync()

    def rebuild(self) -> int:
        """Reload the whole gallery into a fresh index and swap it in. Returns its size.

        Searches keep using the old index until the swap; syncs and adds wait for it. Never needed to
        follow the registry (the change sequence is complete); a repair after the database was
        edited outside it.
        """
        return self._gallery.rebuild()

    def refresh(self) -> None:
        """One watcher tick: follow the alias (and its calibration), then apply the gallery's changes.

        Never raises: a failure is logged and kept in :attr:`ServiceStatus.last_error`, and the
        service keeps serving what it has.
        """
        try:
            self.reload()
            self.sync()
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
        # The snapshot's score maps: the calibration fitted for the generation that embedded these queries.
        hits = self._gallery.index.search(queries, int(k), snap.score_maps)
        return SearchResult(snap.generation, hits, snap.calibration)

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
        return AddResult(snap.generation, n, len(self._gallery.index))

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
        """What the service serves, how it ranks, and how its index stands."""
        snap = self._snapshot
        index = self._gallery.index
        return ServiceStatus(
            serving=snap.generation if snap else None,
            production_alias=self._production_alias,
            serving_since=snap.loaded_at if snap else None,
            gallery_items=len(index),
            items_by_generation=index.generation_counts(),
            last_row_id=index.last_row_id,
            index=self.config.index,
            reloads=self._reloads,
            rebuilds=self._gallery.rebuilds,
            last_poll_at=self._last_poll_at,
            last_error=self._last_error,
            watching=self._watcher is not None and self._watcher.is_alive(),
            refused=self._refused,
            started_at=self._started_at,
            gallery_version=self._gallery.version,
            calibrate=self.config.calibrate,
            calibration=snap.calibration if snap else None,
        )

    # ------------------------------------------------------------------ helpers

    def _new_index(self) -> GallerySearch:
        return GallerySearch(self._dim, index=self.config.index, threads=self.config.search_threads)

    def _try_sync(self) -> None:
        # A search never waits behind another thread's sync or rebuild: it serves what is indexed.
        if self._gallery.busy:
            return
        self.sync()

    def _check_k(self, k: Any) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= self.config.max_k:
            raise InvalidRequest(f"k must be an integer from 1 to {self.config.max_k}, got {k!r}")

    def _prepare(self, images: np.ndarray | Sequence[bytes], snap: ModelSnapshot) -> np.ndarray:
        """Images as uint8 [N, H, W, C] of the snapshot's artifact, within the limits."""
        return prepare_images(images, snap.image_shape, snap.generation.name, self.config)


def _describe(cal: Calibration | None) -> str:
    """A log line's words for a calibration."""
    if cal is None:
        return "none (raw cosine)"
    return f"{len(cal.maps)} score maps for queries of generation {cal.query_gen}"


__all__ = ["QueryService"]
