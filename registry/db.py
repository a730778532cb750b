"""Engines per backend, SQLite done right, the unit-of-work session and error translation.

SQLite: WAL (readers never block the writer), foreign keys on, a busy timeout, and every write
transaction opened with ``BEGIN IMMEDIATE``. pysqlite's own transaction handling is switched off
(``isolation_level=None``) and the ``begin`` event emits the ``BEGIN`` itself, so the write lock is taken
up front: concurrent writers then queue on the busy timeout instead of failing with "database is
locked" when a deferred transaction tries to upgrade its lock. Reads use a plain deferred ``BEGIN``.

PostgreSQL (or any other URL) is used as SQLAlchemy configures it; writes that must serialise take
row locks (``SELECT ... FOR UPDATE``) in the API.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from registry.errors import (
    BackendError,
    ConstraintViolation,
    DuplicateItem,
    RegistryError,
    UnknownGeneration,
)

#: Seconds a SQLite writer waits for the write lock before giving up.
SQLITE_BUSY_TIMEOUT_S = 60.0

#: Execution option that marks a connection whose transactions write (SQLite: ``BEGIN IMMEDIATE``).
WRITE_OPTION = "upgrader_write"


def _json_ready(value: Any) -> Any:
    """Turn numpy scalars/arrays into Python values and non-finite floats into ``None``.

    JSON has no NaN or infinity (PostgreSQL refuses them), so they are stored as ``null``.
    """
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_dumps(value: Any) -> str:
    """The JSON serializer the engines use (numpy-aware, NaN-free)."""
    return json.dumps(_json_ready(value), allow_nan=False)


def json_value(value: Any, what: str) -> Any:
    """Check a value is storable as JSON and return its plain-Python form (numpy converted, NaN null).

    Args:
        value: the value to store.
        what: how to name it in the error.

    Raises:
        ConstraintViolation: the value holds something JSON cannot represent.
    """
    try:
        return json.loads(json_dumps(value))
    except (TypeError, ValueError) as err:
        raise ConstraintViolation(f"cannot store {what}: {err}; pass plain JSON-able values") from None


def is_sqlite(url: URL) -> bool:
    """Whether a URL points at SQLite."""
    return url.get_backend_name() == "sqlite"


def make_engine(url: str | URL, *, pooled: bool = True) -> Engine:
    """Create an engine configured for the registry.

    Args:
        url: any SQLAlchemy URL; SQLite gets WAL, foreign keys, busy timeout and explicit BEGINs.
        pooled: ``False`` gives a ``NullPool`` engine (used for short-lived migration engines, so a
            connection with migration-time pragmas never goes back into a pool).

    Returns:
        The engine; nothing is connected yet.
    """
    url = make_url(url)
    kwargs: dict[str, Any] = {"json_serializer": json_dumps}
    if not pooled:
        kwargs["poolclass"] = NullPool
    if is_sqlite(url):
        # check_same_thread off: one engine serves several threads, each using its own connection.
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine)
    else:
        kwargs["pool_pre_ping"] = True
        engine = create_engine(url, **kwargs)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    """Install the pysqlite listeners: pragmas on connect, our own BEGIN on begin."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Take transaction control away from pysqlite; the "begin" listener emits BEGIN.
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            # NORMAL is durable across application crashes in WAL mode (only an OS crash can lose
            # the last commits), and much faster than FULL.
            cur.execute("PRAGMA synchronous=NORMAL")
            # 64 MiB page cache per connection: gallery ingests update a large unique index.
            cur.execute("PRAGMA cache_size=-65536")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _sqlstate(err: exc.DBAPIError) -> str:
    orig = err.orig
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def translate(err: exc.SQLAlchemyError) -> RegistryError:
    """Map a SQLAlchemy error to the registry's typed error (one line, names a fix).

    Args:
        err: the error SQLAlchemy raised.

    Returns:
        The :class:`RegistryError` to raise instead.
    """
    text = str(getattr(err, "orig", None) or err).splitlines()[0]
    if isinstance(err, exc.IntegrityError):
        state = _sqlstate(err)
        if state == "23505" or "UNIQUE constraint failed" in text:
            return DuplicateItem(f"an item with the same unique key already exists ({text}); use a new key")
        if state == "23503" or "FOREIGN KEY constraint failed" in text:
            return UnknownGeneration(
                f"a referenced row does not exist ({text}); register the generation or item first"
            )
        return ConstraintViolation(f"the registry refused the write ({text}); fix the input")
    if isinstance(err, exc.StatementError) and not isinstance(err, exc.DBAPIError):
        # Raised before the database saw anything: a value SQLAlchemy could not bind (e.g. an
        # object in a JSON column that is not JSON-able).
        return ConstraintViolation(f"cannot store a value ({text}); pass plain JSON-able values")
    if isinstance(err, exc.OperationalError):
        return BackendError(f"database error: {text}; check the database is reachable and not full")
    return BackendError(f"database error: {text}")


class UnitOfWork:
    """Hands out short sessions over one engine: one per call, so the registry is thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._read = sessionmaker(bind=engine, expire_on_commit=False)
        self._write = sessionmaker(
            bind=engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )
        # SQLite's deferred BEGIN already reads one snapshot (WAL) from the first read to the end;
        # elsewhere (PostgreSQL's READ COMMITTED) each statement would see a newer one.
        self._snapshot = (
            self._read
            if engine.dialect.name == "sqlite"
            else sessionmaker(bind=engine.execution_options(isolation_level="REPEATABLE READ"), expire_on_commit=False)
        )

    @contextmanager
    def session(self, *, write: bool = False, snapshot: bool = False) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on any error.

        Args:
            write: the session writes; on SQLite its transaction starts with ``BEGIN IMMEDIATE`` so it
                queues behind other writers instead of failing.
            snapshot: a read whose statements must all see one snapshot of the database (on
                PostgreSQL a ``REPEATABLE READ`` transaction); ignored when ``write``.

        Yields:
            An ORM session; its connection is usable for Core statements.

        Raises:
            RegistryError: every SQLAlchemy error is translated (see :func:`translate`).
        """
        sess = (self._write if write else self._snapshot if snapshot else self._read)()
        try:
            try:
                yield sess
                if write:
                    sess.commit()
                # A read needs no commit: close() below ends its transaction, and unlike rollback()
                # it leaves the loaded attributes of the (now detached) rows readable.
            except BaseException:
                sess.rollback()
                raise
            finally:
                sess.close()
        except exc.SQLAlchemyError as err:
            raise translate(err) from err

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
