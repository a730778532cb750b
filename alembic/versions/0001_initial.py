"""Initial registry schema: interface, label map, probe set, generations, evaluations, gate reports,
aliases with history, and the production gallery.

Revision ID: 0001_initial
Revises:
Create Date: 2025-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the types this revision created (a migration must not import the live schema).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every table of the registry."""
    op.create_table(
        "interface",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("embedding_dim", sa.Integer(), nullable=False),
        sa.Column("embedding_dtype", sa.String(16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("id = 1", name="ck_interface_single_row"),
        sa.PrimaryKeyConstraint("id", name="pk_interface"),
    )
    op.create_table(
        "classes",
        sa.Column("vertex", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("vertex", name="pk_classes"),
        sa.UniqueConstraint("name", name="uq_classes_name"),
    )
    op.create_table(
        "generations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("architecture", sa.String(128), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("train_config", sa.JSON(), nullable=False),
        sa.Column("data_fingerprint", sa.Text(), nullable=False),
        sa.Column("onnx_path", sa.Text(), nullable=False),
        sa.Column("onnx_sha256", sa.String(64), nullable=False),
        sa.Column("onnx_metadata", sa.JSON(), nullable=False),
        sa.Column("checkpoint_path", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.CheckConstraint(
            "status IN ('candidate', 'verified', 'rejected', 'production', 'retired')",
            name="ck_generations_status",
        ),
        sa.CheckConstraint("kind IN ('initial', 'finetune', 'replacement')", name="ck_generations_kind"),
        sa.ForeignKeyConstraint(["parent_id"], ["generations.id"], name="fk_generations_parent_id_generations"),
        sa.PrimaryKeyConstraint("id", name="pk_generations"),
        sa.UniqueConstraint("name", name="uq_generations_name"),
    )
    op.create_table(
        "probe_items",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("vertex", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        sa.Column("image", sa.LargeBinary(), nullable=False),
        sa.Column("source_uri", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("split IN ('query', 'gallery')", name="ck_probe_items_split"),
        sa.ForeignKeyConstraint(["vertex"], ["classes.vertex"], name="fk_probe_items_vertex_classes"),
        sa.PrimaryKeyConstraint("id", name="pk_probe_items"),
    )
    op.create_index("ix_probe_items_split", "probe_items", ["split"])
    op.create_table(
        "probe_embeddings",
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("probe_item_id", BIG_ID, nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"], ["generations.id"], name="fk_probe_embeddings_generation_id_generations"
        ),
        sa.ForeignKeyConstraint(
            ["probe_item_id"], ["probe_items.id"], name="fk_probe_embeddings_probe_item_id_probe_items"
        ),
        sa.PrimaryKeyConstraint("generation_id", "probe_item_id", name="pk_probe_embeddings"),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("query_gen", sa.Integer(), nullable=False),
        sa.Column("gallery_gen", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["query_gen"], ["generations.id"], name="fk_evaluations_query_gen_generations"),
        sa.ForeignKeyConstraint(
            ["gallery_gen"], ["generations.id"], name="fk_evaluations_gallery_gen_generations"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_evaluations"),
        sa.UniqueConstraint("query_gen", "gallery_gen", name="uq_evaluations_pair"),
    )
    op.create_table(
        "gate_reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("kind IN ('promote', 'rollback')", name="ck_gate_reports_kind"),
        sa.ForeignKeyConstraint(
            ["generation_id"], ["generations.id"], name="fk_gate_reports_generation_id_generations"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_gate_reports"),
    )
    op.create_index("ix_gate_reports_generation_id", "gate_reports", ["generation_id"])
    op.create_table(
        "aliases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"], ["generations.id"], name="fk_aliases_generation_id_generations"
        ),
        sa.PrimaryKeyConstraint("name", name="pk_aliases"),
    )
    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("from_gen", sa.Integer(), nullable=True),
        sa.Column("to_gen", sa.Integer(), nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("gate_report_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["alias"], ["aliases.name"], name="fk_alias_history_alias_aliases"),
        sa.ForeignKeyConstraint(["from_gen"], ["generations.id"], name="fk_alias_history_from_gen_generations"),
        sa.ForeignKeyConstraint(["to_gen"], ["generations.id"], name="fk_alias_history_to_gen_generations"),
        sa.ForeignKeyConstraint(
            ["gate_report_id"], ["gate_reports.id"], name="fk_alias_history_gate_report_id_gate_reports"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_alias_history"),
    )
    op.create_index("ix_alias_history_alias", "alias_history", ["alias"])
    op.create_table(
        "gallery_items",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("external_id", sa.String(512), nullable=False),
        sa.Column("label", sa.String(255), nullable=True),
        sa.Column("source_uri", sa.Text(), nullable=True),
        sa.Column("generation_id", sa.Integer(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"], ["generations.id"], name="fk_gallery_items_generation_id_generations"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_gallery_items"),
        sa.UniqueConstraint("external_id", name="uq_gallery_items_external_id"),
    )
    op.create_index("ix_gallery_items_generation_id", "gallery_items", ["generation_id"])


def downgrade() -> None:
    """Drop every table, children first."""
    op.drop_index("ix_gallery_items_generation_id", table_name="gallery_items")
    op.drop_table("gallery_items")
    op.drop_index("ix_alias_history_alias", table_name="alias_history")
    op.drop_table("alias_history")
    op.drop_table("aliases")
    op.drop_index("ix_gate_reports_generation_id", table_name="gate_reports")
    op.drop_table("gate_reports")
    op.drop_table("evaluations")
    op.drop_table("probe_embeddings")
    op.drop_index("ix_probe_items_split", table_name="probe_items")
    op.drop_table("probe_items")
    op.drop_table("generations")
    op.drop_table("classes")
    op.drop_table("interface")
