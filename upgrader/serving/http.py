"""The ASGI app of ``upgrader serve``: FastAPI over :class:`upgrader.serving.service.QueryService`.

Endpoints (JSON in and out; ``/docs`` and ``/openapi.json`` describe them):

* ``POST /search`` — query images -> top-k gallery items per image, each naming the generation that
  wrote it, plus the generation that embedded the queries.
* ``POST /embed`` — images -> embeddings of the production generation.
* ``POST /gallery`` — images + ids (+ labels) -> stored in the gallery, embedded by production.
* ``GET /health`` — 200 while a generation serves (503 before the first promotion).
* ``GET /generation`` — the generation serving now, and where the registry's alias points.

Images travel either as ``multipart/form-data`` file parts named ``images`` (other fields: ``k``;
``ids`` and ``labels`` repeated per image) or as JSON with base64-encoded image files
(``{"images": ["iVBORw0...", ...], "k": 5}``). Any size or mode is accepted within the limits and
resized to the artifact's input. Errors are JSON ``{"error": CODE, "detail": MESSAGE}``: 400 bad
image, 409 duplicate id, 413 request / image too large, 415 wrong content type, 422 invalid fields
(unknown ones included), 503 nothing in production. A failed request changes nothing.

Promotion: the service swaps its (generation, embedder) snapshot when the ``production`` alias moves
(see :mod:`upgrader.serving.service`); every request reads the snapshot once, so none is dropped or mixed.

No torch here: numpy, onnxruntime, FAISS, FastAPI and the registry. Build the app with
:func:`create_app`; run it with :func:`run_server`, ``upgrader serve`` or
``python -m upgrader.serving.http --home DIR`` (the last needs no CLI, hence no training stack).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from registry import Generation
from registry.errors import DuplicateItem, EmbeddingError, RegistryError

from upgrader.core.errors import (
    ArtifactError,
    InterfaceMismatch,
    InvalidRequest,
    NoProduction,
    UpgraderError,
    WorkspaceError,
)
from upgrader.serving.service import BadImage, ImageTooLarge, QueryService, ServingConfig

log = logging.getLogger("upgrader.serving.http")

T = TypeVar("T")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_PORT = 8000


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


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ServerSettings:
    """Limits and behaviour of the HTTP server (the service's own are derived from these)."""

    poll_seconds: float = 1.0  # how often the production alias and new gallery rows are checked
    max_request_bytes: int = 16 * 1024 * 1024  # largest request body; larger -> 413 before parsing
    max_images: int = 64  # images per request
    max_k: int = 1000  # largest k of /search
    max_side: int = 4096  # largest width / height of an uploaded image
    max_pixels: int = 16_777_216  # largest width * height of an uploaded image
    threads: int = max(1, os.cpu_count() or 1)  # requests embedded / searched at once (worker threads)
    index: str = "flat"  # gallery index: flat (exact), hnsw or ivf (approximate)
    sync_on_search: bool = False  # pull new gallery rows before every search, not only on the poll tick
    recount_seconds: float = 30.0  # how often deletions are looked for (a count query; 0 = never)

    def __post_init__(self) -> None:
        if self.max_request_bytes < 1024:
            raise InvalidRequest("max_request_bytes must be at least 1024")
        if self.threads < 1:
            raise InvalidRequest(f"threads must be >= 1, got {self.threads}")

    def serving_config(self) -> ServingConfig:
        """The :class:`ServingConfig` of the service behind the app."""
        return ServingConfig(
            index=self.index,  # type: ignore[arg-type]
            poll_seconds=self.poll_seconds,
            recount_seconds=self.recount_seconds,
            sync_on_search=self.sync_on_search,
            max_images=self.max_images,
            max_k=self.max_k,
            max_side=self.max_side,
            max_pixels=self.max_pixels,
        )


# --------------------------------------------------------------------------- request / response models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Strict):
    """JSON body of ``POST /search``."""

    images: list[str] = Field(min_length=1, description="Base64-encoded image files (PNG, JPEG, ...).")
    k: int = Field(10, ge=1, description="Results per query image.")


class EmbedRequest(_Strict):
    """JSON body of ``POST /embed``."""

    images: list[str] = Field(min_length=1, description="Base64-encoded image files.")


class GalleryAddRequest(_Strict):
    """JSON body of ``POST /gallery``."""

    images: list[str] = Field(min_length=1, description="Base64-encoded image files.")
    ids: list[str] = Field(min_length=1, description="One new, unique external id per image.")
    labels: list[str | None] | None = Field(None, description="Optional label per image (null for none).")


class GenerationOut(_Strict):
    """A generation, as the API shows it."""

    id: int
    name: str
    kind: str
    architecture: str
    onnx_sha256: str

    @classmethod
    def of(cls, g: Generation) -> GenerationOut:
        return cls(id=g.id, name=g.name, kind=g.kind, architecture=g.architecture, onnx_sha256=g.onnx_sha256)


class HitOut(_Strict):
    """One gallery item found."""

    external_id: str
    score: float = Field(description="Cosine similarity, higher is nearer.")
    generation_id: int = Field(description="Generation whose model wrote this item's embedding.")
    generation_name: str
    label: str | None
    row_id: int


class QueryHits(_Strict):
    """The hits of one query image, nearest first."""

    hits: list[HitOut]


class SearchResponse(_Strict):
    """Answer of ``POST /search``."""

    generation: GenerationOut = Field(description="The generation that embedded the queries.")
    results: list[QueryHits]
    took_ms: float


class EmbedResponse(_Strict):
    """Answer of ``POST /embed``."""

    generation: GenerationOut
    dim: int
    embeddings: list[list[float]]


class GalleryAddResponse(_Strict):
    """Answer of ``POST /gallery``."""

    generation: GenerationOut = Field(description="The generation that embedded the new items.")
    added: int
    gallery_items: int


class HealthResponse(_Strict):
    """Answer of ``GET /health``."""

    status: str = Field(description="ok | degraded (serving, but the last poll failed) | no_production")
    generation: str | None
    gallery_items: int
    last_poll_at: datetime | None
    last_error: str | None


class GenerationResponse(_Strict):
    """Answer of ``GET /generation``."""

    serving: GenerationOut | None
    serving_since: datetime | None
    production_alias: int | None = Field(description="Where the registry's alias pointed at the last poll.")
    image_shape: list[int] | None = Field(description="[H, W, C] the serving artifact takes.")
    embedding_dim: int
    reloads: int
    index: str
    items_by_generation: dict[int, int]


class ErrorResponse(_Strict):
    """Every error answer."""

    error: str
    detail: str


# --------------------------------------------------------------------------- body size limit


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
                    await _send_error(send, 400, "bad_request", "malformed Content-Length header")
                    return
                if declared > limit:
                    await _send_error(send, 413, "request_too_large",
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
            await _send_error(send, exc.status_code, exc.code, str(exc))


async def _send_error(send: Send, status: int, code: str, detail: str) -> None:
    body = json.dumps({"error": code, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- request parsing


def _b64(images: list[str]) -> list[bytes]:
    out = []
    for i, text in enumerate(images):
        try:
            out.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise BadImage(f"image {i}: not valid base64") from None
    return out


def _model(cls: type[T], raw: bytes) -> T:
    try:
        return cls.model_validate_json(raw)  # type: ignore[attr-defined,no-any-return]
    except ValidationError as exc:
        raise RequestRejected(_explain(exc.errors()), 422, "invalid_request") from None


def _explain(errors: Any) -> str:
    parts = []
    for e in list(errors)[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        msg = "unknown field" if e.get("type") == "extra_forbidden" else e.get("msg", "invalid")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


async def _parse(request: Request, model: type[_Strict], max_images: int) -> dict[str, Any]:
    """The request's fields, from JSON (validated by ``model``) or multipart form data.

    Returns a dict of the model's fields with ``images`` as a list of encoded files (bytes).
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        data = _model(model, await request.body()).model_dump()
        data["images"] = _b64(data["images"])
        return data
    if ctype == "multipart/form-data":
        fields = set(model.model_fields)
        try:
            form = await request.form(max_files=max_images + 1, max_fields=3 * max_images + 10)
        except Exception as exc:  # Starlette raises its own errors for malformed or oversized forms
            if isinstance(exc, RequestRejected):
                raise
            raise RequestRejected(f"malformed multipart form ({str(exc)[:120]})", 400, "bad_request") from None
        try:
            unknown = sorted(set(form.keys()) - fields)
            if unknown:
                raise RequestRejected(f"{unknown[0]}: unknown field; allowed: {', '.join(sorted(fields))}", 422)
            images = []
            for part in form.getlist("images"):
                if isinstance(part, str):
                    raise RequestRejected("images: send image files (file parts), not text fields", 422)
                images.append(await part.read())
            raw: dict[str, Any] = {"images": ["x"] * len(images)}
            for name in fields - {"images"}:
                values = form.getlist(name)
                if not values:
                    continue
                if name in ("ids", "labels"):
                    raw[name] = [None if (name == "labels" and v == "") else v for v in values]
                else:
                    if len(values) > 1:
                        raise RequestRejected(f"{name}: given {len(values)} times", 422)
                    raw[name] = values[0]
            data = _model(model, json.dumps(raw).encode()).model_dump()
            data["images"] = images
            return data
        finally:
            await form.close()
    raise RequestRejected(
        f"unsupported content type {ctype or '(none)'!r}; send application/json (base64 images) or multipart/form-data",
        415, "unsupported_media_type",
    )


# --------------------------------------------------------------------------- the app


_ERROR_STATUS: list[tuple[type[Exception], int, str]] = [
    (RequestRejected, 422, "invalid_request"),  # status taken from the exception
    (ImageTooLarge, 413, "image_too_large"),
    (BadImage, 400, "bad_image"),
    (NoProduction, 503, "no_production"),
    (InvalidRequest, 422, "invalid_request"),
    (DuplicateItem, 409, "duplicate_id"),
    (EmbeddingError, 422, "bad_embedding"),
    (ArtifactError, 422, "bad_input"),
    (InterfaceMismatch, 500, "interface_mismatch"),
    (WorkspaceError, 500, "workspace_error"),
]


def _status_of(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, RequestRejected):
        return exc.status_code, exc.code
    for cls, status, code in _ERROR_STATUS:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal_error"


def create_app(
    home: str | Path | None = None,
    settings: ServerSettings | None = None,
    *,
    service: QueryService | None = None,
) -> FastAPI:
    """Build the ASGI app (and, unless given, the :class:`QueryService` behind it).

    The service is created here, not at first request, so a missing workspace or a broken
    production artifact stops ``upgrader serve`` before it binds a port. The app's lifespan closes
    the service at shutdown; when the app is used without a lifespan (some test clients), close
    ``app.state.service`` yourself.

    Args:
        home: workspace folder (None: ``$UPGRADER_HOME`` or ``./.upgrader``).
        settings: limits and behaviour.
        service: an existing service to expose instead of creating one (the caller closes it).

    Raises:
        WorkspaceError / RegistryError / ArtifactError: the workspace or artifact is unusable.
    """
    settings = settings or ServerSettings()
    owned = service is None
    svc = service if service is not None else QueryService(home, settings.serving_config())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owned:
                await anyio.to_thread.run_sync(svc.close)

    app = FastAPI(
        title="upgrader query service",
        version="1",
        description="Search a mixed-generation gallery with the production embedding model; promotions "
        "are picked up without a restart.",
        lifespan=lifespan,
        responses={code: {"model": ErrorResponse} for code in (400, 409, 413, 415, 422, 503)},
    )
    app.state.service = svc
    app.state.settings = settings
    app.state.limiter = None

    async def compute(fn: Callable[[], T]) -> T:
        # Embedding and FAISS release the GIL: a bounded worker pool runs them side by side while
        # the event loop keeps accepting requests.
        if app.state.limiter is None:
            app.state.limiter = anyio.CapacityLimiter(settings.threads)
        return await anyio.to_thread.run_sync(fn, limiter=app.state.limiter)

    @app.exception_handler(UpgraderError)
    @app.exception_handler(RegistryError)
    async def domain_error(request: Request, exc: Exception) -> JSONResponse:
        status, code = _status_of(exc)
        if status >= 500:
            log.error("request failed: %s", exc)
        return JSONResponse({"error": code, "detail": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid_request", "detail": _explain(exc.errors())}, status_code=422)

    def body_doc(model: type[BaseModel], form: dict[str, Any]) -> dict[str, Any]:
        return {"requestBody": {"required": True, "content": {
            "application/json": {"schema": model.model_json_schema()},
            "multipart/form-data": {"schema": {"type": "object", "required": ["images"], "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "binary"}}, **form}}},
        }}}

    @app.post("/search", response_model=SearchResponse, summary="Top-k gallery items per query image",
              openapi_extra=body_doc(SearchRequest, {"k": {"type": "integer", "minimum": 1, "default": 10}}))
    async def search(request: Request) -> SearchResponse:
        t0 = time.perf_counter()
        data = await _parse(request, SearchRequest, settings.max_images)

        def run() -> SearchResponse:
            result = svc.search(data["images"], data["k"])
            # generation_name may read the registry (a generation not seen yet): off the event loop
            results = [QueryHits(hits=[HitOut(external_id=h.external_id, score=h.score, generation_id=h.generation_id,
                                              generation_name=svc.generation_name(h.generation_id), label=h.label,
                                              row_id=h.row_id) for h in row]) for row in result.hits]
            return SearchResponse(generation=GenerationOut.of(result.generation), results=results,
                                  took_ms=(time.perf_counter() - t0) * 1e3)

        return await compute(run)

    @app.post("/embed", response_model=EmbedResponse, summary="Embed images with the production generation",
              openapi_extra=body_doc(EmbedRequest, {}))
    async def embed(request: Request) -> EmbedResponse:
        data = await _parse(request, EmbedRequest, settings.max_images)
        result = await compute(partial(svc.embed, data["images"]))
        return EmbedResponse(generation=GenerationOut.of(result.generation), dim=int(result.embeddings.shape[1]),
                             embeddings=result.embeddings.tolist())

    @app.post("/gallery", response_model=GalleryAddResponse, summary="Add items, embedded by production",
              openapi_extra=body_doc(GalleryAddRequest, {
                  "ids": {"type": "array", "items": {"type": "string"}},
                  "labels": {"type": "array", "items": {"type": "string"}}}))
    async def gallery_add(request: Request) -> GalleryAddResponse:
        data = await _parse(request, GalleryAddRequest, settings.max_images)
        result = await compute(partial(svc.add, data["images"], data["ids"], data.get("labels")))
        return GalleryAddResponse(generation=GenerationOut.of(result.generation), added=result.added,
                                  gallery_items=result.gallery_items)

    @app.get("/health", response_model=HealthResponse, summary="Liveness and what is served",
             responses={503: {"model": HealthResponse}})
    async def health() -> JSONResponse:
        st = svc.status()
        state = "no_production" if st.serving is None else ("degraded" if st.last_error else "ok")
        body = HealthResponse(status=state, generation=st.serving.name if st.serving else None,
                              gallery_items=st.gallery_items, last_poll_at=st.last_poll_at, last_error=st.last_error)
        return JSONResponse(body.model_dump(mode="json"), status_code=503 if st.serving is None else 200)

    @app.get("/generation", response_model=GenerationResponse, summary="The generation serving now")
    async def generation() -> GenerationResponse:
        st = svc.status()
        snap = svc._snapshot  # read once, like a request
        return GenerationResponse(
            serving=GenerationOut.of(st.serving) if st.serving else None,
            serving_since=st.serving_since,
            production_alias=st.production_alias,
            image_shape=list(snap.image_shape) if snap else None,
            embedding_dim=svc.workspace.registry.interface().embedding_dim,
            reloads=st.reloads,
            index=st.index,
            items_by_generation=st.items_by_generation,
        )

    # Outermost: the size check runs before FastAPI reads a byte of the body.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    return app


# --------------------------------------------------------------------------- running it


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
            f"--host {host} is not a loopback address; the service has no authentication, so put it behind "
            "a proxy that has, and pass --allow-remote to bind it anyway"
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


def free_loopback_socket() -> socket.socket:
    """A TCP socket bound to 127.0.0.1 on a free port (for tests and benchmarks)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def main(argv: list[str] | None = None) -> int:
    """``python -m upgrader.serving.http``: the server without the CLI (no training stack imported)."""
    p = argparse.ArgumentParser(prog="python -m upgrader.serving.http", description="Serve an upgrader workspace.")
    p.add_argument("--home", default=None, help="workspace folder (default $UPGRADER_HOME or ./.upgrader)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--poll-seconds", type=float, default=1.0)
    p.add_argument("--max-request-mb", type=float, default=16.0)
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--index", default="flat", choices=["flat", "hnsw", "ivf"])
    p.add_argument("--allow-remote", action="store_true")
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = ServerSettings(poll_seconds=a.poll_seconds, max_request_bytes=int(a.max_request_mb * 1024 * 1024),
                                  threads=a.threads, index=a.index)
        run_server(a.home, host=a.host, port=a.port, settings=settings, allow_remote=a.allow_remote,
                   log_level=a.log_level,
                   on_ready=lambda s: print(f"serving {s.snapshot().generation.name if s.status().serving else '(nothing promoted)'} "
                                            f"on http://{a.host}:{a.port}", flush=True))
    except (UpgraderError, RegistryError) as exc:
        print(f"error: {exc}", flush=True)
        return 2 if isinstance(exc, InvalidRequest) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "BodySizeLimit",
    "RequestRejected",
    "ServerSettings",
    "build_server",
    "check_host",
    "create_app",
    "free_loopback_socket",
    "is_loopback",
    "main",
    "run_server",
]
