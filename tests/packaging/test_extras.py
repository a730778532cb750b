"""A command that needs a missing extra says which one to install, in one line, and exits 1.

A server install lacks torch, onnx, matplotlib and psycopg; here they are made absent in a child
process (``sys.modules[name] = None``, which is how Python marks a module that cannot be imported),
and the real console-script entry point runs the command.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import upgrader
from upgrader.cli import app
from upgrader.core import version
from upgrader.core.extras import MissingExtra, missing_extra, requires_extra
from upgrader.data.readers import save_npz

ABSENT = ("torch", "onnx", "onnxscript", "matplotlib", "psycopg")


def _upgrader_without_extras(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(f"""
        import sys
        for name in {ABSENT!r}:
            sys.modules[name] = None
        sys.argv = ["upgrader", *{list(args)!r}]
        from upgrader.cli import main
        main()
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          timeout=120)  # a bound for a hang


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four classes of twelve 28x28 grey images: enough for a probe set of 2 + 2 per class."""
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    rng = np.random.default_rng(0)
    save_npz(path, rng.integers(0, 256, size=(48, 28, 28), dtype=np.uint8), np.repeat(np.arange(4), 12),
             ["a", "b", "c", "d"])
    return path


def _init_args(dataset: Path) -> list[str]:
    return ["--dataset", str(dataset), "-k", "8", "--probe-queries", "2", "--probe-gallery", "2"]


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_train_without_torch_names_the_train_extra(dataset: Path, tmp_path: Path) -> None:
    home = tmp_path / "ws"
    made = CliRunner().invoke(app, ["init", "--home", str(home), *_init_args(dataset)])
    assert made.exit_code == 0, made.stderr
    done = _upgrader_without_extras("train", "--home", str(home), "--classes", "all", "--epochs", "1", cwd=tmp_path)
    assert done.returncode == 1
    line = _one_line(done)
    assert "Traceback" not in done.stderr
    assert "pip install 'upgrader[train]'" in line and "torch" in line


def test_a_postgresql_registry_without_the_driver_names_the_postgres_extra(dataset: Path, tmp_path: Path) -> None:
    url = "postgresql+psycopg://upgrader:upgrader@127.0.0.1:9/none"  # never reached: the driver is missing
    done = _upgrader_without_extras("init", "--home", str(tmp_path / "ws"), *_init_args(dataset), "--db-url", url,
                                    cwd=tmp_path)
    assert done.returncode == 1
    line = _one_line(done)
    assert "pip install 'upgrader[postgres]'" in line and "psycopg" in line


def test_only_an_absent_module_of_an_extra_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    missing = missing_extra(ModuleNotFoundError("No module named 'matplotlib.pyplot'", name="matplotlib.pyplot"))
    assert isinstance(missing, MissingExtra) and (missing.extra, missing.module) == ("train", "matplotlib")
    # torch is installed here: failing to load (a broken build) keeps its own error, which says more
    assert missing_extra(ImportError("libtorch_cpu.so: cannot open shared object file", name="torch._C")) is None
    assert missing_extra(ModuleNotFoundError("No module named 'nothing_here'", name="nothing_here")) is None


def test_a_url_that_selects_psycopg2_says_to_name_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    missing = missing_extra(ModuleNotFoundError("No module named 'psycopg2'", name="psycopg2"))
    assert missing is not None and missing.extra == "postgres"
    assert "postgresql+psycopg://" in str(missing) and "upgrader[postgres]" in str(missing)


def test_requires_extra_turns_only_a_missing_extra_into_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(MissingExtra, match=r"pip install 'upgrader\[train\]'"), requires_extra():
        import onnxscript  # noqa: F401
    with pytest.raises(ModuleNotFoundError), requires_extra():
        import nothing_here  # type: ignore[import-not-found]  # noqa: F401


def test_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version as installed

    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.stdout.strip() == f"upgrader {installed('upgrader')}"
    assert upgrader.__version__ == version.VERSION == installed("upgrader")


def test_python_m_upgrader_server_names_a_missing_extra_in_one_line(tmp_path: Path) -> None:
    # ``python -m upgrader.server`` runs the serve command through ``upgrader.cli.run``, as the console
    # script does; the server is replaced by one that needs the missing driver, so no port is opened.
    code = textwrap.dedent(f"""
        import sys
        sys.modules["psycopg"] = None
        import upgrader.serving.http.run as http_run

        def run_server(*args, **kwargs):
            import psycopg  # noqa: F401

        http_run.run_server = run_server
        sys.argv = ["x", "--home", {str(tmp_path / "ws")!r}]
        import upgrader.server
        upgrader.server.main()
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)  # a bound for a hang
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "pip install 'upgrader[postgres]'" in _one_line(done)
