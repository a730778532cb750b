"""The FastAPI app: the endpoints, and :func:`create_app`, which builds the app over a QueryService
with request models, OpenAPI text, error handlers and middleware (size limit, bearer auth) drawn
from one :class:`~.settings.ServerSettings`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry.errors import RegistryError

from upgrader.core.errors import UpgraderError
from upgrader.serving.http.auth import BearerAuth
from upgrader.serving.http.errors import domain_error, http_error, validation_error
from upgrader.serving.http.forms import parse_body
from upgrader.serving.http.middleware import BodySizeLimit
from upgrader.serving.http.openapi import auth_doc, body_doc, finish_schema, merge
from upgrader.serving.http.schemas import (
    CalibrationOut,
    EmbedResponse,
    ErrorResponse,
    GalleryAddResponse,
    GenerationOut,
    GenerationResponse,
    HealthResponse,
    HitOut,
    QueryHits,
    RequestBody,
    ScoreMapOut,
    SearchResponse,
)
from upgrader.serving.http.settings import ServerSettings
from upgrader.serving.service import QueryService

log = logging.getLogger("upgrader.serving.http")

T = TypeVar("T")

# --------------------------------------------------------------------------- endpoints


# The endpoints carry no docstrings on purpose: FastAPI would publish them as OpenAPI descriptions,
# and each route's ``summary`` (plus the schemas' field descriptions) is the documentation users see.
# They are registered per app by create_app, whose request models carry the app's own limits.


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


def _models(request: Request) -> tuple[type[RequestBody], type[RequestBody], type[RequestBody]]:
    return request.app.state.models  # type: ignore[no-any-return]


async def search(request: Request) -> SearchResponse:
    t0 = time.perf_counter()
    svc = _service(request)
    data = await parse_body(request, _models(request)[0], _settings(request).max_images)

    def run() -> SearchResponse:
        result = svc.search(data["images"], data["k"])
        # generation_name may read the registry (a generation not seen yet): off the event loop
        results = [QueryHits(hits=[HitOut(external_id=h.external_id, score=h.score, generation_id=h.generation_id,
                                          generation_name=svc.generation_name(h.generation_id), label=h.label,
                                          row_id=h.row_id) for h in row]) for row in result.hits]
        return SearchResponse(generation=GenerationOut.of(result.generation), results=results,
                              calibrated=result.calibration is not None, took_ms=(time.perf_counter() - t0) * 1e3)

    return await _compute(request, run)


async def embed(request: Request) -> EmbedResponse:
    data = await parse_body(request, _models(request)[1], _settings(request).max_images)
    result = await _compute(request, partial(_service(request).embed, data["images"]))
    return EmbedResponse(generation=GenerationOut.of(result.generation), dim=int(result.embeddings.shape[1]),
                         embeddings=result.embeddings.tolist())


async def gallery_add(request: Request) -> GalleryAddResponse:
    data = await parse_body(request, _models(request)[2], _settings(request).max_images)
    result = await _compute(request, partial(_service(request).add, data["images"], data["ids"], data.get("labels")))
    return GalleryAddResponse(generation=GenerationOut.of(result.generation), added=result.added,
                              gallery_items=result.gallery_items)


async def health(request: Request) -> JSONResponse:
    st = _service(request).status()
    if st.refused is not None:
        state = "refused"
    else:
        state = "no_production" if st.serving is None else ("degraded" if st.last_error else "ok")
    body = HealthResponse(status=state, generation=st.serving.name if st.serving else None,
                          gallery_items=st.gallery_items, last_poll_at=st.last_poll_at, last_error=st.last_error,
                          refused=st.refused, calibrated=st.calibration is not None,
                          calibration_maps=len(st.calibration.maps) if st.calibration else 0)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if state in ("ok", "degraded") else 503)


async def generation(request: Request) -> GenerationResponse:
    svc = _service(request)
    st = svc.status()
    snap = svc._snapshot  # read once, like a request
    cal = st.calibration
    return GenerationResponse(
        serving=GenerationOut.of(st.serving) if st.serving else None,
        serving_since=st.serving_since,
        production_alias=st.production_alias,
        image_shape=list(snap.image_shape) if snap else None,
        embedding_dim=svc.workspace.registry.interface().embedding_dim,
        reloads=st.reloads,
        index=st.index,
        items_by_generation=st.items_by_generation,
        gallery_version=st.gallery_version,
        calibration=CalibrationOut(
            enabled=st.calibrate, applied=cal is not None, query_generation=cal.query_gen if cal else None,
            maps={g: ScoreMapOut(scale=m.scale, shift=m.shift) for g, m in sorted(cal.maps.items())} if cal else {}),
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
        "are picked up without a restart. Every error is JSON {\"error\": CODE, \"detail\": MESSAGE}.",
        lifespan=lifespan,
        responses={code: {"model": ErrorResponse} for code in (400, 404, 409, 413, 415, 422, 503)},
    )
    app.state.service = svc
    app.state.settings = settings
    app.state.limiter = None
    app.state.models = models = settings.request_limits().models()
    search_model, embed_model, gallery_model = models
    post = [
        ("/search", search, search_model, SearchResponse, "Top-k gallery items per query image"),
        ("/embed", embed, embed_model, EmbedResponse, "Embed images with the production generation"),
        ("/gallery", gallery_add, gallery_model, GalleryAddResponse, "Add items, embedded by production"),
    ]
    for path, endpoint, model, response, summary in post:
        app.add_api_route(path, endpoint, methods=["POST"], response_model=response, summary=summary,
                          openapi_extra=merge(body_doc(model), auth_doc(settings, "POST", path)))
    app.add_api_route("/health", health, methods=["GET"], response_model=HealthResponse,
                      summary="Liveness and what is served", responses={503: {"model": HealthResponse}},
                      openapi_extra=auth_doc(settings, "GET", "/health"))
    app.add_api_route("/generation", generation, methods=["GET"], response_model=GenerationResponse,
                      summary="The generation serving now", openapi_extra=auth_doc(settings, "GET", "/generation"))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = finish_schema(schema, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(UpgraderError, domain_error)
    app.add_exception_handler(RegistryError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # The size check runs before FastAPI reads a byte of the body; the token check before that.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    if settings.authenticated:
        app.add_middleware(BearerAuth, token=settings.token, write_token=settings.write_token)
    return app
