"""``python -m upgrader.server`` is the ``upgrader serve`` command under another name: one parser."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from upgrader.core.errors import InvalidRequest
from upgrader.serving.http.run import check_host

# What bench/serve_bench.py passes when it starts the server module.
BENCH_OPTIONS = {"--home", "--host", "--port", "--poll-seconds", "--threads", "--log-level"}


def _help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    out = subprocess.run([sys.executable, *args, "--help"], capture_output=True, text=True, env=env,
                         timeout=120)  # a bound for a hang
    assert out.returncode == 0, out.stderr
    return out.stdout


def _options(help_text: str) -> list[str]:
    """The options a help screen lists, in order: rows whose first word is an option."""
    return re.findall(r"^\W*(--[a-z][\w-]*)", help_text, flags=re.MULTILINE)


def test_server_module_offers_the_options_of_upgrader_serve() -> None:
    module = _help("-m", "upgrader.server")
    cli = _help("-c", "from upgrader.cli import main; main()", "serve")
    assert "python -m upgrader.server" in module
    assert _options(module) == _options(cli)
    assert BENCH_OPTIONS <= set(_options(module))


def test_the_host_check_names_the_problem_and_leaves_flags_to_the_cli() -> None:
    with pytest.raises(InvalidRequest, match="not a loopback address") as err:
        check_host("0.0.0.0", allow_remote=False)
    assert "--" not in str(err.value)
    with pytest.raises(InvalidRequest, match="needs a bearer token") as err:
        check_host("0.0.0.0", allow_remote=True)  # remote and unauthenticated: anyone could write
    assert "--" not in str(err.value)
    check_host("0.0.0.0", allow_remote=True, authenticated=True)
    check_host("localhost", allow_remote=False)
