"""A workspace: the registry plus the folder that holds artifacts, and the settings ``init`` chose.

Layout of a workspace home (``--home DIR`` / ``$UPGRADER_HOME`` / ``./.upgrader``)::

    DIR/registry.db           the SQLite registry (unless workspace.json names another database URL)
    DIR/workspace.json        what `upgrader init` chose: dataset, probe sizes, database URL
    DIR/artifacts/<gen name>/ model.onnx, checkpoint.pt and memory.npz of each generation

This module imports no torch: the server side opens workspaces too.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from registry import Registry
from registry import validation
from registry.errors import ConstraintViolation, WorkspaceNotFound

from upgrader.core.errors import InvalidRequest, WorkspaceError
from upgrader.core.files import write_atomic

CONFIG_FILE = "workspace.json"
ARTIFACTS_DIR = "artifacts"


@dataclass(frozen=True)
class WorkspaceConfig:
    """Settings recorded by ``upgrader init``; later commands read them instead of asking again."""

    dataset: str  # dataset spec the lineage trains on and the probe set came from
    num_classes: int  # K: d-Simplex vertices preallocated for the lineage
    probe_query_per_class: int  # probe queries per class (held out from training)
    probe_gallery_per_class: int  # probe gallery items per class (held out from training)
    probe_split: str  # dataset split the probe set was drawn from ("test" for IDX folders)
    seed: int  # seed of the probe draw and the default seed of training runs
    db_url: str | None = None  # SQLAlchemy URL of the registry; None means DIR/registry.db
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def to_json(self) -> str:
        """Serialise for workspace.json."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def resolve_home(home: str | Path | None) -> Path:
    """The workspace folder: the argument, else ``$UPGRADER_HOME``, else ``./.upgrader``."""
    if home is not None and str(home) != "":
        return Path(home).expanduser().resolve()
    env = os.environ.get("UPGRADER_HOME")
    return Path(env).expanduser().resolve() if env else Path(".upgrader").resolve()


class Workspace:
    """An open workspace: ``home``, its ``config`` and its ``registry``. Close it when done."""

    def __init__(self, home: Path, config: WorkspaceConfig, registry: Registry) -> None:
        self.home = home
        self.config = config
        self.registry = registry

    @property
    def artifacts_dir(self) -> Path:
        """Folder that holds one sub-folder of artifacts per generation."""
        return self.home / ARTIFACTS_DIR

    def generation_dir(self, name: str) -> Path:
        """Artifact folder of the generation called ``name``, refused unless it lies inside
        :attr:`artifacts_dir`.

        The name is checked against the registry's pattern first, and the path is resolved (links
        included) before it is compared, so no name can make a command write outside the workspace.

        Raises:
            InvalidRequest: the name breaks the pattern, or its folder would lie outside the artifacts folder.
        """
        name = check_generation_name(name)
        root = self.artifacts_dir.resolve()
        folder = (root / name).resolve()
        if folder.parent != root:
            raise InvalidRequest(
                f"generation name {name!r} would put its artifacts at {folder}, outside {root}; choose a plain name",
                subject="name",
            )
        return folder

    def resolve(self, stored: str) -> Path:
        """Turn a path stored in the registry (relative to home, or absolute) into an absolute path."""
        path = Path(stored)
        return path if path.is_absolute() else self.home / path

    def relative(self, path: Path) -> str:
        """Path to store in the registry: relative to home when inside it, so a workspace can move."""
        try:
            return str(path.resolve().relative_to(self.home))
        except ValueError:
            return str(path.resolve())

    def close(self) -> None:
        """Release the registry's connections."""
        self.registry.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_generation_name(name: str) -> str:
    """The name, checked against the registry's pattern for generation names before anything is written.

    The registry owns the rule (:func:`registry.validation.generation_name`); this turns its refusal
    into a usage error, since the name is what the user typed.

    Raises:
        InvalidRequest: the name breaks the pattern (subject ``name``).
    """
    try:
        return validation.generation_name(name)
    except ConstraintViolation as exc:
        raise InvalidRequest(str(exc), subject="name") from None


def _registry_location(home: Path, config: WorkspaceConfig) -> str:
    return config.db_url or str(home)


def registry_location(home: str | Path | None = None) -> str:
    """Where the workspace's registry lives (its database URL, or the folder), without opening it."""
    root = resolve_home(home)
    return _registry_location(root, read_config(root))


def read_config(root: Path) -> WorkspaceConfig:
    """The workspace.json of the workspace at ``root``.

    Raises:
        WorkspaceError: no workspace there (subject ``workspace``), or a bad file.
    """
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise WorkspaceError(
            f"no upgrader workspace at {root}; create one there, or open an existing one",
            subject="workspace",
        )
    try:
        return WorkspaceConfig(**json.loads(cfg_path.read_text()))
    except (ValueError, TypeError) as exc:
        raise WorkspaceError(f"{cfg_path} is not a valid workspace file ({exc}); re-create the workspace") from exc


def open_workspace(home: str | Path | None = None) -> Workspace:
    """Open an existing workspace.

    Raises:
        WorkspaceError: no workspace at ``home`` (the message names ``upgrader init``).
        registry.errors.RegistryError: the registry refuses (schema out of date, ...).
    """
    root = resolve_home(home)
    config = read_config(root)
    try:
        registry = Registry.open(_registry_location(root, config))
    except WorkspaceNotFound as exc:
        raise WorkspaceError(f"the workspace at {root} has no registry ({exc})") from exc
    return Workspace(root, config, registry)


def create_workspace(home: str | Path | None, config: WorkspaceConfig) -> Workspace:
    """Create the folder, migrate a new registry to head and record ``config``.

    Raises:
        WorkspaceError: a workspace already exists at ``home``.
    """
    root = resolve_home(home)
    if (root / CONFIG_FILE).exists():
        raise WorkspaceError(f"a workspace already exists at {root}; use it, or choose another folder", subject="home")
    root.mkdir(parents=True, exist_ok=True)
    (root / ARTIFACTS_DIR).mkdir(exist_ok=True)
    registry = Registry.open(_registry_location(root, config), create=True)
    return Workspace(root, config, registry)


def save_config(ws: Workspace) -> None:
    """Write ``ws.config`` to workspace.json atomically (the last step of ``init``)."""
    write_atomic(ws.home / CONFIG_FILE, ws.config.to_json().encode())
