"""ASGI middleware of the HTTP API: request bodies over the limit are refused before anyone reads them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from upgrader.core.errors import UpgraderError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequestRejected(UpgraderError):
    """A request refused at the HTTP level (size, content type, form fields).

    Attributes:
        status_code: the HTTP status to answer with.
        code: a short machine-readable error code.
    """

    def __init__(self, message: str, status_code: int = 422, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class BodySizeLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` with 413 before the app reads them.

    A declared ``Content-Length`` is checked up front; a chunked body is counted as it streams.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_error(send, 400, "bad_request", "malformed Content-Length header")
                    return
                if declared > limit:
                    await send_error(send, 413, "request_too_large",
                                     f"request body is {declared} bytes; the limit is {limit}")
                    return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise RequestRejected(f"request body exceeds the limit of {limit} bytes", 413, "request_too_large")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except RequestRejected as exc:
            if started:
                raise
            await send_error(send, exc.status_code, exc.code, str(exc))


async def send_error(send: Send, status: int, code: str, detail: str) -> None:
    """Answer with the API's error body ``{"error": code, "detail": detail}`` straight over ASGI."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
