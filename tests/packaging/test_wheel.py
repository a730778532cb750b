"""The wheel carries what an installed package needs: every module, the migrations, the data files,
and dependencies split into the core install and its extras.

The wheel is built once (scripts/build-wheel: a copy of the tree, no build isolation, nothing
downloaded; about two seconds). The end-to-end proof on a fresh torch-free install is scripts/check-wheel,
which CI runs; these are the fast checks of the same promises.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from registry.migrations import head_revision

ROOT = Path(__file__).resolve().parents[2]
TOPS = ("upgrader", "registry", "tui")
#: The distribution packages that come from the top-level alembic/ folder, not from a package folder.
MIGRATION_PACKAGES = {"registry._alembic", "registry._alembic.versions"}


def _tree_packages() -> set[str]:
    return {".".join(p.parent.relative_to(ROOT).parts)
            for top in TOPS for p in (ROOT / top).rglob("__init__.py") if "__pycache__" not in p.parts}


def _tree_files(pattern: str) -> set[str]:
    return {p.relative_to(ROOT).as_posix()
            for top in TOPS for p in (ROOT / top).rglob(pattern) if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "build-wheel"), str(out)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=300)  # a bound for a hang
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


@pytest.fixture(scope="module")
def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_the_listed_packages_are_the_tree() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    missing = _tree_packages() - listed
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert listed - _tree_packages() == MIGRATION_PACKAGES


def test_the_wheel_holds_every_module_and_data_file(names: set[str]) -> None:
    expected = _tree_files("*.py") | _tree_files("*.tcss")
    assert "tui/app.tcss" in expected
    assert expected - names == set()


def test_the_wheel_carries_the_migrations_of_the_top_level_alembic_folder(names: set[str]) -> None:
    versions = {p.name for p in (ROOT / "alembic" / "versions").glob("*.py")}
    assert versions, "no migration scripts in alembic/versions"
    carried = {n.rpartition("/")[2] for n in names if n.startswith("registry/_alembic/versions/") and n.endswith(".py")}
    assert carried == versions
    assert {"registry/_alembic/env.py", "registry/_alembic/script.py.mako"} <= names
    assert not any(n.startswith("alembic/") for n in names)  # would shadow the Alembic library


def test_the_core_install_has_no_training_stack_and_the_extras_add_it(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        meta = Parser().parsestr(zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode())
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]

    def names_for(extra: str | None) -> set[str]:
        env = {"extra": extra or ""}
        return {r.name.lower() for r in requires if (r.marker is None) == (extra is None) and
                (r.marker is None or r.marker.evaluate(env))}

    core = names_for(None)
    assert {"onnxruntime", "faiss-cpu", "fastapi", "uvicorn", "textual", "sqlalchemy", "alembic", "typer"} <= core
    assert core.isdisjoint({"torch", "onnx", "onnxscript", "matplotlib", "psycopg"})
    assert names_for("train") == {"torch", "onnx", "onnxscript", "matplotlib"}
    assert names_for("postgres") == {"psycopg"}
    assert {"upgrader", "pytest"} <= names_for("dev")
    assert next(r for r in requires if r.name == "upgrader").extras == {"train", "postgres"}


def test_an_unpacked_wheel_opens_a_registry_with_no_checkout(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        from pathlib import Path
        import registry
        from registry import Registry
        from registry.migrations import head_revision, script_location
        site = Path({str(site)!r})
        assert site in Path(registry.__file__).parents, registry.__file__
        assert script_location() == site / "registry" / "_alembic", script_location()
        Registry.open({str(tmp_path / "ws")!r}, create=True).close()
        print(head_revision())
    """)
    # -I: no PYTHONPATH, no current folder on sys.path; cwd is a folder without a checkout
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == head_revision()  # the same head as the checkout's alembic/
