"""The registry API: one :class:`Registry` per workspace, frozen dataclass entities out.

Every public method is one unit of work (one short transaction); the registry holds one engine and
no open session between calls, so one instance may be shared by several threads.
"""

from __future__ import annotations

import gc
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from sqlalchemy import Connection, delete, func, insert, select, text, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

from registry import gallery, migrations
from registry.codec import EMBEDDING_DTYPES, EmbeddingCodec
from registry.db import UnitOfWork, is_sqlite, json_value, make_engine
from registry.entities import (
    GENERATION_KINDS,
    GENERATION_STATUSES,
    PROBE_SPLITS,
    PRODUCTION,
    AliasMove,
    Evaluation,
    GalleryMatrix,
    GateReport,
    Generation,
    Interface,
    NewGeneration,
    ProbeSet,
)
from registry.errors import (
    ConstraintViolation,
    DuplicateItem,
    EmbeddingError,
    GateNotPassed,
    InterfaceError,
    InvalidStatus,
    ProbeSetError,
    RegistryError,
    UnknownGateReport,
    UnknownGeneration,
    WorkspaceNotFound,
)
from registry.schema import (
    AliasHistoryRow,
    AliasRow,
    ClassRow,
    EvaluationRow,
    GalleryItemRow,
    GalleryLabelCountRow,
    GateReportRow,
    GenerationRow,
    InterfaceRow,
    ProbeEmbeddingRow,
    ProbeItemRow,
    utcnow,
)

#: File name of the SQLite registry inside a workspace directory.
DB_FILENAME = "registry.db"
#: Default workspace directory when neither a location nor $UPGRADER_HOME is given.
DEFAULT_HOME = "./.upgrader"
#: Environment variable naming the workspace (a directory or an SQLAlchemy URL).
HOME_ENV = "UPGRADER_HOME"
#: Gate report kinds move_alias accepts.
GATE_KINDS: tuple[str, ...] = ("promote", "rollback")
#: Ids per IN (...) list: well under SQLite's and PostgreSQL's bound-parameter limits.
IN_CHUNK = 5_000
#: Rows fetched per round trip when loading the gallery.
LOAD_CHUNK = 65_536


def _resolve_location(location: str | os.PathLike[str] | None) -> tuple[str, Path | None, str]:
    """Turn a workspace location into (SQLAlchemy URL, home directory or None, display name)."""
    if location is None:
        location = os.environ.get(HOME_ENV) or DEFAULT_HOME
    raw = os.fspath(location)
    if "://" in raw:
        url = make_url(raw)
        return url.render_as_string(hide_password=False), None, url.render_as_string(hide_password=True)
    path = Path(raw).expanduser().resolve()
    if path.is_file():
        # A registry.db file given directly: its folder is the workspace.
        home, db = path.parent, path
    else:
        home, db = path, path / DB_FILENAME
    url = URL.create("sqlite", database=str(db))
    return url.render_as_string(hide_password=False), home, str(home)


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


def _preview(values: Iterable[Any], limit: int = 5) -> str:
    vals = list(values)
    shown = ", ".join(repr(v) for v in vals[:limit])
    return shown + (f" (+{len(vals) - limit} more)" if len(vals) > limit else "")


def _generation(row: GenerationRow) -> Generation:
    return Generation(
        id=row.id,
        name=row.name,
        kind=row.kind,
        method=row.method,
        architecture=row.architecture,
        parent_id=row.parent_id,
        num_classes=row.num_classes,
        train_config=dict(row.train_config or {}),
        data_fingerprint=row.data_fingerprint,
        onnx_path=row.onnx_path,
        onnx_sha256=row.onnx_sha256,
        onnx_metadata=dict(row.onnx_metadata or {}),
        checkpoint_path=row.checkpoint_path,
        status=row.status,
        created_at=row.created_at,
        metrics=dict(row.metrics or {}),
    )


def _gate_report(row: GateReportRow) -> GateReport:
    return GateReport(
        id=row.id,
        generation_id=row.generation_id,
        artifact_sha256=row.artifact_sha256,
        passed=bool(row.passed),
        kind=row.kind,
        report=dict(row.report or {}),
        created_at=row.created_at,
    )


def _alias_move(row: AliasHistoryRow) -> AliasMove:
    return AliasMove(
        id=row.id,
        alias=row.alias,
        from_gen=row.from_gen,
        to_gen=row.to_gen,
        at=row.at,
        actor=row.actor,
        gate_report_id=row.gate_report_id,
        reason=row.reason,
        forced=bool(row.forced),
    )


def _evaluation(row: EvaluationRow) -> Evaluation:
    return Evaluation(
        id=row.id,
        query_gen=row.query_gen,
        gallery_gen=row.gallery_gen,
        metrics=dict(row.metrics or {}),
        created_at=row.created_at,
    )


class Registry:
    """A workspace's registry: interface, probe set, generations, gate, aliases and gallery.

    Open one with :meth:`open`; close it with :meth:`close` or use it as a context manager.
    """

    def __init__(self, url: str, home: Path | None, where: str) -> None:
        """Wrap an already migrated and checked database; use :meth:`open` instead."""
        self._url = url
        self._home = home
        self._where = where
        self._uow = UnitOfWork(make_engine(url))
        # K, the dimension and the gallery dtype never change once set, so they are cached.
        self._codec_cache: EmbeddingCodec | None = None

    # ------------------------------------------------------------------ opening and closing

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
            SchemaOutOfDate: the schema is older than this code (run ``upgrader db upgrade``).
            SchemaFromFuture: the schema is newer than this code.
        """
        url, home, where = _resolve_location(location)
        parsed = make_url(url)
        if is_sqlite(parsed) and parsed.database not in (None, "", ":memory:"):
            db = Path(parsed.database)
            if not db.exists() or db.stat().st_size == 0:
                if not create:
                    raise WorkspaceNotFound(
                        f"no upgrader workspace at {where}; run `upgrader init --home {where}` to create one"
                    )
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
        """Migrate an existing workspace's schema to head (``upgrader db upgrade``).

        Args:
            location: as for :meth:`open`.

        Returns:
            The revision the database is at afterwards.

        Raises:
            WorkspaceNotFound: no SQLite registry at that directory.
            SchemaFromFuture: the database is newer than this code.
        """
        url, _home, where = _resolve_location(location)
        parsed = make_url(url)
        if is_sqlite(parsed) and parsed.database and not Path(parsed.database).exists():
            raise WorkspaceNotFound(
                f"no upgrader workspace at {where}; run `upgrader init --home {where}` to create one"
            )
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

    # ------------------------------------------------------------------ interface and label map

    def set_interface(self, num_classes: int, *, embedding_dtype: str = "float32") -> Interface:
        """Fix the workspace interface: K vertices, embedding dim K-1. Allowed once.

        Args:
            num_classes: K, the number of preallocated d-Simplex vertices (at least 2).
            embedding_dtype: storage dtype of gallery embeddings, ``"float32"`` (default) or
                ``"float16"`` (half the space; loads still return float32).

        Returns:
            The interface.

        Raises:
            InterfaceError: already set, or K below 2.
        """
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
            raise InterfaceError(f"the interface needs at least 2 classes (K), got {num_classes!r}")
        if embedding_dtype not in EMBEDDING_DTYPES:
            raise EmbeddingError(
                f"unknown embedding dtype {embedding_dtype!r}; use one of {', '.join(EMBEDDING_DTYPES)}"
            )
        try:
            with self._uow.session(write=True) as s:
                existing = s.get(InterfaceRow, 1)
                if existing is not None:
                    raise InterfaceError(
                        f"the workspace interface is already set (K={existing.num_classes}); it is fixed "
                        f"for the life of the workspace — create a new workspace for another K"
                    )
                s.add(
                    InterfaceRow(
                        id=1,
                        num_classes=int(num_classes),
                        embedding_dim=int(num_classes) - 1,
                        embedding_dtype=embedding_dtype,
                    )
                )
                s.flush()
                return self._interface(s)
        except DuplicateItem as err:
            # Another process set it between our check and our insert.
            raise InterfaceError(
                "the workspace interface was set concurrently; it is fixed for the life of the workspace"
            ) from err

    def interface(self) -> Interface:
        """The workspace interface.

        Raises:
            InterfaceError: not set yet.
        """
        with self._uow.session() as s:
            return self._interface(s)

    def _interface(self, s: Session) -> Interface:
        row = s.get(InterfaceRow, 1)
        if row is None:
            raise InterfaceError(
                "the workspace has no interface yet; set it with `upgrader init --classes K` (set_interface)"
            )
        classes = s.execute(select(ClassRow.name, ClassRow.vertex).order_by(ClassRow.vertex)).all()
        return Interface(
            num_classes=row.num_classes,
            embedding_dim=row.embedding_dim,
            label_map={name: vertex for name, vertex in classes},
            created_at=row.created_at,
            embedding_dtype=row.embedding_dtype,
        )

    def _codec(self, s: Session | None = None) -> EmbeddingCodec:
        """The gallery codec (the interface's dim and dtype), read once and cached."""
        if self._codec_cache is None:
            if s is None:
                with self._uow.session() as s2:
                    return self._codec(s2)
            row = s.get(InterfaceRow, 1)
            if row is None:
                raise InterfaceError(
                    "the workspace has no interface yet; set it with `upgrader init --classes K` "
                    "(set_interface)"
                )
            self._codec_cache = EmbeddingCodec(row.embedding_dim, row.embedding_dtype)
        return self._codec_cache

    def _lock_interface(self, s: Session) -> InterfaceRow:
        """The interface row, locked for the transaction (serialises label-map writers on PostgreSQL)."""
        row = s.execute(select(InterfaceRow).where(InterfaceRow.id == 1).with_for_update()).scalar_one_or_none()
        if row is None:
            raise InterfaceError(
                "the workspace has no interface yet; set it with `upgrader init --classes K` (set_interface)"
            )
        return row

    def assign_classes(self, names: Iterable[str]) -> dict[str, int]:
        """Give each class name a vertex; known names keep theirs, new ones take the next free vertex.

        Args:
            names: class names, in the order new ones should be assigned.

        Returns:
            ``{name: vertex}`` for the names given.

        Raises:
            InterfaceError: no interface, an empty name, or more classes than K vertices.
        """
        wanted: list[str] = []
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise InterfaceError(f"class names must be non-empty strings, got {name!r}")
            if name not in wanted:
                wanted.append(name)
        with self._uow.session(write=True) as s:
            iface = self._lock_interface(s)
            known: dict[str, int] = {n: v for n, v in s.execute(select(ClassRow.name, ClassRow.vertex))}
            new = [n for n in wanted if n not in known]
            nxt = max(known.values(), default=-1) + 1
            if nxt + len(new) > iface.num_classes:
                raise InterfaceError(
                    f"the label map is full: {len(known)} of K={iface.num_classes} vertices used and "
                    f"{len(new)} new classes asked for; create a workspace with a larger K"
                )
            for offset, name in enumerate(new):
                s.add(ClassRow(vertex=nxt + offset, name=name))
                known[name] = nxt + offset
            s.flush()
            return {n: known[n] for n in wanted}

    # ------------------------------------------------------------------ probe set

    def add_probe_items(
        self,
        split: str,
        images: np.ndarray,
        class_names: Sequence[str],
        source_uris: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Register probe images (uint8 NHWC) with their class names; the pixels are stored.

        Args:
            split: ``"query"`` or ``"gallery"``.
            images: uint8 ``[N, H, W, C]`` (``[N, H, W]`` is taken as C=1). All probe items share
                one shape.
            class_names: ``[N]`` class of each image; must already be in the label map.
            source_uris: ``[N]`` where each image came from, optional.

        Returns:
            int64 ``[N]`` ids of the new items, in input order.

        Raises:
            ProbeSetError: bad split, shape, dtype or lengths; a shape unlike the existing probe
                items; or the probe set is already embedded by a generation.
            InterfaceError: no interface, or a class not in the label map.
        """
        if split not in PROBE_SPLITS:
            raise ProbeSetError(f"unknown probe split {split!r}; use 'query' or 'gallery'")
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4 or arr.shape[0] == 0:
            raise ProbeSetError(f"probe images must be a non-empty uint8 [N, H, W, C] array, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ProbeSetError(f"probe images must be uint8 pixels, got {arr.dtype}; pass the raw images")
        n, h, w, c = (int(x) for x in arr.shape)
        if c not in (1, 3):
            raise ProbeSetError(f"probe images must have 1 or 3 channels (NHWC), got {c}")
        names = list(class_names)
        uris = [None] * n if source_uris is None else list(source_uris)
        if len(names) != n or len(uris) != n:
            raise ProbeSetError(
                f"{n} images but {len(names)} class names and {len(uris)} source URIs; pass one per image"
            )
        arr = np.ascontiguousarray(arr)
        with self._uow.session(write=True) as s:
            iface = self._interface(s)
            unknown = sorted({nm for nm in names if nm not in iface.label_map})
            if unknown:
                raise InterfaceError(
                    f"classes not in the label map: {_preview(unknown)}; assign them first (assign_classes)"
                )
            embedded = s.execute(select(func.count(func.distinct(ProbeEmbeddingRow.generation_id)))).scalar_one()
            if embedded:
                raise ProbeSetError(
                    f"the probe set is already embedded by {embedded} generation(s) and cannot change "
                    f"(their numbers would no longer be comparable); create a new workspace"
                )
            shape = s.execute(select(ProbeItemRow.height, ProbeItemRow.width, ProbeItemRow.channels).limit(1)).first()
            if shape is not None and tuple(shape) != (h, w, c):
                raise ProbeSetError(
                    f"probe images are {tuple(shape)} (H, W, C) but these are {(h, w, c)}; resize them first"
                )
            now = utcnow()
            rows = [
                {
                    "split": split,
                    "vertex": iface.label_map[names[i]],
                    "height": h,
                    "width": w,
                    "channels": c,
                    "image": arr[i].tobytes(),
                    "source_uri": uris[i],
                    "created_at": now,
                }
                for i in range(n)
            ]
            ids = s.scalars(
                insert(ProbeItemRow).returning(ProbeItemRow.id, sort_by_parameter_order=True), rows
            ).all()
            return np.asarray(ids, dtype=np.int64)

    def probe_set(self, split: str) -> ProbeSet:
        """One split of the probe set, images included, in ascending id order.

        Raises:
            ProbeSetError: unknown split, or no items in it.
        """
        if split not in PROBE_SPLITS:
            raise ProbeSetError(f"unknown probe split {split!r}; use 'query' or 'gallery'")
        with self._uow.session() as s:
            rows = s.execute(
                select(
                    ProbeItemRow.id,
                    ProbeItemRow.vertex,
                    ClassRow.name,
                    ProbeItemRow.source_uri,
                    ProbeItemRow.height,
                    ProbeItemRow.width,
                    ProbeItemRow.channels,
                    ProbeItemRow.image,
                )
                .join(ClassRow, ClassRow.vertex == ProbeItemRow.vertex)
                .where(ProbeItemRow.split == split)
                .order_by(ProbeItemRow.id)
            ).all()
        if not rows:
            raise ProbeSetError(f"no probe items in the {split!r} split; register the probe set first")
        ids, vertices, names, uris, hs, ws, cs, blobs = zip(*rows)
        images = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(rows), hs[0], ws[0], cs[0]).copy()
        return ProbeSet(
            split=split,
            item_ids=np.asarray(ids, dtype=np.int64),
            images=images,
            vertices=np.asarray(vertices, dtype=np.int64),
            class_names=list(names),
            source_uris=list(uris),
        )

    def probe_counts(self) -> dict[str, int]:
        """Number of probe items per split (both splits always present)."""
        with self._uow.session() as s:
            counts = dict(
                (tuple(r) for r in s.execute(select(ProbeItemRow.split, func.count()).group_by(ProbeItemRow.split)))
            )
        return {sp: int(counts.get(sp, 0)) for sp in PROBE_SPLITS}

    # ------------------------------------------------------------------ generations

    def _gen_row(self, s: Session, ref: int | str, *, lock: bool = False) -> GenerationRow:
        """Resolve an id, a numeric string, a name or an alias to a generation row."""
        gid: int | None = None
        if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
            gid = int(ref)
        elif isinstance(ref, str):
            key = ref.strip()
            if key.isdigit():
                gid = int(key)
            else:
                gid = s.execute(select(GenerationRow.id).where(GenerationRow.name == key)).scalar_one_or_none()
                if gid is None:
                    gid = s.execute(select(AliasRow.generation_id).where(AliasRow.name == key)).scalar_one_or_none()
        else:
            raise UnknownGeneration(f"a generation is named by id, name or alias, got {ref!r}")
        row = None
        if gid is not None:
            stmt = select(GenerationRow).where(GenerationRow.id == gid)
            if lock:
                stmt = stmt.with_for_update()
            row = s.execute(stmt).scalar_one_or_none()
        if row is None:
            raise UnknownGeneration(f"no generation with id, name or alias {ref!r}; list them to check")
        return row

    def add_generation(self, new: NewGeneration) -> Generation:
        """Register a generation (status ``candidate``).

        Args:
            new: what the caller supplies; ``num_classes`` must equal the interface's K.

        Returns:
            The stored generation.

        Raises:
            InterfaceError: no interface, or a different K.
            DuplicateItem: the name is taken.
            UnknownGeneration: the parent does not exist.
            ConstraintViolation: an unknown kind, or a name that is empty, numeric or an alias.
        """
        name = new.name.strip() if isinstance(new.name, str) else ""
        if not name or name.isdigit() or name == PRODUCTION:
            raise ConstraintViolation(
                f"generation name {new.name!r} is not allowed: use a non-empty, non-numeric name other "
                f"than {PRODUCTION!r}"
            )
        if new.kind not in GENERATION_KINDS:
            raise ConstraintViolation(
                f"unknown generation kind {new.kind!r}; use one of {', '.join(GENERATION_KINDS)}"
            )
        with self._uow.session(write=True) as s:
            iface = s.get(InterfaceRow, 1)
            if iface is None:
                raise InterfaceError(
                    "the workspace has no interface yet; set it with `upgrader init --classes K` (set_interface)"
                )
            if new.num_classes != iface.num_classes:
                raise InterfaceError(
                    f"generation {name!r} was trained for K={new.num_classes} but the workspace interface "
                    f"has K={iface.num_classes}; train it against this workspace's interface"
                )
            if s.execute(select(GenerationRow.id).where(GenerationRow.name == name)).first() is not None:
                raise DuplicateItem(f"a generation named {name!r} already exists; choose another name")
            if new.parent_id is not None and s.get(GenerationRow, new.parent_id) is None:
                raise UnknownGeneration(f"parent generation {new.parent_id} does not exist; register it first")
            row = GenerationRow(
                name=name,
                kind=new.kind,
                method=new.method,
                architecture=new.architecture,
                parent_id=new.parent_id,
                num_classes=new.num_classes,
                train_config=json_value(dict(new.train_config), "train_config"),
                data_fingerprint=new.data_fingerprint,
                onnx_path=str(new.onnx_path),
                onnx_sha256=new.onnx_sha256,
                onnx_metadata={str(k): str(v) for k, v in new.onnx_metadata.items()},
                checkpoint_path=None if new.checkpoint_path is None else str(new.checkpoint_path),
                status="candidate",
                metrics=json_value(dict(new.metrics), "metrics"),
            )
            s.add(row)
            s.flush()
            s.refresh(row)
            return _generation(row)

    def get_generation(self, ref: int | str) -> Generation:
        """A generation by id, numeric string, name or alias name (``"production"``).

        Raises:
            UnknownGeneration: nothing matches.
        """
        with self._uow.session() as s:
            return _generation(self._gen_row(s, ref))

    def list_generations(self) -> list[Generation]:
        """Every generation, ascending id."""
        with self._uow.session() as s:
            return [_generation(r) for r in s.scalars(select(GenerationRow).order_by(GenerationRow.id))]

    def _production_holder(self, s: Session) -> int | None:
        return s.execute(select(AliasRow.generation_id).where(AliasRow.name == PRODUCTION)).scalar_one_or_none()

    def set_status(self, gen_id: int | str, status: str) -> Generation:
        """Set a generation's status; ``production`` is only reached through :meth:`move_alias`.

        Raises:
            InvalidStatus: unknown status, ``production``, or the generation serves production.
            UnknownGeneration: no such generation.
        """
        if status not in GENERATION_STATUSES:
            raise InvalidStatus(f"unknown status {status!r}; use one of {', '.join(GENERATION_STATUSES)}")
        if status == "production":
            raise InvalidStatus(
                "a generation becomes production only by moving the production alias (`upgrader promote`)"
            )
        with self._uow.session(write=True) as s:
            row = self._gen_row(s, gen_id, lock=True)
            if self._production_holder(s) == row.id:
                raise InvalidStatus(
                    f"generation {row.name!r} serves production; promote or roll back to another "
                    f"generation before changing its status"
                )
            row.status = status
            s.flush()
            return _generation(row)

    def update_artifact(
        self, gen_id: int | str, onnx_path: str, onnx_sha256: str, onnx_metadata: dict[str, str]
    ) -> Generation:
        """Point a generation at a new ONNX artifact (e.g. a re-export).

        Gate reports stay tied to the sha256 they judged, so a report about the old artifact no
        longer allows a promotion.

        Raises:
            UnknownGeneration: no such generation.
            InvalidStatus: the generation serves production (its artifact must not change under it).
        """
        with self._uow.session(write=True) as s:
            row = self._gen_row(s, gen_id, lock=True)
            if self._production_holder(s) == row.id:
                raise InvalidStatus(
                    f"generation {row.name!r} serves production and its artifact cannot change; "
                    f"register the new artifact as a new generation"
                )
            row.onnx_path = str(onnx_path)
            row.onnx_sha256 = onnx_sha256
            row.onnx_metadata = {str(k): str(v) for k, v in onnx_metadata.items()}
            s.flush()
            return _generation(row)

    # ------------------------------------------------------------------ probe embeddings

    def put_probe_embeddings(
        self, gen_id: int | str, split: str, item_ids: Sequence[int] | np.ndarray, embeddings: np.ndarray
    ) -> None:
        """Store a generation's embeddings of probe items, replacing what it had for that split.

        Probe embeddings are always stored as float32 (they feed the gate's numbers).

        Raises:
            UnknownGeneration: no such generation.
            ProbeSetError: ids that are not probe items of that split, or repeated ids.
            EmbeddingError: wrong dimension, non-finite values, or a row count unlike the ids.
        """
        if split not in PROBE_SPLITS:
            raise ProbeSetError(f"unknown probe split {split!r}; use 'query' or 'gallery'")
        ids = [int(i) for i in np.asarray(item_ids).reshape(-1)]
        if len(set(ids)) != len(ids):
            raise ProbeSetError("probe item ids repeat; pass each item once")
        dim = self._codec().dim
        blobs = EmbeddingCodec(dim, "float32").encode(embeddings, rows=len(ids))
        with self._uow.session(write=True) as s:
            gen = self._gen_row(s, gen_id)
            in_split = set(s.scalars(select(ProbeItemRow.id).where(ProbeItemRow.split == split)).all())
            missing = [i for i in ids if i not in in_split]
            if missing:
                raise ProbeSetError(
                    f"ids not in the {split!r} probe split: {_preview(missing)}; use ids from probe_set()"
                )
            s.execute(
                delete(ProbeEmbeddingRow).where(
                    ProbeEmbeddingRow.generation_id == gen.id,
                    ProbeEmbeddingRow.probe_item_id.in_(
                        select(ProbeItemRow.id).where(ProbeItemRow.split == split).scalar_subquery()
                    ),
                )
            )
            if ids:
                s.connection().execute(
                    insert(ProbeEmbeddingRow.__table__),
                    [{"generation_id": gen.id, "probe_item_id": i, "embedding": b} for i, b in zip(ids, blobs)],
                )

    def get_probe_embeddings(self, gen_id: int | str, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A generation's probe embeddings for one split, ascending item id.

        Returns:
            (int64 ``[N]`` probe item ids, float32 ``[N, D]`` embeddings).

        Raises:
            UnknownGeneration: no such generation.
            ProbeSetError: the generation has not embedded that split.
        """
        if split not in PROBE_SPLITS:
            raise ProbeSetError(f"unknown probe split {split!r}; use 'query' or 'gallery'")
        dim = self._codec().dim
        with self._uow.session() as s:
            gen = self._gen_row(s, gen_id)
            rows = s.execute(
                select(ProbeEmbeddingRow.probe_item_id, ProbeEmbeddingRow.embedding)
                .join(ProbeItemRow, ProbeItemRow.id == ProbeEmbeddingRow.probe_item_id)
                .where(ProbeEmbeddingRow.generation_id == gen.id, ProbeItemRow.split == split)
                .order_by(ProbeEmbeddingRow.probe_item_id)
            ).all()
        if not rows:
            raise ProbeSetError(
                f"generation {gen.name!r} has no {split!r} probe embeddings; embed the probe set with it first"
            )
        ids, blobs = zip(*rows)
        return np.asarray(ids, dtype=np.int64), EmbeddingCodec(dim, "float32").decode(list(blobs))

    # ------------------------------------------------------------------ evaluations and gate reports

    def record_evaluations(self, items: Iterable[tuple[int, int, dict[str, float]]]) -> list[Evaluation]:
        """Store retrieval metrics per (query generation, gallery generation); a pair is replaced.

        Args:
            items: ``(query_gen, gallery_gen, metrics)`` triples.

        Returns:
            The stored evaluations, in input order.

        Raises:
            UnknownGeneration: a generation id that does not exist.
        """
        triples = [(int(q), int(g), json_value(dict(m), "evaluation metrics")) for q, g, m in items]
        out: list[Evaluation] = []
        with self._uow.session(write=True) as s:
            gens = {q for q, _, _ in triples} | {g for _, g, _ in triples}
            found = set(s.scalars(select(GenerationRow.id).where(GenerationRow.id.in_(gens))).all()) if gens else set()
            if gens - found:
                raise UnknownGeneration(f"no generation with id {_preview(sorted(gens - found))}; register it first")
            upsert = _upsert_factory(s.connection())
            now = utcnow()
            for q, g, metrics in triples:
                upsert(q, g, metrics, now)
            s.flush()
            for q, g, _ in triples:
                row = s.execute(
                    select(EvaluationRow)
                    .where(EvaluationRow.query_gen == q, EvaluationRow.gallery_gen == g)
                    .execution_options(populate_existing=True)
                ).scalar_one()
                out.append(_evaluation(row))
        return out

    def evaluations(self, gen_ids: Iterable[int] | None = None) -> list[Evaluation]:
        """Stored evaluations, ordered by (query_gen, gallery_gen).

        Args:
            gen_ids: keep only pairs whose query *and* gallery generation are among these.
        """
        stmt = select(EvaluationRow).order_by(EvaluationRow.query_gen, EvaluationRow.gallery_gen)
        if gen_ids is not None:
            ids = [int(g) for g in gen_ids]
            stmt = stmt.where(EvaluationRow.query_gen.in_(ids), EvaluationRow.gallery_gen.in_(ids))
        with self._uow.session() as s:
            return [_evaluation(r) for r in s.scalars(stmt)]

    def add_gate_report(
        self, gen_id: int | str, artifact_sha256: str, passed: bool, kind: str, report: dict[str, Any]
    ) -> GateReport:
        """Store a gate verdict about one exact artifact of a generation.

        Args:
            gen_id: the generation judged.
            artifact_sha256: sha256 of the artifact the gate evaluated.
            passed: the verdict.
            kind: ``"promote"`` or ``"rollback"``.
            report: the full report (JSON-able; numpy values are converted, NaN/inf stored as null).

        Raises:
            UnknownGeneration: no such generation.
            ConstraintViolation: an unknown kind.
        """
        if kind not in GATE_KINDS:
            raise ConstraintViolation(f"unknown gate report kind {kind!r}; use one of {', '.join(GATE_KINDS)}")
        with self._uow.session(write=True) as s:
            gen = self._gen_row(s, gen_id)
            row = GateReportRow(
                generation_id=gen.id,
                artifact_sha256=artifact_sha256,
                passed=bool(passed),
                kind=kind,
                report=json_value(dict(report), "the gate report"),
            )
            s.add(row)
            s.flush()
            s.refresh(row)
            return _gate_report(row)

    def get_gate_report(self, report_id: int) -> GateReport:
        """A gate report by id.

        Raises:
            UnknownGateReport: no such report.
        """
        with self._uow.session() as s:
            row = s.get(GateReportRow, int(report_id))
            if row is None:
                raise UnknownGateReport(f"no gate report with id {report_id}; run the gate to make one")
            return _gate_report(row)

    def gate_reports(self, gen_id: int | str | None = None) -> list[GateReport]:
        """Gate reports, newest first, optionally of one generation."""
        with self._uow.session() as s:
            stmt = select(GateReportRow).order_by(GateReportRow.id.desc())
            if gen_id is not None:
                stmt = stmt.where(GateReportRow.generation_id == self._gen_row(s, gen_id).id)
            return [_gate_report(r) for r in s.scalars(stmt)]

    # ------------------------------------------------------------------ aliases

    def get_alias(self, alias: str = PRODUCTION) -> int | None:
        """The generation id an alias points at, or ``None`` if it was never set."""
        with self._uow.session() as s:
            return s.execute(select(AliasRow.generation_id).where(AliasRow.name == alias)).scalar_one_or_none()

    def move_alias(
        self,
        to_gen: int | str,
        *,
        actor: str,
        reason: str,
        gate_report_id: int | None = None,
        forced: bool = False,
        alias: str = PRODUCTION,
    ) -> AliasMove:
        """Point an alias at a generation, recording the move in the append-only history.

        Unless forced, ``gate_report_id`` must name a passed report (kind promote or rollback) about
        ``to_gen`` whose ``artifact_sha256`` equals the generation's current ``onnx_sha256``. For the
        ``production`` alias the target becomes ``production`` and the previous holder ``verified``,
        in the same transaction. Gallery rows are never touched.

        Args:
            to_gen: the generation (id, name or alias).
            actor: who moves it (user name, service).
            reason: why; required (non-empty) when forced.
            gate_report_id: the passing gate report that allows the move.
            forced: skip the gate check (an explicit, recorded override).
            alias: the alias to move.

        Returns:
            The history entry.

        Raises:
            GateNotPassed: no report, a failing report, a report about another generation or another
                artifact, or a forced move without a reason.
            UnknownGeneration: no such generation.
        """
        if forced and not (reason or "").strip():
            raise GateNotPassed("a forced alias move needs a reason; say why the gate is overridden")
        if not alias or not alias.strip():
            raise ConstraintViolation("the alias name must be non-empty")
        with self._uow.session(write=True) as s:
            conn = s.connection()
            if conn.dialect.name == "postgresql":
                # Serialise movers of this alias (the row may not exist yet, so a row lock is not enough).
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(f"alias:{alias}".encode())})
            gen = self._gen_row(s, to_gen, lock=True)
            report: GateReportRow | None = None
            if gate_report_id is not None:
                report = s.get(GateReportRow, int(gate_report_id))
                if report is None:
                    raise GateNotPassed(
                        f"gate report {gate_report_id} does not exist; run the gate on {gen.name!r} first"
                    )
            if not forced:
                if report is None:
                    raise GateNotPassed(
                        f"moving {alias!r} to {gen.name!r} needs a passing gate report; run the gate on it "
                        f"and pass the report id (or force the move with a reason)"
                    )
                if report.generation_id != gen.id:
                    raise GateNotPassed(
                        f"gate report {report.id} is about generation {report.generation_id}, not "
                        f"{gen.name!r} ({gen.id}); run the gate on {gen.name!r}"
                    )
                if not report.passed:
                    raise GateNotPassed(
                        f"gate report {report.id} failed: {gen.name!r} did not pass the gate; fix the "
                        f"model or force the move with a reason"
                    )
                if report.artifact_sha256 != gen.onnx_sha256:
                    raise GateNotPassed(
                        f"gate report {report.id} judged artifact {report.artifact_sha256[:12]}… but "
                        f"{gen.name!r} now has artifact {gen.onnx_sha256[:12]}…; re-run the gate on it"
                    )
            current = s.execute(select(AliasRow).where(AliasRow.name == alias).with_for_update()).scalar_one_or_none()
            now = utcnow()
            from_gen = current.generation_id if current is not None else None
            if current is None:
                s.add(AliasRow(name=alias, generation_id=gen.id, updated_at=now))
            else:
                current.generation_id = gen.id
                current.updated_at = now
            if alias == PRODUCTION:
                # At most one generation is "production": whoever held it steps down to "verified".
                s.execute(
                    update(GenerationRow)
                    .where(GenerationRow.status == "production", GenerationRow.id != gen.id)
                    .values(status="verified")
                )
                gen.status = "production"
            s.flush()
            move = AliasHistoryRow(
                alias=alias,
                from_gen=from_gen,
                to_gen=gen.id,
                at=now,
                actor=actor,
                gate_report_id=None if report is None else report.id,
                reason=reason or "",
                forced=bool(forced),
            )
            s.add(move)
            s.flush()
            return _alias_move(move)

    def alias_history(self, alias: str = PRODUCTION) -> list[AliasMove]:
        """Every move of an alias, oldest first."""
        with self._uow.session() as s:
            rows = s.scalars(select(AliasHistoryRow).where(AliasHistoryRow.alias == alias).order_by(AliasHistoryRow.id))
            return [_alias_move(r) for r in rows]

    # ------------------------------------------------------------------ gallery

    def add_gallery_items(
        self,
        generation_id: int | str,
        external_ids: Sequence[str],
        embeddings: np.ndarray,
        labels: Sequence[str | None] | None = None,
        source_uris: Sequence[str | None] | None = None,
    ) -> int:
        """Add a batch of gallery items embedded by one generation; all or nothing.

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
        ids = [str(x) for x in external_ids]
        n = len(ids)
        if any(not x for x in ids):
            raise DuplicateItem("external ids must be non-empty strings")
        if len(set(ids)) != n:
            seen: set[str] = set()
            repeated = [x for x in ids if x in seen or seen.add(x)]  # type: ignore[func-returns-value]
            raise DuplicateItem(f"external ids repeat within the batch: {_preview(sorted(set(repeated)))}")
        labs = [None] * n if labels is None else [None if v is None else str(v) for v in labels]
        uris = [None] * n if source_uris is None else [None if v is None else str(v) for v in source_uris]
        if len(labs) != n or len(uris) != n:
            raise EmbeddingError(f"{n} ids but {len(labs)} labels and {len(uris)} source URIs; pass one per item")
        # Encode (validate) before taking the write lock, so the lock is held only for the insert.
        blobs = self._codec().encode(embeddings, rows=n)
        try:
            with self._uow.session(write=True) as s:
                gen_id = self._gen_row(s, generation_id).id
                if n:
                    conn = s.connection()
                    gallery.insert_items(conn, gen_id, ids, labs, uris, blobs)
                    gallery.add_counts(conn, {(gen_id, lab): c for lab, c in Counter(labs).items()})
        except DuplicateItem as err:
            taken = self._existing_external_ids(ids)
            raise DuplicateItem(
                f"external ids already in the gallery: {_preview(taken)}; delete them first or use new ids"
            ) from err
        return n

    def _existing_external_ids(self, ids: Sequence[str]) -> list[str]:
        found: list[str] = []
        with self._uow.session() as s:
            for chunk in _chunks(list(ids)):
                found.extend(
                    s.scalars(select(GalleryItemRow.external_id).where(GalleryItemRow.external_id.in_(chunk))).all()
                )
        return sorted(found)

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
            return {(int(g), gallery.label_from_key(key)): int(n) for g, key, n in rows if n > 0}

    def load_gallery(self, *, after_row_id: int = 0, generation_ids: Iterable[int] | None = None) -> GalleryMatrix:
        """Load the gallery (or the rows after a cursor) as a search-ready float32 matrix.

        Args:
            after_row_id: only rows with a larger row id (pass the last ``row_ids`` value to load
                what was added since).
            generation_ids: only rows written by these generations.

        Returns:
            The rows in ascending row id order with a C-contiguous float32 ``[N, D]`` matrix.
        """
        codec = self._codec()
        gens_filter = None if generation_ids is None else [int(g) for g in generation_ids]
        row_ids: list[int] = []
        ext: list[str] = []
        gens: list[int] = []
        labels: list[str | None] = []
        matrix = np.empty((0, codec.dim), dtype=np.float32)
        filled = 0
        with self._uow.session() as s, _gc_paused():
            conn = s.connection()
            # One preallocated matrix filled chunk by chunk: a single copy of the embeddings, and
            # the per-row bytes objects of only one chunk alive at a time.
            matrix = np.empty((gallery.count_items(conn, after_row_id, gens_filter), codec.dim), np.float32)
            for ids_c, ext_c, gen_c, lab_c, blob_c in gallery.iter_items(
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

    def delete_gallery_items(self, external_ids: Iterable[str]) -> int:
        """Delete gallery items by external id (unknown ids are ignored).

        Returns:
            The number of items deleted.
        """
        ids = list(dict.fromkeys(str(x) for x in external_ids))
        deleted = 0
        with self._uow.session(write=True) as s:
            conn = s.connection()
            for chunk in _chunks(ids):
                gone = gallery.delete_items(conn, chunk)
                gallery.add_counts(conn, {key: -n for key, n in gone.items()})
                deleted += sum(gone.values())
        return deleted

    def live_generations(self) -> list[int]:
        """Ids of the generations that have embeddings in the gallery, ascending."""
        return sorted(self.gallery_counts())


def _upsert_factory(conn: Connection) -> Any:
    """An ``upsert(query_gen, gallery_gen, metrics, now)`` for the connection's dialect."""
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert

        def upsert(q: int, g: int, metrics: dict[str, Any], now: Any) -> None:
            stmt = dialect_insert(EvaluationRow.__table__).values(
                query_gen=q, gallery_gen=g, metrics=metrics, created_at=now
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["query_gen", "gallery_gen"],
                set_={"metrics": stmt.excluded.metrics, "created_at": stmt.excluded.created_at},
            )
            conn.execute(stmt)

        return upsert

    table = EvaluationRow.__table__

    def upsert_generic(q: int, g: int, metrics: dict[str, Any], now: Any) -> None:
        res = conn.execute(
            update(table)
            .where(table.c.query_gen == q, table.c.gallery_gen == g)
            .values(metrics=metrics, created_at=now)
        )
        if not res.rowcount:
            conn.execute(insert(table).values(query_gen=q, gallery_gen=g, metrics=metrics, created_at=now))

    return upsert_generic


__all__ = ["Registry", "RegistryError"]
