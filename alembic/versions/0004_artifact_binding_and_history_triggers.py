"""Bind probe embeddings and evaluations to the artifacts that made them; record checkpoint checksums;
make the alias history append-only in the database itself.

Why: a re-exported generation kept the probe embeddings (and evaluations) of its previous artifact,
so the gate judged a model that no longer existed. Rows now carry the artifact sha256 they were
computed from (existing rows are stamped with their generation's current sha, which is what they were
taken to describe until now), and readers ignore rows of another sha.

The history was append-only by convention only: plain SQL could rewrite or delete moves, or point an
alias elsewhere, and a server followed. Triggers now refuse, on SQLite and PostgreSQL, any UPDATE or
DELETE of ``alias_history`` (and TRUNCATE on PostgreSQL), any DELETE of ``aliases``, and an UPDATE of
``aliases`` unless the alias then points at the ``to_gen`` of its newest history row. So a move writes
its history row first. They hold for every client of the database (the ``sqlite3`` shell included),
not only this package. A later batch migration that rebuilds ``aliases`` or ``alias_history`` on
SQLite drops their triggers and must create them again.

Revision ID: 0004_artifact_binding
Revises: 0003_gallery_label_counts
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_artifact_binding"
down_revision: str | Sequence[str] | None = "0003_gallery_label_counts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SHA = sa.String(64)

HISTORY_MESSAGE = "alias_history is append-only: a recorded move is never updated or deleted"
ALIAS_DELETE_MESSAGE = "aliases are never deleted: an alias only moves, through a new history row"
ALIAS_UPDATE_MESSAGE = (
    "an alias may only point at the to_gen of its newest alias_history row: record the move in the history first"
)

#: (name, SQL) of every SQLite trigger this revision creates.
SQLITE_TRIGGERS: tuple[tuple[str, str], ...] = (
    ("alias_history_no_update",
     f"CREATE TRIGGER alias_history_no_update BEFORE UPDATE ON alias_history "
     f"BEGIN SELECT RAISE(ABORT, '{HISTORY_MESSAGE}'); END"),
    ("alias_history_no_delete",
     f"CREATE TRIGGER alias_history_no_delete BEFORE DELETE ON alias_history "
     f"BEGIN SELECT RAISE(ABORT, '{HISTORY_MESSAGE}'); END"),
    ("aliases_no_delete",
     f"CREATE TRIGGER aliases_no_delete BEFORE DELETE ON aliases "
     f"BEGIN SELECT RAISE(ABORT, '{ALIAS_DELETE_MESSAGE}'); END"),
    ("aliases_follow_history",
     "CREATE TRIGGER aliases_follow_history BEFORE UPDATE ON aliases "
     "WHEN NEW.name IS NOT OLD.name OR NEW.generation_id IS NOT "
     "(SELECT h.to_gen FROM alias_history h WHERE h.alias = OLD.name ORDER BY h.id DESC LIMIT 1) "
     f"BEGIN SELECT RAISE(ABORT, '{ALIAS_UPDATE_MESSAGE}'); END"),
)

# PostgreSQL: one function per rule; SQLSTATE 23000 (integrity_constraint_violation) so a client sees
# a refused write, not an internal error.
PG_FUNCTIONS: tuple[tuple[str, str], ...] = (
    ("upgrader_alias_history_append_only",
     "CREATE FUNCTION upgrader_alias_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
     f"BEGIN RAISE EXCEPTION '{HISTORY_MESSAGE}' USING ERRCODE = '23000'; END $$"),
    ("upgrader_aliases_no_delete",
     "CREATE FUNCTION upgrader_aliases_no_delete() RETURNS trigger LANGUAGE plpgsql AS $$ "
     f"BEGIN RAISE EXCEPTION '{ALIAS_DELETE_MESSAGE}' USING ERRCODE = '23000'; END $$"),
    ("upgrader_aliases_follow_history",
     "CREATE FUNCTION upgrader_aliases_follow_history() RETURNS trigger LANGUAGE plpgsql AS $$ "
     "BEGIN "
     "IF NEW.name IS DISTINCT FROM OLD.name OR NEW.generation_id IS DISTINCT FROM "
     "(SELECT h.to_gen FROM alias_history h WHERE h.alias = OLD.name ORDER BY h.id DESC LIMIT 1) THEN "
     f"RAISE EXCEPTION '{ALIAS_UPDATE_MESSAGE}' USING ERRCODE = '23000'; "
     "END IF; RETURN NEW; END $$"),
)
#: (trigger name, table, CREATE TRIGGER statement) on PostgreSQL.
PG_TRIGGERS: tuple[tuple[str, str, str], ...] = (
    ("alias_history_no_update", "alias_history",
     "CREATE TRIGGER alias_history_no_update BEFORE UPDATE ON alias_history "
     "FOR EACH ROW EXECUTE FUNCTION upgrader_alias_history_append_only()"),
    ("alias_history_no_delete", "alias_history",
     "CREATE TRIGGER alias_history_no_delete BEFORE DELETE ON alias_history "
     "FOR EACH ROW EXECUTE FUNCTION upgrader_alias_history_append_only()"),
    ("alias_history_no_truncate", "alias_history",
     "CREATE TRIGGER alias_history_no_truncate BEFORE TRUNCATE ON alias_history "
     "FOR EACH STATEMENT EXECUTE FUNCTION upgrader_alias_history_append_only()"),
    ("aliases_no_delete", "aliases",
     "CREATE TRIGGER aliases_no_delete BEFORE DELETE ON aliases "
     "FOR EACH ROW EXECUTE FUNCTION upgrader_aliases_no_delete()"),
    ("aliases_no_truncate", "aliases",
     "CREATE TRIGGER aliases_no_truncate BEFORE TRUNCATE ON aliases "
     "FOR EACH STATEMENT EXECUTE FUNCTION upgrader_aliases_no_delete()"),
    ("aliases_follow_history", "aliases",
     "CREATE TRIGGER aliases_follow_history BEFORE UPDATE ON aliases "
     "FOR EACH ROW EXECUTE FUNCTION upgrader_aliases_follow_history()"),
)


def upgrade() -> None:
    """Add and backfill the sha columns, then create the history triggers."""
    with op.batch_alter_table("generations") as batch:
        batch.add_column(sa.Column("checkpoint_sha256", SHA, nullable=True))
    with op.batch_alter_table("probe_embeddings") as batch:
        batch.add_column(sa.Column("artifact_sha256", SHA, nullable=True))
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("query_sha256", SHA, nullable=True))
        batch.add_column(sa.Column("gallery_sha256", SHA, nullable=True))
    op.execute(
        "UPDATE probe_embeddings SET artifact_sha256 = "
        "(SELECT g.onnx_sha256 FROM generations g WHERE g.id = probe_embeddings.generation_id)"
    )
    op.execute(
        "UPDATE evaluations SET "
        "query_sha256 = (SELECT g.onnx_sha256 FROM generations g WHERE g.id = evaluations.query_gen), "
        "gallery_sha256 = (SELECT g.onnx_sha256 FROM generations g WHERE g.id = evaluations.gallery_gen)"
    )
    with op.batch_alter_table("probe_embeddings") as batch:
        batch.alter_column("artifact_sha256", existing_type=SHA, nullable=False)
    with op.batch_alter_table("evaluations") as batch:
        batch.alter_column("query_sha256", existing_type=SHA, nullable=False)
        batch.alter_column("gallery_sha256", existing_type=SHA, nullable=False)
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for _name, sql in SQLITE_TRIGGERS:
            op.execute(sql)
    elif dialect == "postgresql":
        for _name, sql in PG_FUNCTIONS:
            op.execute(sql)
        for _name, _table, sql in PG_TRIGGERS:
            op.execute(sql)


def downgrade() -> None:
    """Back to 0003: no triggers, no sha columns (the binding is lost; the rows stay)."""
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name, _sql in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    elif dialect == "postgresql":
        for name, table, _sql in PG_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        for name, _sql in PG_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("gallery_sha256")
        batch.drop_column("query_sha256")
    with op.batch_alter_table("probe_embeddings") as batch:
        batch.drop_column("artifact_sha256")
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("checkpoint_sha256")
