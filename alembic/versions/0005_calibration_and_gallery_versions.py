"""Store the score calibration with the gate report; give the gallery a change sequence.

Why the calibration: serving applies a per-generation score transform that the gate fits from the
probe embeddings, and it must be the very one the gate measured and certified. It lives in its own
nullable JSON column of ``gate_reports`` (reports stored before this revision have none: NULL).

Why the change sequence: servers followed the gallery by row id, which misses rows on PostgreSQL
(ids commit out of order) and never sees an item re-embedded or deleted, so deletions were only
caught by a recount. Now ``gallery_clock`` (one row) holds the newest version any gallery write took;
each write locks it, takes consecutive versions and moves it on, so versions become visible in order.
``gallery_items.version`` is the version of a row's last write (unique, indexed) and
``gallery_tombstones`` records each deletion with a version of its own. Existing rows are backfilled
with version = id (their insertion order) and the clock with the largest id (0 when empty), so a
server that follows from version 0 gets every existing row once.

Revision ID: 0005_calibration_versions
Revises: 0004_artifact_binding
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_calibration_versions"
down_revision: str | Sequence[str] | None = "0004_artifact_binding"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: As ``registry.schema.BigId``: BIGINT, but INTEGER on SQLite (its 64-bit rowid).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Add the calibration column, the clock, the row versions (backfilled) and the tombstones."""
    with op.batch_alter_table("gate_reports") as batch:
        batch.add_column(sa.Column("calibration", sa.JSON(), nullable=True))
    op.create_table(
        "gallery_clock",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_gallery_clock_single_row"),
        sa.PrimaryKeyConstraint("id", name="pk_gallery_clock"),
    )
    op.create_table(
        "gallery_tombstones",
        sa.Column("version", BIG_ID, autoincrement=False, nullable=False),
        sa.Column("row_id", sa.BigInteger(), nullable=False),
        sa.Column("external_id", sa.String(512), nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_gallery_tombstones"),
    )
    with op.batch_alter_table("gallery_items") as batch:
        batch.add_column(sa.Column("version", sa.BigInteger(), nullable=True))
    op.execute("UPDATE gallery_items SET version = id")
    op.execute("INSERT INTO gallery_clock (id, version) SELECT 1, COALESCE(MAX(id), 0) FROM gallery_items")
    with op.batch_alter_table("gallery_items") as batch:
        batch.alter_column("version", existing_type=sa.BigInteger(), nullable=False)
        batch.create_index("ix_gallery_items_version", ["version"], unique=True)


def downgrade() -> None:
    """Back to 0004: no versions, tombstones, clock or calibration (those are lost; the rows stay)."""
    with op.batch_alter_table("gallery_items") as batch:
        batch.drop_index("ix_gallery_items_version")
        batch.drop_column("version")
    op.drop_table("gallery_tombstones")
    op.drop_table("gallery_clock")
    with op.batch_alter_table("gate_reports") as batch:
        batch.drop_column("calibration")
