"""Fixtures for the registry tests: every registry test runs on SQLite and on PostgreSQL.

SQLite: a template workspace is migrated to head once per session and copied per test (a file copy
is much faster than running the migrations again). PostgreSQL: each test gets a fresh schema of the
server named by ``UPGRADER_TEST_PG_URL`` (search_path in the connection options), dropped afterwards;
the postgres params are skipped only when that variable is unset.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, exc, inspect, text
from sqlalchemy.engine import Engine, make_url

from registry import GateReport, Generation, NewGeneration, Registry
from registry.migrations import head_revision
from registry.schema import Base

PG_ENV = "UPGRADER_TEST_PG_URL"
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

#: K of the test workspaces (embedding dim K-1 = 15).
K = 16

#: The triggers migration 0004 creates on PostgreSQL (the shared schema is rebuilt if one is missing).
PG_HISTORY_TRIGGERS = (
    "alias_history_no_update",
    "alias_history_no_delete",
    "alias_history_no_truncate",
    "aliases_no_delete",
    "aliases_no_truncate",
    "aliases_follow_history",
)


@dataclass(frozen=True)
class Backend:
    """An empty (not yet migrated) database location for one test."""

    name: str  # "sqlite" or "postgres"
    location: str  # what Registry.open takes: a directory or a URL
    url: str  # the SQLAlchemy URL


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine | None]:
    """An engine on the test server (None when no server is configured)."""
    url = os.environ.get(PG_ENV)
    if not url:
        yield None
        return
    engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"options": "-csynchronous_commit=off"})
    yield engine
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, pg_admin: Engine | None) -> Iterator[Backend]:
    """An empty database on each backend: a fresh directory, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        home = tmp_path / "ws"
        home.mkdir()
        yield Backend("sqlite", str(home), f"sqlite:///{home / 'registry.db'}")
        return
    if pg_admin is None:
        pytest.skip(f"{PG_ENV} is not set (scripts/start-postgres starts a server)")
    schema = f"t_reg_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    options = f"-csearch_path={schema} -csynchronous_commit=off"
    url = make_url(os.environ[PG_ENV]).update_query_dict({"options": options})
    rendered = url.render_as_string(hide_password=False)
    try:
        yield Backend("postgres", rendered, rendered)
    finally:
        with pg_admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite registry migrated to head once, copied by each test."""
    home = tmp_path_factory.mktemp("template")
    Registry.open(home, create=True).close()
    return home / "registry.db"


class PgSchema:
    """A PostgreSQL schema migrated to head once per session and emptied before each test.

    Creating the tables takes ~0.3 s on PostgreSQL (DDL), emptying them ~20 ms, so tests share one
    schema: ``fresh()`` truncates every table and resets the id sequences, and rebuilds the schema
    from scratch whenever a test left it anywhere but at head with all its tables (a test that
    downgrades, stamps or drops something cannot leak into the next).
    """

    def __init__(self, admin: Engine) -> None:
        self.admin = admin
        self.name = f"t_reg_{uuid.uuid4().hex[:12]}"
        # synchronous_commit off: tests kill clients, never the server, so waiting for WAL flushes
        # on every commit would only slow them down.
        options = f"-csearch_path={self.name} -csynchronous_commit=off"
        url = make_url(os.environ[PG_ENV]).update_query_dict({"options": options})
        self.url = url.render_as_string(hide_password=False)
        self._built = False

    def _rebuild(self) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
            conn.exec_driver_sql(f'CREATE SCHEMA "{self.name}"')
        Registry.upgrade(self.url)
        self._built = True

    def _intact(self) -> bool:
        with self.admin.connect() as conn:
            tables = set(inspect(conn).get_table_names(schema=self.name))
            if tables != set(Base.metadata.tables) | {"alembic_version"}:
                return False
            version = conn.exec_driver_sql(f'SELECT version_num FROM "{self.name}".alembic_version').all()
            # A test that dropped or disabled a history trigger must not leave the next one without it.
            triggers = conn.exec_driver_sql(
                "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND NOT t.tgisinternal AND t.tgenabled = 'O'",
                (self.name,),
            ).all()
        return [v for (v,) in version] == [head_revision()] and {t for (t,) in triggers} == set(PG_HISTORY_TRIGGERS)

    def fresh(self) -> str:
        """Empty (or rebuild) the schema and return its URL."""
        if not self._built or not self._intact():
            self._rebuild()
            return self.url
        # DELETE beats TRUNCATE on tables this small (TRUNCATE swaps and syncs new files per table).
        with self.admin.connect() as conn, conn.begin():
            # The history triggers refuse these deletes (as they should); switch them off meanwhile.
            for table in ("aliases", "alias_history"):
                conn.exec_driver_sql(f'ALTER TABLE "{self.name}"."{table}" DISABLE TRIGGER USER')
            for table in reversed(Base.metadata.sorted_tables):
                conn.exec_driver_sql(f'DELETE FROM "{self.name}"."{table.name}"')
            for table in ("aliases", "alias_history"):
                conn.exec_driver_sql(f'ALTER TABLE "{self.name}"."{table}" ENABLE TRIGGER USER')
            # The gallery's change counter, as migration 0005 leaves it on an empty gallery.
            conn.exec_driver_sql(f'INSERT INTO "{self.name}".gallery_clock (id, version) VALUES (1, 0)')
            seqs = conn.exec_driver_sql(
                "SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = %s",
                (self.name,),
            ).all()
            for (seq,) in seqs:
                conn.exec_driver_sql(f'ALTER SEQUENCE "{self.name}"."{seq}" RESTART WITH 1')
        return self.url

    def drop(self) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


@pytest.fixture(scope="session")
def pg_schema(pg_admin: Engine | None) -> Iterator[PgSchema | None]:
    """The session's shared, migrated PostgreSQL schema (None without a server)."""
    if pg_admin is None:
        yield None
        return
    schema = PgSchema(pg_admin)
    yield schema
    schema.drop()


@pytest.fixture(params=BACKENDS)
def migrated(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path, pg_schema: PgSchema | None
) -> Backend:
    """A database migrated to head and empty: a copy of the SQLite template, or the emptied PG schema."""
    if request.param == "sqlite":
        home = tmp_path / "ws"
        home.mkdir()
        shutil.copyfile(sqlite_template, home / "registry.db")
        return Backend("sqlite", str(home), f"sqlite:///{home / 'registry.db'}")
    if pg_schema is None:
        pytest.skip(f"{PG_ENV} is not set (scripts/start-postgres starts a server)")
    url = pg_schema.fresh()
    return Backend("postgres", url, url)


@pytest.fixture
def registry(migrated: Backend) -> Iterator[Registry]:
    """A registry migrated to head with no interface yet."""
    reg = Registry.open(migrated.location)
    yield reg
    reg.close()


@pytest.fixture
def ready(registry: Registry) -> Registry:
    """A registry with an interface (K=16) and four classes a..d."""
    registry.set_interface(K)
    registry.assign_classes(["a", "b", "c", "d"])
    return registry


@pytest.fixture
def make_gen(ready: Registry) -> Callable[..., Generation]:
    """Registers a generation: ``make_gen("g1", sha="s1")``."""

    def make(name: str, sha: str | None = None, **kw: object) -> Generation:
        fields: dict[str, object] = {
            "name": name,
            "kind": "initial",
            "method": "hoc",
            "architecture": "small_cnn",
            "onnx_path": f"/models/{name}.onnx",
            "onnx_sha256": sha or f"{name}-sha".ljust(64, "0"),
            "num_classes": K,
        }
        fields.update(kw)
        return ready.add_generation(NewGeneration(**fields))  # type: ignore[arg-type]

    return make


@pytest.fixture
def passing_report(ready: Registry) -> Callable[[Generation], GateReport]:
    """Stores a passing promote report for a generation's current artifact."""

    def make(gen: Generation, kind: str = "promote") -> GateReport:
        return ready.add_gate_report(gen.id, gen.onnx_sha256, True, kind, {"verdict": "pass"})

    return make


def _unit_rows(n: int, dim: int = K - 1, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def unit_rows() -> Callable[..., np.ndarray]:
    """``unit_rows(n, dim=15, seed=0)``: ``n`` random L2-normalised float32 rows."""
    return _unit_rows


class RawSql:
    """Plain SQL on a test database from outside the registry: the ``sqlite3`` module on the file (as
    the sqlite3 shell would), or a bare SQLAlchemy engine on PostgreSQL. Parameters are ``:name``."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def run(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        """Run one statement in its own transaction; returns the rows it yields (if any)."""
        if self.backend.name == "sqlite":
            con = sqlite3.connect(self.backend.url.removeprefix("sqlite:///"))
            try:
                rows = con.execute(sql, params).fetchall()
                con.commit()
                return rows
            finally:
                con.close()
        engine = create_engine(self.backend.url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(sql), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def refused(self, sql: str, **params: object) -> str:
        """Run a statement the database must refuse; returns the refusal's message."""
        errors = (sqlite3.IntegrityError,) if self.backend.name == "sqlite" else (exc.IntegrityError,)
        with pytest.raises(errors) as err:
            self.run(sql, **params)
        return str(err.value)

    def drop_trigger(self, name: str, table: str) -> None:
        """Drop one trigger (what a user with full access to the database could do)."""
        if self.backend.name == "sqlite":
            self.run(f"DROP TRIGGER {name}")
        else:
            self.run(f"DROP TRIGGER {name} ON {table}")

    def triggers(self) -> set[str]:
        """Names of the user triggers in the database."""
        if self.backend.name == "sqlite":
            return {r[0] for r in self.run("SELECT name FROM sqlite_master WHERE type = 'trigger'")}  # type: ignore[misc]
        rows = self.run(
            "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace"
        )
        return {r[0] for r in rows}  # type: ignore[misc]


@pytest.fixture
def raw_sql(migrated: Backend) -> RawSql:
    """Plain SQL on the test's database, bypassing the registry."""
    return RawSql(migrated)
