"""Request and response bodies of the HTTP API (pydantic; unknown fields are refused)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from registry import Generation


class StrictBody(BaseModel):
    """A body that refuses fields it does not declare (422), so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


class SearchRequest(StrictBody):
    """JSON body of ``POST /search``."""

    images: list[str] = Field(min_length=1, description="Base64-encoded image files (PNG, JPEG, ...).")
    k: int = Field(10, ge=1, description="Results per query image.")


class EmbedRequest(StrictBody):
    """JSON body of ``POST /embed``."""

    images: list[str] = Field(min_length=1, description="Base64-encoded image files.")


class GalleryAddRequest(StrictBody):
    """JSON body of ``POST /gallery``."""

    images: list[str] = Field(min_length=1, description="Base64-encoded image files.")
    ids: list[str] = Field(min_length=1, description="One new, unique external id per image.")
    labels: list[str | None] | None = Field(None, description="Optional label per image (null for none).")


class GenerationOut(StrictBody):
    """A generation, as the API shows it."""

    id: int
    name: str
    kind: str
    architecture: str
    onnx_sha256: str

    @classmethod
    def of(cls, g: Generation) -> GenerationOut:
        """The API view of a registry generation."""
        return cls(id=g.id, name=g.name, kind=g.kind, architecture=g.architecture, onnx_sha256=g.onnx_sha256)


class HitOut(StrictBody):
    """One gallery item found."""

    external_id: str
    score: float = Field(description="Cosine similarity, higher is nearer.")
    generation_id: int = Field(description="Generation whose model wrote this item's embedding.")
    generation_name: str
    label: str | None
    row_id: int


class QueryHits(StrictBody):
    """The hits of one query image, nearest first."""

    hits: list[HitOut]


class SearchResponse(StrictBody):
    """Answer of ``POST /search``."""

    generation: GenerationOut = Field(description="The generation that embedded the queries.")
    results: list[QueryHits]
    took_ms: float


class EmbedResponse(StrictBody):
    """Answer of ``POST /embed``."""

    generation: GenerationOut
    dim: int
    embeddings: list[list[float]]


class GalleryAddResponse(StrictBody):
    """Answer of ``POST /gallery``."""

    generation: GenerationOut = Field(description="The generation that embedded the new items.")
    added: int
    gallery_items: int


class HealthResponse(StrictBody):
    """Answer of ``GET /health``."""

    status: str = Field(description="ok | degraded (serving, but the last poll failed) | no_production")
    generation: str | None
    gallery_items: int
    last_poll_at: datetime | None
    last_error: str | None


class GenerationResponse(StrictBody):
    """Answer of ``GET /generation``."""

    serving: GenerationOut | None
    serving_since: datetime | None
    production_alias: int | None = Field(description="Where the registry's alias pointed at the last poll.")
    image_shape: list[int] | None = Field(description="[H, W, C] the serving artifact takes.")
    embedding_dim: int
    reloads: int
    index: str
    items_by_generation: dict[int, int]


class ErrorResponse(StrictBody):
    """Every error answer."""

    error: str
    detail: str
