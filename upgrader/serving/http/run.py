"""Running the HTTP API: which addresses it may bind, binding the port, and the uvicorn server."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from upgrader.core.errors import InvalidRequest, UpgraderError
from upgrader.serving.http.app import create_app
from upgrader.serving.http.settings import DEFAULT_PORT, ServerSettings
from upgrader.serving.service import QueryService


class PortUnavailable(UpgraderError):
    """The address cannot be listened on (the port is taken, privileged, or the host is not this machine's).

    Attributes:
        host, port: what was asked for.
        reason: ``"in_use"``, ``"denied"``, ``"not_local"`` or ``"other"``, for a front end's own words.
    """

    def __init__(self, message: str, host: str, port: int, reason: str) -> None:
        super().__init__(message, subject="port")
        self.host = host
        self.port = port
        self.reason = reason


def is_loopback(host: str) -> bool:
    """Whether ``host`` names a loopback address (``localhost`` counts)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool, *, authenticated: bool = False) -> None:
    """Refuse a non-loopback address unless remote binding is allowed *and* requests need a token.

    Raises:
        InvalidRequest: ``host`` is not loopback and ``allow_remote`` is False, or no token is set.
    """
    if is_loopback(host):
        return
    if not allow_remote:
        raise InvalidRequest(
            f"{host} is not a loopback address; allow remote binding explicitly, with a bearer token, to bind it",
            subject="host",
        )
    if not authenticated:
        raise InvalidRequest(
            f"serving on {host} needs a bearer token (a token file or UPGRADER_TOKEN): without one, anyone who "
            "can reach the server could write to the gallery", subject="token",
        )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``, bound before anything says the server is up.

    Raises:
        PortUnavailable: the port is in use, not allowed, or ``host`` is no address of this machine.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a TIME_WAIT port is free
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason, why = {
            errno.EADDRINUSE: ("in_use", "the port is already in use (another server?); stop it or choose another port"),
            errno.EACCES: ("denied", "permission denied (ports below 1024 need privileges); choose a port from 1024 up"),
            errno.EADDRNOTAVAIL: ("not_local", "the address is not one of this machine's; choose one it has, or 127.0.0.1"),
        }.get(exc.errno or 0, ("other", f"{exc.strerror or exc}; choose another address or port"))
        raise PortUnavailable(f"cannot listen on {host}:{port}: {why}", host, port, reason) from None
    sock.set_inheritable(True)
    return sock


def build_server(app: FastAPI, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 log_level: str = "warning") -> Any:
    """A ``uvicorn.Server`` for ``app`` (call ``.run()``, or ``.run(sockets=[sock])`` for a bound socket)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=10, access_log=False)
    return uvicorn.Server(config)


def run_server(
    home: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    settings: ServerSettings | None = None,
    allow_remote: bool = False,
    log_level: str = "info",
    on_ready: Callable[[QueryService], None] | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM finish the requests in flight, then stop).

    The port is bound before ``on_ready`` runs, so "serving" is never said of a port that is taken.

    Args:
        home: workspace folder (None: ``$UPGRADER_HOME`` or ``./.upgrader``).
        host: address to bind; a non-loopback one needs ``allow_remote`` and a token in ``settings``.
        port: TCP port.
        settings: limits, behaviour and bearer tokens.
        allow_remote: bind a non-loopback address.
        log_level: uvicorn's log level.
        on_ready: called with the service once it is loaded and the port bound, before requests are taken.

    Raises:
        InvalidRequest: a non-loopback host without ``allow_remote`` or without a token.
        WorkspaceError / RegistryError / ArtifactError: before binding, if the workspace is unusable.
        PortUnavailable: the port cannot be listened on (nothing was served).
    """
    settings = settings or ServerSettings()
    check_host(host, allow_remote, authenticated=settings.authenticated)
    app = create_app(home, settings)
    try:
        sock = bind_socket(host, port)
        try:
            if on_ready is not None:
                on_ready(app.state.service)
            build_server(app, host, port, log_level=log_level).run(sockets=[sock])
        finally:
            sock.close()
    finally:
        app.state.service.close()  # idempotent; the lifespan may have closed it already
