"""Running the HTTP API: which addresses it may bind, and the uvicorn server around the app."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from upgrader.core.errors import InvalidRequest
from upgrader.serving.http.app import create_app
from upgrader.serving.http.settings import DEFAULT_PORT, ServerSettings
from upgrader.serving.service import QueryService


def is_loopback(host: str) -> bool:
    """Whether ``host`` names a loopback address (``localhost`` counts)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback address unless explicitly allowed: the API has no authentication.

    Raises:
        InvalidRequest: ``host`` is not loopback and ``allow_remote`` is False.
    """
    if not is_loopback(host) and not allow_remote:
        raise InvalidRequest(
            f"{host} is not a loopback address; the service has no authentication, so put it behind "
            "a proxy that has, and allow remote binding explicitly to bind it anyway"
        )


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

    Args:
        home: workspace folder (None: ``$UPGRADER_HOME`` or ``./.upgrader``).
        host: address to bind; a non-loopback one needs ``allow_remote``.
        port: TCP port.
        settings: limits and behaviour.
        allow_remote: bind a non-loopback address (the API has no authentication).
        log_level: uvicorn's log level.
        on_ready: called with the service once it is loaded, before the port is bound.

    Raises:
        InvalidRequest: a non-loopback host without ``allow_remote``.
        WorkspaceError / RegistryError / ArtifactError: before binding, if the workspace is unusable.
    """
    check_host(host, allow_remote)
    app = create_app(home, settings)
    if on_ready is not None:
        on_ready(app.state.service)
    server = build_server(app, host, port, log_level=log_level)
    try:
        server.run()
    finally:
        app.state.service.close()  # idempotent; the lifespan may have closed it already
