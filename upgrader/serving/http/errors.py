"""How the HTTP API answers a failure: every error, 404 and 405 included, is JSON
``{"error": CODE, "detail": MESSAGE}`` with the status the module's table gives its type."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry.errors import DuplicateItem, EmbeddingError

from upgrader.core.errors import ArtifactError, InterfaceMismatch, InvalidRequest, NoProduction, WorkspaceError
from upgrader.runtime.images import BadImage, ImageTooLarge
from upgrader.serving.decoding import PixelBudgetExceeded
from upgrader.serving.errors import ServingRefused
from upgrader.serving.http.forms import explain
from upgrader.serving.http.middleware import RequestRejected

log = logging.getLogger("upgrader.serving.http")

#: The error status and code of each exception type, most specific first.
ERROR_STATUS: list[tuple[type[Exception], int, str]] = [
    (RequestRejected, 422, "invalid_request"),  # status and code taken from the exception
    (PixelBudgetExceeded, 413, "too_many_pixels"),
    (ImageTooLarge, 413, "image_too_large"),
    (BadImage, 400, "bad_image"),
    (NoProduction, 503, "no_production"),
    (ServingRefused, 503, "serving_refused"),
    (InvalidRequest, 422, "invalid_request"),
    (DuplicateItem, 409, "duplicate_id"),
    (EmbeddingError, 422, "bad_embedding"),
    (ArtifactError, 422, "bad_input"),
    (InterfaceMismatch, 500, "interface_mismatch"),
    (WorkspaceError, 500, "workspace_error"),
]

#: Codes of the HTTP errors Starlette raises itself (no route, wrong method).
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def status_of(exc: Exception) -> tuple[int, str]:
    """The HTTP status and error code ``exc`` is answered with."""
    if isinstance(exc, RequestRejected):
        return exc.status_code, exc.code
    for cls, status, code in ERROR_STATUS:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal_error"


def error_body(code: str, detail: str) -> dict[str, str]:
    """The body of every error answer."""
    return {"error": code, "detail": detail}


async def domain_error(request: Request, exc: Exception) -> JSONResponse:
    """An error the product raised on purpose (UpgraderError, RegistryError)."""
    status, code = status_of(exc)
    detail = str(exc)
    if isinstance(exc, PixelBudgetExceeded):
        # Whoever runs the server can raise the budget; name the switch for them.
        detail += " (the server's limit: `upgrader serve --max-request-pixels N`)"
    if status >= 500:
        log.error("request failed: %s", exc)
    return JSONResponse(error_body(code, detail), status_code=status)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own validation (path or query parameters), in the API's error shape."""
    return JSONResponse(error_body("invalid_request", explain(exc.errors())), status_code=422)  # type: ignore[attr-defined]


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """A Starlette HTTP error (no such path, wrong method), in the API's error shape."""
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        detail = f"no endpoint {request.url.path}; see /docs for the API"
    elif status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}; allowed: {exc.headers.get('Allow', '?') if exc.headers else '?'}"
    else:
        detail = str(exc.detail)
    return JSONResponse(error_body(HTTP_CODES.get(status, "http_error"), detail), status_code=status,
                        headers=dict(exc.headers or {}))
