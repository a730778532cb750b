"""A port that is taken stops `upgrader serve` with exit 1 and a one-line error naming the port and
the fix, before anything says "serving"."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from upgrader.serving.http.run import PortUnavailable, bind_socket


def test_serve_on_a_taken_port_exits_1_naming_the_port_and_the_fix(case, loopback_socket) -> None:  # type: ignore[no-untyped-def]
    from upgrader.cli import app

    loopback_socket.listen(1)  # someone else serves here
    port = loopback_socket.getsockname()[1]
    res = CliRunner().invoke(app, ["serve", "--home", str(case.home), "--port", str(port), "--log-level", "warning"])
    assert res.exit_code == 1, (res.exit_code, res.stdout, res.stderr)
    assert "serving" not in res.stdout
    assert res.stderr == (f"error: cannot listen on 127.0.0.1:{port}: the port is already in use (another server?); "
                          "stop it or pass another --port N\n")


def test_bind_socket_says_why_in_its_own_words(loopback_socket) -> None:  # type: ignore[no-untyped-def]
    loopback_socket.listen(1)
    port = loopback_socket.getsockname()[1]
    with pytest.raises(PortUnavailable, match=f"cannot listen on 127.0.0.1:{port}: the port is already in use") as err:
        bind_socket("127.0.0.1", port)
    assert (err.value.reason, err.value.port) == ("in_use", port) and "--" not in str(err.value)
    with pytest.raises(PortUnavailable) as err:
        bind_socket("192.0.2.1", 0)  # TEST-NET-1: no address of this machine
    assert err.value.reason == "not_local"
    sock = bind_socket("127.0.0.1", 0)  # a free port binds
    sock.close()
