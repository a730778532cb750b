"""Keep gallery item counts per (generation, label) in their own table, so the gate's count is O(classes).

The gate asks which generation stores each class on every verify and promote. 0002's covering index
made that count an index scan, which still grows with the gallery (0.14 s per count at 1M items on
SQLite, several counts per upgrade). ``gallery_label_counts`` holds one row per (generation, label),
written in the same transaction as the items it counts. This revision creates it, fills it from the
items already stored, and drops 0002's index, which nothing reads any more and every insert paid for.

Revision ID: 0003_gallery_label_counts
Revises: 0002_gallery_generation_label
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_gallery_label_counts"
down_revision: str | Sequence[str] | None = "0002_gallery_generation_label"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``gallery_label_counts``, fill it from ``gallery_items``, drop the (generation, label) index."""
    op.create_table(
        "gallery_label_counts",
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("label_key", sa.String(256), nullable=False),
        sa.Column("items", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"], ["generations.id"], name="fk_gallery_label_counts_generation_id_generations"
        ),
        sa.PrimaryKeyConstraint("generation_id", "label_key", name="pk_gallery_label_counts"),
    )
    # label_key: '' for unlabelled items, '=' || label otherwise (the key column cannot be NULL).
    op.execute(
        "INSERT INTO gallery_label_counts (generation_id, label_key, items) "
        "SELECT generation_id, CASE WHEN label IS NULL THEN '' ELSE '=' || label END, COUNT(*) "
        "FROM gallery_items GROUP BY generation_id, CASE WHEN label IS NULL THEN '' ELSE '=' || label END"
    )
    op.drop_index("ix_gallery_items_generation_label", table_name="gallery_items")


def downgrade() -> None:
    """Back to 0002: the index again, no counts table."""
    op.create_index("ix_gallery_items_generation_label", "gallery_items", ["generation_id", "label"])
    op.drop_table("gallery_label_counts")
