"""Index gallery items by (generation, label), so the gate can count who stores each class cheaply.

The gate's mixed-gallery estimate needs the number of gallery items per (generation, label). The rows
carry the embeddings, so without a covering index that count reads the whole table (7.6 s at 1M items
on SQLite, measured) on every verify; with it, an index scan (0.2 s).

Revision ID: 0002_gallery_generation_label
Revises: 0001_initial
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002_gallery_generation_label"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the (generation_id, label) index on gallery_items."""
    op.create_index("ix_gallery_items_generation_label", "gallery_items", ["generation_id", "label"])


def downgrade() -> None:
    """Drop it again."""
    op.drop_index("ix_gallery_items_generation_label", table_name="gallery_items")
