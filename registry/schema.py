"""The registry's tables as SQLAlchemy 2 typed ORM classes (``*Row``; they never leave ``registry/``).

Alembic migrations under the top-level ``alembic/`` folder own the schema; this module is the
metadata they are checked against (``compare_metadata`` must find no difference). Constraint names
follow :data:`NAMING_CONVENTION` so that batch migrations on SQLite can address them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Row ids of tables that may grow to millions of rows. SQLite only autoincrements an
#: ``INTEGER PRIMARY KEY`` (already 64-bit there), so the variant keeps that spelling on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always hands back aware UTC datetimes.

    SQLite has no time zone type and returns naive values; PostgreSQL returns aware ones in the
    session's zone. Normalising both to UTC keeps entities identical across backends.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive datetime is taken to be UTC already (that is what this type stores).
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class InterfaceRow(Base):
    """The single row holding the workspace interface (K and the gallery storage dtype)."""

    __tablename__ = "interface"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    num_classes: Mapped[int] = mapped_column(Integer)
    embedding_dim: Mapped[int] = mapped_column(Integer)
    embedding_dtype: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ClassRow(Base):
    """One entry of the append-only label map: a class name and its d-Simplex vertex."""

    __tablename__ = "classes"

    vertex: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProbeItemRow(Base):
    """A probe-set image (query or gallery split) with its label; pixels stored as a uint8 blob."""

    __tablename__ = "probe_items"
    __table_args__ = (CheckConstraint("split IN ('query', 'gallery')", name="split"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    split: Mapped[str] = mapped_column(String(16), index=True)
    vertex: Mapped[int] = mapped_column(ForeignKey("classes.vertex"))
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    image: Mapped[bytes] = mapped_column(LargeBinary)
    source_uri: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GenerationRow(Base):
    """A registered encoder generation."""

    __tablename__ = "generations"
    __table_args__ = (
        CheckConstraint(
            "status IN ('candidate', 'verified', 'rejected', 'production', 'retired')", name="status"
        ),
        CheckConstraint("kind IN ('initial', 'finetune', 'replacement')", name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(64))
    architecture: Mapped[str] = mapped_column(String(128))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("generations.id"))
    num_classes: Mapped[int] = mapped_column(Integer)
    train_config: Mapped[dict[str, Any]]
    data_fingerprint: Mapped[str] = mapped_column(Text)
    onnx_path: Mapped[str] = mapped_column(Text)
    onnx_sha256: Mapped[str] = mapped_column(String(64))
    onnx_metadata: Mapped[dict[str, Any]]
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    metrics: Mapped[dict[str, Any]]


class ProbeEmbeddingRow(Base):
    """One probe item embedded by one generation (float32 blob), with the artifact that embedded it.

    Why the sha: a re-exported generation has a new artifact, and embeddings of the old one must not
    feed the gate; rows whose ``artifact_sha256`` is not the generation's current one are stale.
    """

    __tablename__ = "probe_embeddings"

    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), primary_key=True)
    probe_item_id: Mapped[int] = mapped_column(ForeignKey("probe_items.id"), primary_key=True)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    embedding: Mapped[bytes] = mapped_column(LargeBinary)


class EvaluationRow(Base):
    """Metrics of query generation x gallery generation; one row per pair (upserted).

    The two artifact shas say which artifacts the metrics were computed with; a row whose shas are
    not both generations' current ones is stale and not read.
    """

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("query_gen", "gallery_gen", name="uq_evaluations_pair"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    query_gen: Mapped[int] = mapped_column(ForeignKey("generations.id"))
    gallery_gen: Mapped[int] = mapped_column(ForeignKey("generations.id"))
    query_sha256: Mapped[str] = mapped_column(String(64))
    gallery_sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GateReportRow(Base):
    """A stored gate verdict about one exact artifact of one generation."""

    __tablename__ = "gate_reports"
    __table_args__ = (CheckConstraint("kind IN ('promote', 'rollback')", name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), index=True)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    passed: Mapped[bool] = mapped_column(Boolean)
    kind: Mapped[str] = mapped_column(String(16))
    report: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The score calibration serving applies while this report backs the alias (migration 0005);
    #: SQL NULL when the gate stored none.
    calibration: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class AliasRow(Base):
    """Where an alias (``production``) points now.

    Database triggers (migration 0004) refuse an update of ``generation_id`` to anything but the
    ``to_gen`` of the alias's newest history row, and any delete: the row only follows its history.
    """

    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AliasHistoryRow(Base):
    """One move of an alias. Append-only: database triggers (migration 0004) refuse updates and deletes."""

    __tablename__ = "alias_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alias: Mapped[str] = mapped_column(ForeignKey("aliases.name"), index=True)
    from_gen: Mapped[int | None] = mapped_column(ForeignKey("generations.id"))
    to_gen: Mapped[int] = mapped_column(ForeignKey("generations.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    gate_report_id: Mapped[int | None] = mapped_column(ForeignKey("gate_reports.id"))
    reason: Mapped[str] = mapped_column(Text)
    forced: Mapped[bool] = mapped_column(Boolean)


class GalleryItemRow(Base):
    """A production gallery item: external id, optional label and source, the embedding and its generation."""

    __tablename__ = "gallery_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    external_id: Mapped[str] = mapped_column(String(512), unique=True)
    label: Mapped[str | None] = mapped_column(String(255))
    source_uri: Mapped[str | None] = mapped_column(Text)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), index=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    #: The gallery version of the row's last write (add or re-embed), from ``gallery_clock``; unique,
    #: since every write takes versions of its own (migration 0005).
    version: Mapped[int] = mapped_column(BigInteger, index=True, unique=True)


class GalleryClockRow(Base):
    """The single row holding the gallery's change counter: the newest version any write took.

    Why: servers follow the gallery by version, not by row id. Every gallery write locks this row
    for its whole transaction, so versions are taken, and become visible, in commit order; row ids
    from a sequence are not (see :mod:`registry.stores.gallery_clock`).
    """

    __tablename__ = "gallery_clock"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)


class GalleryTombstoneRow(Base):
    """One deleted gallery row: the version its deletion took, its row id and external id.

    Why: a server that follows the gallery by version learns of deletions here instead of by
    recounting. Written in the same transaction as the delete.
    """

    __tablename__ = "gallery_tombstones"

    version: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    row_id: Mapped[int] = mapped_column(BigInteger)
    external_id: Mapped[str] = mapped_column(String(512))


class GalleryLabelCountRow(Base):
    """Gallery items per (generation, label), kept in step with ``gallery_items`` by every write.

    Why: the gate asks which generation stores each class on every verify and promote. Counting the
    items themselves grows with the gallery (0.14 s per count at 1M items, even from a covering
    index); this table has one row per (generation, label), whatever the gallery's size.
    ``label_key`` is ``""`` for unlabelled items and ``"=" + label`` otherwise (a key column cannot
    be NULL). Rows whose count reaches zero are deleted.
    """

    __tablename__ = "gallery_label_counts"

    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), primary_key=True)
    label_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    items: Mapped[int] = mapped_column(BigInteger)
