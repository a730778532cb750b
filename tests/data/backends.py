"""Registry databases on both backends for workspace tests outside tests/registry.

SQLite: ``None`` (the workspace's own file). PostgreSQL: a fresh schema of the server named by
``UPGRADER_TEST_PG_URL`` (search_path in the connection options), dropped afterwards; skipped only
when that variable is unset (``bash scripts/start-postgres`` prints a URL).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

PG_ENV = "UPGRADER_TEST_PG_URL"
#: Parameters for a backend fixture: ``@pytest.fixture(params=BACKENDS)``.
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextmanager
def database_url(kind: str) -> Iterator[str | None]:
    """The ``db_url`` to create a workspace with on backend ``kind`` ("sqlite" or "postgres")."""
    if kind == "sqlite":
        yield None
        return
    server = os.environ.get(PG_ENV)
    if not server:
        pytest.skip(f"{PG_ENV} is not set (scripts/start-postgres starts a server)")
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    schema = f"t_ws_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = make_url(server).update_query_dict({"options": f"-csearch_path={schema} -csynchronous_commit=off"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()
