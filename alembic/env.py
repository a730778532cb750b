"""Alembic environment for the upgrader registry.

Used two ways: programmatically by ``registry.migrations`` (which passes an open connection in
``config.attributes["connection"]``) and from the command line (``alembic upgrade head`` in the repo
root, URL from alembic.ini). The whole run is one transaction. On SQLite foreign keys are switched
off for the run, because batch migrations rebuild tables (copy, drop, rename) and would otherwise
trip over references mid-way; on PostgreSQL an advisory lock serialises concurrent upgrades.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, text

from registry.db import make_engine
from registry.schema import Base

config = context.config
target_metadata = Base.metadata

#: Arbitrary constant naming the advisory lock that serialises upgrades on PostgreSQL.
PG_MIGRATION_LOCK = 7_316_452_081


def _set_sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    # A PRAGMA foreign_keys inside a transaction is silently ignored, so it goes straight to the
    # driver connection, before SQLAlchemy begins one.
    connection.connection.driver_connection.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def run_with(connection: Connection) -> None:
    """Run the migrations on an open connection that is not yet in a transaction."""
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _set_sqlite_foreign_keys(connection, False)
    try:
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK})
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=True,
                compare_type=True,
            )
            context.run_migrations()
    finally:
        if sqlite:
            _set_sqlite_foreign_keys(connection, True)


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through the connection handed over, or one made from alembic.ini's URL."""
    given = config.attributes.get("connection")
    if given is not None:
        run_with(given)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    engine = make_engine(config.get_main_option("sqlalchemy.url"), pooled=False)
    try:
        with engine.connect() as connection:
            run_with(connection.execution_options(upgrader_write=True))
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
