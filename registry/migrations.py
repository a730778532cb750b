"""Programmatic Alembic: the config built in code, upgrade/downgrade, and the schema version check.

The migration scripts live in the top-level ``alembic/`` folder next to ``registry/`` (one head); the
wheel carries that folder as ``registry/_alembic`` (pyproject.toml maps it in), so an installed
package migrates with no checkout present. Every run goes through ``env.py`` with an open connection
handed over in ``config.attributes["connection"]``, so the registry's engine settings (SQLite
pragmas, ``BEGIN IMMEDIATE``) apply to migrations too and concurrent upgrades queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, exc, inspect

from registry.db import WRITE_OPTION, make_engine, translate
from registry.errors import BackendError, SchemaFromFuture, SchemaOutOfDate
from registry.location import missing_workspace


#: Where an installed wheel carries the migration scripts, then where a checkout keeps them (an
#: editable install or a source tree on ``sys.path``). A wheel's ``site-packages/alembic`` is the
#: Alembic library itself: it holds no ``env.py`` or ``versions/``, so it is never taken for ours.
SCRIPT_FOLDERS: tuple[Path, ...] = (
    Path(__file__).resolve().parent / "_alembic",
    Path(__file__).resolve().parent.parent / "alembic",
)


def script_location() -> Path:
    """The folder of the migration scripts: the wheel's copy, else the checkout's ``alembic/``.

    Raises:
        BackendError: neither holds an ``env.py`` and a ``versions/`` folder (a broken install).
    """
    for folder in SCRIPT_FOLDERS:
        if (folder / "env.py").is_file() and (folder / "versions").is_dir():
            return folder
    looked = " or ".join(str(f) for f in SCRIPT_FOLDERS)
    raise BackendError(f"the registry's migration scripts are missing (looked in {looked}); reinstall the package")


def alembic_config() -> Config:
    """An Alembic ``Config`` built in code (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    return cfg


def _single_head(script: ScriptDirectory) -> str:
    """The one head of ``script`` (zero means the folder holds no migration at all)."""
    heads = script.get_heads()
    if len(heads) != 1:
        raise BackendError(f"the migration scripts in {script.dir} have {len(heads)} heads; they need exactly one")
    return heads[0]


def head_revision() -> str:
    """The single head revision of the migration scripts."""
    return _single_head(ScriptDirectory.from_config(alembic_config()))


@dataclass(frozen=True)
class SchemaState:
    """What a database holds, as far as migrations are concerned.

    Attributes:
        has_version_table: an ``alembic_version`` table exists (the database was migrated once).
        current: the revision stamped in it, ``None`` at base.
        head: the head revision of this code.
        known: the current revision exists in this code's scripts.
    """

    has_version_table: bool
    current: str | None
    head: str
    known: bool


def schema_state(engine: Engine) -> SchemaState:
    """Read the stamped revision of a database and compare it with the scripts.

    Args:
        engine: the registry engine.
    """
    script = ScriptDirectory.from_config(alembic_config())
    head = _single_head(script)
    try:
        with engine.connect() as conn:
            has_table = inspect(conn).has_table("alembic_version")
            current = MigrationContext.configure(conn).get_current_revision() if has_table else None
            conn.rollback()
    except exc.SQLAlchemyError as err:
        raise translate(err) from err
    known = True
    if current is not None:
        try:
            known = script.get_revision(current) is not None
        except CommandError:
            known = False
    return SchemaState(has_table, current, head, known)


def check_schema(engine: Engine, where: str) -> None:
    """Refuse a database whose schema is not exactly this code's head.

    Args:
        engine: the registry engine.
        where: how to name the database in messages (its directory or URL).

    Raises:
        WorkspaceNotFound: the database has never been migrated (no registry there).
        SchemaOutOfDate: an older revision (or base); the message says to migrate it.
        SchemaFromFuture: a revision this code does not know.
    """
    state = schema_state(engine)
    if not state.has_version_table:
        raise missing_workspace(where)
    if not state.known:
        raise SchemaFromFuture(
            f"the registry at {where} has schema revision {state.current!r}, newer than this "
            f"code knows (head {state.head!r}); install a newer release of the package"
        )
    if state.current != state.head:
        raise SchemaOutOfDate(
            f"the registry at {where} has schema revision {state.current or 'base'!r}, older than "
            f"{state.head!r}; migrate its schema to this version before opening it"
        )


def _run(engine: Engine, fn: str, revision: str) -> None:
    cfg = alembic_config()
    with engine.connect() as conn:
        # env.py begins the transaction itself (after switching SQLite foreign keys off).
        cfg.attributes["connection"] = conn.execution_options(**{WRITE_OPTION: True})
        try:
            getattr(command, fn)(cfg, revision)
        except CommandError as err:
            raise SchemaFromFuture(
                f"cannot migrate to {revision!r}: {err}; the database may be newer than this code"
            ) from err
        except exc.SQLAlchemyError as err:
            raise translate(err) from err


def upgrade(url: str, revision: str = "head") -> str:
    """Migrate a database up to ``revision``.

    Args:
        url: SQLAlchemy URL of the database (a SQLite file is created if missing).
        revision: target revision, ``head`` by default.

    Returns:
        The revision the database is at afterwards.

    Raises:
        SchemaFromFuture: the database holds a revision this code does not know.
    """
    engine = make_engine(url, pooled=False)
    try:
        state = schema_state(engine)
        if not state.known:
            raise SchemaFromFuture(
                f"the registry has schema revision {state.current!r}, newer than this code "
                f"knows (head {state.head!r}); install a newer release of the package"
            )
        _run(engine, "upgrade", revision)
        return schema_state(engine).current or "base"
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> str:
    """Migrate a database down to ``revision`` (``-1``, ``base``, or a revision id).

    Args:
        url: SQLAlchemy URL of the database.
        revision: target revision.

    Returns:
        The revision the database is at afterwards (``"base"`` when none).
    """
    engine = make_engine(url, pooled=False)
    try:
        _run(engine, "downgrade", revision)
        return schema_state(engine).current or "base"
    finally:
        engine.dispose()
