"""The FastAPI app: request parsing (JSON with base64 images, or multipart forms), the endpoints and
the mapping of domain errors to HTTP answers. :func:`create_app` builds it over a QueryService."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from registry.errors import DuplicateItem, EmbeddingError, RegistryError

from upgrader.core.errors import (
    ArtifactError,
    InterfaceMismatch,
    InvalidRequest,
    NoProduction,
    UpgraderError,
    WorkspaceError,
)
from upgrader.runtime.images import BadImage, ImageTooLarge
from upgrader.serving.http.middleware import BodySizeLimit, RequestRejected
from upgrader.serving.http.schemas import (
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    GalleryAddRequest,
    GalleryAddResponse,
    GenerationOut,
    GenerationResponse,
    HealthResponse,
    HitOut,
    QueryHits,
    SearchRequest,
    SearchResponse,
    StrictBody,
)
from upgrader.serving.http.settings import ServerSettings
from upgrader.serving.service import QueryService

log = logging.getLogger("upgrader.serving.http")

T = TypeVar("T")

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


async def _parse(request: Request, model: type[StrictBody], max_images: int) -> dict[str, Any]:
    """The request's fields, from JSON (validated by ``model``) or multipart form data.

    Returns a dict of the model's fields with ``images`` as a list of encoded files (bytes).
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        data = _model(model, await request.body()).model_dump()
        data["images"] = _b64(data["images"])
        return data
    if ctype == "multipart/form-data":
        return await _parse_form(request, model, max_images)
    raise RequestRejected(
        f"unsupported content type {ctype or '(none)'!r}; send application/json (base64 images) or multipart/form-data",
        415, "unsupported_media_type",
    )


async def _parse_form(request: Request, model: type[StrictBody], max_images: int) -> dict[str, Any]:
    """The fields of a multipart form, checked by ``model`` like a JSON body (images as file parts)."""
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


# --------------------------------------------------------------------------- errors


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


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    status, code = _status_of(exc)
    if status >= 500:
        log.error("request failed: %s", exc)
    return JSONResponse({"error": code, "detail": str(exc)}, status_code=status)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"error": "invalid_request", "detail": _explain(exc.errors())},  # type: ignore[attr-defined]
                        status_code=422)


# --------------------------------------------------------------------------- endpoints


# The endpoints carry no docstrings on purpose: FastAPI would publish them as OpenAPI descriptions,
# and each route's ``summary`` (plus the schemas' field descriptions) is the documentation users see.
router = APIRouter()


def _service(request: Request) -> QueryService:
    return request.app.state.service  # type: ignore[no-any-return]


def _settings(request: Request) -> ServerSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def _compute(request: Request, fn: Callable[[], T]) -> T:
    # Embedding and FAISS release the GIL: a bounded worker pool runs them side by side while the
    # event loop keeps accepting requests. The limiter is made on first use, inside the event loop.
    state = request.app.state
    if state.limiter is None:
        state.limiter = anyio.CapacityLimiter(state.settings.threads)
    return await anyio.to_thread.run_sync(fn, limiter=state.limiter)


def _body_doc(model: type[BaseModel], form: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for a body read by :func:`_parse`: the JSON model, or the equivalent multipart form."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "required": ["images"], "properties": {
            "images": {"type": "array", "items": {"type": "string", "format": "binary"}}, **form}}},
    }}}


@router.post("/search", response_model=SearchResponse, summary="Top-k gallery items per query image",
             openapi_extra=_body_doc(SearchRequest, {"k": {"type": "integer", "minimum": 1, "default": 10}}))
async def search(request: Request) -> SearchResponse:
    t0 = time.perf_counter()
    svc = _service(request)
    data = await _parse(request, SearchRequest, _settings(request).max_images)

    def run() -> SearchResponse:
        result = svc.search(data["images"], data["k"])
        # generation_name may read the registry (a generation not seen yet): off the event loop
        results = [QueryHits(hits=[HitOut(external_id=h.external_id, score=h.score, generation_id=h.generation_id,
                                          generation_name=svc.generation_name(h.generation_id), label=h.label,
                                          row_id=h.row_id) for h in row]) for row in result.hits]
        return SearchResponse(generation=GenerationOut.of(result.generation), results=results,
                              took_ms=(time.perf_counter() - t0) * 1e3)

    return await _compute(request, run)


@router.post("/embed", response_model=EmbedResponse, summary="Embed images with the production generation",
             openapi_extra=_body_doc(EmbedRequest, {}))
async def embed(request: Request) -> EmbedResponse:
    data = await _parse(request, EmbedRequest, _settings(request).max_images)
    result = await _compute(request, partial(_service(request).embed, data["images"]))
    return EmbedResponse(generation=GenerationOut.of(result.generation), dim=int(result.embeddings.shape[1]),
                         embeddings=result.embeddings.tolist())


@router.post("/gallery", response_model=GalleryAddResponse, summary="Add items, embedded by production",
             openapi_extra=_body_doc(GalleryAddRequest, {
                 "ids": {"type": "array", "items": {"type": "string"}},
                 "labels": {"type": "array", "items": {"type": "string"}}}))
async def gallery_add(request: Request) -> GalleryAddResponse:
    data = await _parse(request, GalleryAddRequest, _settings(request).max_images)
    result = await _compute(request, partial(_service(request).add, data["images"], data["ids"], data.get("labels")))
    return GalleryAddResponse(generation=GenerationOut.of(result.generation), added=result.added,
                              gallery_items=result.gallery_items)


@router.get("/health", response_model=HealthResponse, summary="Liveness and what is served",
            responses={503: {"model": HealthResponse}})
async def health(request: Request) -> JSONResponse:
    st = _service(request).status()
    state = "no_production" if st.serving is None else ("degraded" if st.last_error else "ok")
    body = HealthResponse(status=state, generation=st.serving.name if st.serving else None,
                          gallery_items=st.gallery_items, last_poll_at=st.last_poll_at, last_error=st.last_error)
    return JSONResponse(body.model_dump(mode="json"), status_code=503 if st.serving is None else 200)


@router.get("/generation", response_model=GenerationResponse, summary="The generation serving now")
async def generation(request: Request) -> GenerationResponse:
    svc = _service(request)
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


# --------------------------------------------------------------------------- the app


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
    app.add_exception_handler(UpgraderError, _domain_error)
    app.add_exception_handler(RegistryError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(router)
    # Outermost: the size check runs before FastAPI reads a byte of the body.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    return app
