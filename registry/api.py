"""The registry facade: one :class:`Registry` per workspace, frozen dataclass entities out.

Every public method is one unit of work (one short transaction); the registry holds one engine and
no open session between calls, so one instance may be shared by several threads. The work itself is
done by one store per concern (:mod:`registry.stores`); this class opens the database and hands each
call to its store.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from sqlalchemy.engine import make_url

from registry import migrations
from registry.db import UnitOfWork, is_sqlite, make_engine
from registry.entities import (
    PRODUCTION,
    AliasMove,
    Evaluation,
    GalleryChanges,
    GalleryMatrix,
    GallerySource,
    GateReport,
    Generation,
    Interface,
    NewGeneration,
    ProbeSet,
)
from registry.location import missing_workspace, resolve, sqlite_file
from registry.stores.aliases import AliasStore
from registry.stores.gallery import GalleryStore
from registry.stores.gallery_changes import GalleryChangeStore
from registry.stores.generations import GenerationStore
from registry.stores.interface import InterfaceStore
from registry.stores.probes import ProbeStore
from registry.stores.reports import ReportStore


class Registry:
    """A workspace's registry: interface, probe set, generations, gate, aliases and gallery.

    Open one with :meth:`open`; close it with :meth:`close` or use it as a context manager. Each
    method's full contract (arguments, errors) is documented on the store that implements it.
    """

    def __init__(self, url: str, home: Path | None, where: str) -> None:
        """Wrap an already migrated and checked database; use :meth:`open` instead."""
        self._url = url
        self._home = home
        self._where = where
        self._uow = UnitOfWork(make_engine(url))
        self._interfaces = InterfaceStore(self._uow)
        self._generations = GenerationStore(self._uow, self._interfaces)
        self._probes = ProbeStore(self._uow, self._interfaces, self._generations)
        self._reports = ReportStore(self._uow, self._generations)
        self._aliases = AliasStore(self._uow, self._generations)
        self._gallery = GalleryStore(self._uow, self._interfaces, self._generations)
        self._changes = GalleryChangeStore(self._uow, self._interfaces, self._generations)

    # Opening and closing.

    @classmethod
    def open(cls, location: str | os.PathLike[str] | None = None, *, create: bool = False) -> Registry:
        """Open (or create) the registry of a workspace.

        Args:
            location: a workspace directory (SQLite file ``DIR/registry.db``), a ``registry.db`` file,
                or an SQLAlchemy URL (anything containing ``://``). ``None``: ``$UPGRADER_HOME``, else
                ``./.upgrader``.
            create: create the directory and database if missing and migrate to head (an existing
                older schema is migrated too).

        Returns:
            The open registry.

        Raises:
            WorkspaceNotFound: nothing there and ``create`` is false.
            SchemaOutOfDate: the schema is older than this code (:meth:`upgrade` migrates it).
            SchemaFromFuture: the schema is newer than this code.
        """
        url, home, where = resolve(location)
        db = sqlite_file(url)
        if db is not None and (not db.exists() or db.stat().st_size == 0):
            if not create:
                raise missing_workspace(where)
            db.parent.mkdir(parents=True, exist_ok=True)
        if create:
            migrations.upgrade(url)
        reg = cls(url, home, where)
        try:
            migrations.check_schema(reg._uow.engine, where)
        except BaseException:
            reg.close()
            raise
        return reg

    @classmethod
    def upgrade(cls, location: str | os.PathLike[str] | None = None) -> str:
        """Migrate an existing workspace's schema to head.

        Args:
            location: as for :meth:`open`.

        Returns:
            The revision the database is at afterwards.

        Raises:
            WorkspaceNotFound: no SQLite registry at that directory.
            SchemaFromFuture: the database is newer than this code.
        """
        url, _home, where = resolve(location)
        parsed = make_url(url)
        if is_sqlite(parsed) and parsed.database and not Path(parsed.database).exists():
            raise missing_workspace(where)
        return migrations.upgrade(url)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the database (password included, so it can be reopened)."""
        return self._url

    @property
    def home(self) -> Path | None:
        """The workspace directory, or ``None`` when opened by URL."""
        return self._home

    def close(self) -> None:
        """Release every database connection. The object can still reconnect if used again."""
        self._uow.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self._where!r})"

    # Interface and label map: registry.stores.interface.

    def set_interface(self, num_classes: int, *, embedding_dtype: str = "float32") -> Interface:
        """Fix the workspace interface (K vertices, embedding dim K-1, gallery dtype); allowed once."""
        return self._interfaces.set_interface(num_classes, embedding_dtype=embedding_dtype)

    def interface(self) -> Interface:
        """The workspace interface; raises ``InterfaceError`` before it is set."""
        return self._interfaces.interface()

    def assign_classes(self, names: Iterable[str]) -> dict[str, int]:
        """Give each class name a vertex (known names keep theirs); returns ``{name: vertex}``."""
        return self._interfaces.assign_classes(names)

    # Probe set and probe embeddings: registry.stores.probes.

    def add_probe_items(
        self,
        split: str,
        images: np.ndarray,
        class_names: Sequence[str],
        source_uris: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Register probe images (uint8 NHWC) with their class names; returns their int64 ids."""
        return self._probes.add_probe_items(split, images, class_names, source_uris)

    def probe_set(self, split: str) -> ProbeSet:
        """One split of the probe set, images included, in ascending id order."""
        return self._probes.probe_set(split)

    def probe_counts(self) -> dict[str, int]:
        """Number of probe items per split (both splits always present)."""
        return self._probes.probe_counts()

    def put_probe_embeddings(
        self,
        gen_id: int | str,
        split: str,
        item_ids: Sequence[int] | np.ndarray,
        embeddings: np.ndarray,
        *,
        artifact_sha256: str | None = None,
    ) -> None:
        """Store a generation's float32 embeddings of one probe split, replacing what it had.

        They are bound to ``artifact_sha256`` (``None``: the generation's current artifact).
        """
        self._probes.put_probe_embeddings(gen_id, split, item_ids, embeddings, artifact_sha256=artifact_sha256)

    def get_probe_embeddings(self, gen_id: int | str, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A generation's probe embeddings of its current artifact: (int64 item ids, float32 ``[N, D]``).

        Raises ``ProbeSetError`` when they are missing or stale (of an earlier artifact).
        """
        return self._probes.get_probe_embeddings(gen_id, split)

    def has_probe_embeddings(self, gen_id: int | str) -> bool:
        """Whether both splits are embedded by the current artifact, one row per probe item."""
        return self._probes.has_probe_embeddings(gen_id)

    # Generations: registry.stores.generations.

    def add_generation(
        self,
        new: NewGeneration,
        *,
        probe_embeddings: Mapping[str, tuple[Sequence[int] | np.ndarray, np.ndarray]] | None = None,
    ) -> Generation:
        """Register a generation (status ``candidate``), with its probe embeddings in the same transaction.

        ``probe_embeddings`` (``{split: (item ids, embeddings)}``) are bound to ``new.onnx_sha256``;
        if any split is refused, nothing is written. Names follow
        :func:`registry.validation.generation_name`.
        """
        write = None if probe_embeddings is None else self._probes.writer(probe_embeddings, new.onnx_sha256)
        return self._generations.add_generation(new, then=write)

    def get_generation(self, ref: int | str) -> Generation:
        """A generation by id, numeric string, name or alias name (``"production"``)."""
        return self._generations.get_generation(ref)

    def list_generations(self) -> list[Generation]:
        """Every generation, ascending id."""
        return self._generations.list_generations()

    def set_status(self, gen_id: int | str, status: str) -> Generation:
        """Set a generation's status; ``production`` is only reached through :meth:`move_alias`."""
        return self._generations.set_status(gen_id, status)

    def update_artifact(
        self,
        gen_id: int | str,
        onnx_path: str,
        onnx_sha256: str,
        onnx_metadata: dict[str, str],
        *,
        checkpoint_sha256: str | None = None,
    ) -> Generation:
        """Point a generation at a new ONNX artifact (refused for production's holder).

        Its probe embeddings and evaluations go, its status returns to ``candidate`` (unless
        retired), and reports about the old artifact stop counting. ``checkpoint_sha256=None``
        keeps the recorded checkpoint checksum.
        """
        return self._generations.update_artifact(
            gen_id, onnx_path, onnx_sha256, onnx_metadata, checkpoint_sha256=checkpoint_sha256
        )

    def remove_generation(self, ref: int | str) -> tuple[Generation, bool]:
        """Delete a never-served generation with what describes it, or retire one the history names.

        Returns (the generation, deleted?); the checks are on
        :meth:`registry.stores.generations.GenerationStore.remove_generation`.
        """
        return self._generations.remove_generation(ref)

    # Evaluations and gate reports: registry.stores.reports.

    def record_evaluations(self, items: Iterable[tuple[int, int, dict[str, float]]]) -> list[Evaluation]:
        """Store metrics per (query gen, gallery gen) with both current artifact shas; a pair is replaced."""
        return self._reports.record_evaluations(items)

    def evaluations(self, gen_ids: Iterable[int] | None = None) -> list[Evaluation]:
        """Evaluations of both generations' current artifacts by (query_gen, gallery_gen), optionally among ``gen_ids``."""
        return self._reports.evaluations(gen_ids)

    def add_gate_report(
        self,
        gen_id: int | str,
        artifact_sha256: str,
        passed: bool,
        kind: str,
        report: dict[str, Any],
        *,
        calibration: dict[str, Any] | None = None,
    ) -> GateReport:
        """Store a gate verdict (``"promote"``/``"rollback"``) about one exact artifact, with its calibration."""
        return self._reports.add_gate_report(gen_id, artifact_sha256, passed, kind, report, calibration=calibration)

    def get_gate_report(self, report_id: int) -> GateReport:
        """A gate report by id."""
        return self._reports.get_gate_report(report_id)

    def gate_reports(self, gen_id: int | str | None = None) -> list[GateReport]:
        """Gate reports, newest first, optionally of one generation."""
        return self._reports.gate_reports(gen_id)

    # Aliases: registry.stores.aliases.

    def get_alias(self, alias: str = PRODUCTION) -> int | None:
        """The generation id an alias points at, or ``None`` if never set; ``AliasTampered`` if it
        disagrees with its history."""
        return self._aliases.get_alias(alias)

    def check_alias(self, alias: str = PRODUCTION) -> None:
        """Raise ``AliasTampered`` unless the alias agrees with the last move of its history."""
        self._aliases.check_alias(alias)

    def move_alias(
        self,
        to_gen: int | str,
        *,
        actor: str,
        reason: str,
        gate_report_id: int | None = None,
        forced: bool = False,
        alias: str = PRODUCTION,
        kind: str = "promote",
    ) -> AliasMove:
        """Point an alias at a generation on a passing gate report of ``kind`` (or forced, with a reason).

        The move is recorded in the alias's append-only history; see
        :meth:`registry.stores.aliases.AliasStore.move_alias` for the checks.
        """
        return self._aliases.move_alias(
            to_gen, actor=actor, reason=reason, gate_report_id=gate_report_id, forced=forced, alias=alias, kind=kind
        )

    def alias_history(self, alias: str = PRODUCTION) -> list[AliasMove]:
        """Every move of an alias, oldest first."""
        return self._aliases.alias_history(alias)

    def serving_calibration(self, alias: str = PRODUCTION) -> dict[str, Any] | None:
        """The calibration of the report the alias's newest move cites, if it is about what the alias serves now."""
        return self._aliases.serving_calibration(alias)

    # Gallery: registry.stores.gallery.

    def add_gallery_items(
        self,
        generation_id: int | str,
        external_ids: Sequence[str],
        embeddings: np.ndarray,
        labels: Sequence[str | None] | None = None,
        source_uris: Sequence[str | None] | None = None,
    ) -> int:
        """Add a batch of gallery items embedded by one generation, all or nothing; returns N."""
        return self._gallery.add_gallery_items(generation_id, external_ids, embeddings, labels, source_uris)

    def gallery_counts(self) -> dict[int, int]:
        """Number of gallery items per generation id (generations with items only)."""
        return self._gallery.gallery_counts()

    def gallery_label_counts(self) -> dict[tuple[int, str | None], int]:
        """Number of gallery items per (generation id, label); unlabelled items count under None."""
        return self._gallery.gallery_label_counts()

    def load_gallery(self, *, after_row_id: int = 0, generation_ids: Iterable[int] | None = None) -> GalleryMatrix:
        """The gallery (or the rows after a cursor, or of some generations) as a float32 matrix."""
        return self._gallery.load_gallery(after_row_id=after_row_id, generation_ids=generation_ids)

    def existing_external_ids(self, ids: Iterable[str]) -> set[str]:
        """Which of these external ids are already in the gallery."""
        return self._gallery.existing_external_ids(ids)

    def delete_gallery_items(
        self, external_ids: Iterable[str] | None = None, *, generation: int | str | None = None
    ) -> int:
        """Delete gallery items by external id (unknown ids ignored) or every item of one generation
        (exactly one of the two); returns how many went."""
        return self._gallery.delete_gallery_items(external_ids, generation=generation)

    def live_generations(self) -> list[int]:
        """Ids of the generations that have embeddings in the gallery, ascending."""
        return self._gallery.live_generations()

    # Following and re-embedding the gallery: registry.stores.gallery_changes.

    def gallery_version(self) -> int:
        """The gallery's change-sequence version (0: never written); read it before ``load_gallery``."""
        return self._changes.gallery_version()

    def gallery_changes(self, after_version: int) -> GalleryChanges:
        """Rows written and deleted after a version, and the version to follow from next; one snapshot."""
        return self._changes.gallery_changes(after_version)

    def reembed_gallery_items(self, external_ids: Sequence[str], generation: int | str, embeddings: np.ndarray) -> int:
        """Replace existing items' embeddings with a generation's in one transaction (unknown ids: nothing written)."""
        return self._changes.reembed_gallery_items(external_ids, generation, embeddings)

    def gallery_sources(
        self, *, generation_ids: Iterable[int] | None = None, after_row_id: int = 0, limit: int | None = None
    ) -> list[GallerySource]:
        """Gallery items without embeddings (row id, external id, label, source, generation), ascending row id."""
        return self._changes.gallery_sources(generation_ids=generation_ids, after_row_id=after_row_id, limit=limit)


__all__ = ["Registry"]
