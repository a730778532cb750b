"""Bearer-token authentication of the HTTP API.

A server bound beyond loopback must have a token (``upgrader serve --allow-remote`` refuses to start
without one): otherwise anyone who can reach it could write to the gallery. One token guards every
endpoint; a second, *write* token, when given, is the only one that opens ``POST /gallery``, and
reads accept either (with a write token alone, reads stay open and only writes are guarded). A
loopback server needs none, but enforces a token it is given. The OpenAPI schema and the docs pages
hold no data and stay open, so a browser can load ``/docs``.

Tokens are compared with :func:`hmac.compare_digest` (time independent of where they differ), and
checked before a byte of the body is read, so a refused write stores nothing. Answers follow
RFC 6750: 401 with ``WWW-Authenticate: Bearer`` for a missing or wrong token, 403 for a read token
sent to a write endpoint; the body is the API's error shape ``{"error", "detail"}``.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable
from pathlib import Path

from upgrader.core.errors import InvalidRequest
from upgrader.serving.http.middleware import ASGIApp, Receive, Scope, Send

#: What a token may hold: RFC 6750's ``b64token`` characters (they travel in a header unescaped).
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
#: The shortest token accepted: 16 characters leave nothing to guess in practice.
MIN_TOKEN_LENGTH = 16
#: Endpoints that write; every other one reads.
WRITE_ROUTES = frozenset({("POST", "/gallery")})
#: Pages that describe the API and hold no data.
OPEN_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
REALM = 'Bearer realm="upgrader"'


def check_token(token: str, source: str) -> str:
    """``token`` if it is usable as a bearer token, else an error naming ``source`` (where it came from).

    Raises:
        InvalidRequest: shorter than :data:`MIN_TOKEN_LENGTH`, or characters a header cannot carry.
    """
    if not TOKEN_PATTERN.fullmatch(token):
        raise InvalidRequest(f"the token in {source} holds characters a bearer token cannot carry; use letters, "
                             "digits and -._~+/ only (e.g. the output of `openssl rand -hex 32`)", subject="token")
    if len(token) < MIN_TOKEN_LENGTH:
        raise InvalidRequest(f"the token in {source} is {len(token)} characters; use at least {MIN_TOKEN_LENGTH} "
                             "(e.g. the output of `openssl rand -hex 32`)", subject="token")
    return token


def read_token_file(path: str | Path) -> str:
    """The token a file holds (surrounding whitespace, a final newline included, is dropped).

    Raises:
        InvalidRequest: the file cannot be read, is empty, or holds no usable token.
    """
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read token file {path} ({exc.__class__.__name__}); give a readable file "
                             "holding one token", subject="token") from None
    if not text:
        raise InvalidRequest(f"token file {path} is empty; write a token into it (e.g. `openssl rand -hex 32 > {path}`)",
                             subject="token")
    return check_token(text, f"token file {path}")


def _bearer(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an ``Authorization: Bearer ...`` header, or None when there is none."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


def _matches(presented: bytes, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(presented, token.encode("ascii"))


class BearerAuth:
    """ASGI middleware: requests need ``Authorization: Bearer TOKEN`` as the module docstring says.

    Args:
        app: the app behind it.
        token: the token for every endpoint (None: reads are open).
        write_token: the token for write endpoints, when separate (None: ``token`` opens them too).
    """

    def __init__(self, app: ASGIApp, token: str | None, write_token: str | None = None) -> None:
        self.app = app
        self.token = token
        self.write_token = write_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        write = (scope.get("method", "GET"), scope.get("path")) in WRITE_ROUTES
        if write:
            accepted = [self.write_token or self.token]
        else:
            accepted = [self.token, self.write_token] if self.token is not None else []
        accepted = [t for t in accepted if t is not None]
        if not accepted:
            await self.app(scope, receive, send)
            return
        presented = _bearer(scope.get("headers", []))
        if presented is None:
            await _refuse(send, 401, "unauthorized", "this server needs a bearer token: send the header "
                          "`Authorization: Bearer TOKEN`", REALM)
            return
        # Every candidate is compared, so the time taken does not tell which one came close.
        results = [_matches(presented, t) for t in accepted]
        if any(results):
            await self.app(scope, receive, send)
            return
        if write and _matches(presented, self.token):
            await _refuse(send, 403, "forbidden", f"{scope.get('method')} {scope.get('path')} needs the write token; "
                          "the token sent allows reads only", f'{REALM}, error="insufficient_scope"')
            return
        await _refuse(send, 401, "unauthorized", "the bearer token sent is not valid for this server",
                      f'{REALM}, error="invalid_token"')


async def _refuse(send: Send, status: int, code: str, detail: str, challenge: str) -> None:
    body = json.dumps({"error": code, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", challenge.encode())]})
    await send({"type": "http.response.body", "body": body})
