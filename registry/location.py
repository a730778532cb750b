"""Where a workspace's registry lives: a directory holding ``registry.db``, the file, or a URL."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from registry.db import is_sqlite
from registry.errors import WorkspaceNotFound

#: File name of the SQLite registry inside a workspace directory.
DB_FILENAME = "registry.db"
#: Default workspace directory when neither a location nor $UPGRADER_HOME is given.
DEFAULT_HOME = "./.upgrader"
#: Environment variable naming the workspace (a directory or an SQLAlchemy URL).
HOME_ENV = "UPGRADER_HOME"


def resolve(location: str | os.PathLike[str] | None) -> tuple[str, Path | None, str]:
    """Turn a workspace location into its database.

    Args:
        location: a workspace directory, a ``registry.db`` file, an SQLAlchemy URL (anything
            containing ``://``), or ``None`` for ``$UPGRADER_HOME``, else ``./.upgrader``.

    Returns:
        (SQLAlchemy URL with its password, home directory or ``None`` for a URL, display name
        without the password).
    """
    if location is None:
        location = os.environ.get(HOME_ENV) or DEFAULT_HOME
    raw = os.fspath(location)
    if "://" in raw:
        url = make_url(raw)
        return url.render_as_string(hide_password=False), None, url.render_as_string(hide_password=True)
    path = Path(raw).expanduser().resolve()
    if path.is_file():
        # A registry.db file given directly: its folder is the workspace.
        home, db = path.parent, path
    else:
        home, db = path, path / DB_FILENAME
    url = URL.create("sqlite", database=str(db))
    return url.render_as_string(hide_password=False), home, str(home)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (``None`` for other backends and in-memory databases)."""
    parsed = make_url(url)
    if is_sqlite(parsed) and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database)
    return None


def missing_workspace(where: str) -> WorkspaceNotFound:
    """The error for a location that holds no registry."""
    return WorkspaceNotFound(f"no workspace registry at {where}; create a workspace there first")
