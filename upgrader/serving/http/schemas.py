"""Request and response bodies of the HTTP API (pydantic; unknown fields are refused, request fields
are strictly typed, and every limit a handler enforces on a field is stated in its schema)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, create_model

from registry import Generation

from upgrader.serving.config import DEFAULT_MAX_REQUEST_PIXELS


#: Base64 as the server decodes it (RFC 4648 alphabet, padded, nothing else): what ``images`` items
#: of a JSON body must match. :func:`upgrader.serving.http.forms.decode_base64` enforces exactly this.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

#: The characters Python's ``str.isspace`` calls whitespace: an id made only of these is refused, so
#: the schema's pattern for ids ("holds one character outside this set") is the server's own check.
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
              "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
NOT_BLANK_PATTERN = "[^" + "".join(f"\\u{ord(c):04x}" for c in WHITESPACE) + "]"


class StrictBody(BaseModel):
    """A body that refuses fields it does not declare (422), so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


class RequestBody(StrictBody):
    """A request body: strict types too, so ``"k": true`` or ``"k": "5"`` is refused (422), not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass(frozen=True)
class RequestLimits:
    """The limits a server enforces on request fields, stated in its request schemas."""

    max_images: int = 64
    max_k: int = 1000
    max_id_length: int = 256
    max_label_length: int = 255
    max_side: int = 4096
    max_pixels: int = 16_777_216
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS

    def image_list(self, what: str) -> Any:
        """The ``images`` field: 1..max_images non-empty base64 image files."""
        item = Annotated[StrictStr, Field(min_length=1, json_schema_extra={
            "pattern": BASE64_PATTERN, "contentEncoding": "base64", "contentMediaType": "image/*"})]
        return (list[item], Field(min_length=1, max_length=self.max_images, description=(  # type: ignore[valid-type]
            f"{what}: 1 to {self.max_images} base64-encoded image files (PNG, JPEG, WebP, ... any format "
            f"Pillow reads; 400 otherwise), each at most {self.max_side} px per side and {self.max_pixels:,} "
            f"pixels, {self.max_request_pixels:,} pixels in all (413 over a limit).")))

    def id_list(self) -> Any:
        """The ``ids`` field: one new, unique, non-blank id per image."""
        item = Annotated[StrictStr, Field(min_length=1, max_length=self.max_id_length,
                                          json_schema_extra={"pattern": NOT_BLANK_PATTERN})]
        return (list[item], Field(min_length=1, max_length=self.max_images, json_schema_extra={"uniqueItems": True},  # type: ignore[valid-type]
                                  description="One new external id per image, in the images' order (as many ids "
                                  "as images), unique within the request and not in the gallery yet (409)."))

    def label_list(self) -> Any:
        """The optional ``labels`` field: a label (or null) per image."""
        item = Annotated[StrictStr, Field(max_length=self.max_label_length)]
        return (list[item | None] | None, Field(None, max_length=self.max_images, description=(  # type: ignore[valid-type]
            "Optional: one label (or null for none) per image, in the images' order (as many labels as images).")))

    def models(self) -> tuple[type[RequestBody], type[RequestBody], type[RequestBody]]:
        """The JSON bodies of ``POST /search``, ``/embed`` and ``/gallery`` under these limits."""
        search = create_model(
            "SearchRequest", __base__=RequestBody, __doc__="JSON body of ``POST /search``.",
            images=self.image_list("Query images"),
            k=(StrictInt, Field(10, ge=1, le=self.max_k, description=f"Results per query image, 1 to {self.max_k}.")))
        embed = create_model("EmbedRequest", __base__=RequestBody, __doc__="JSON body of ``POST /embed``.",
                             images=self.image_list("Images to embed"))
        gallery = create_model("GalleryAddRequest", __base__=RequestBody, __doc__="JSON body of ``POST /gallery``.",
                               images=self.image_list("Images to add"), ids=self.id_list(), labels=self.label_list())
        return search, embed, gallery


#: The request bodies under the default limits (a server builds its own from its settings).
SearchRequest, EmbedRequest, GalleryAddRequest = RequestLimits().models()


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
    score: float = Field(description="What results are ranked by, higher is nearer: cosine similarity, mapped by "
                         "the score map of the generation that wrote the item when the search is calibrated.")
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
    calibrated: bool = Field(description="Whether the scores were mapped by the calibration stored for this "
                             "generation (false: raw cosine similarity).")
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

    status: str = Field(description="ok | degraded (serving, but the last poll failed) | no_production | refused "
                        "(answering no request: see refused); 503 for the last two")
    generation: str | None
    gallery_items: int
    last_poll_at: datetime | None
    last_error: str | None
    refused: str | None = Field(None, description="Why the service answers no request (the registry's production "
                                "alias disagrees with its history), or null.")
    calibrated: bool = Field(False, description="Whether searches are ranked by a stored score calibration now.")
    calibration_maps: int = Field(0, description="How many gallery generations' scores it maps (0: raw cosine).")


class ScoreMapOut(StrictBody):
    """One gallery generation's score map: ``scale * cosine + shift``."""

    scale: float
    shift: float


class CalibrationOut(StrictBody):
    """How searches are ranked across gallery generations."""

    enabled: bool = Field(description="Whether the server applies stored calibrations (false: --no-calibration).")
    applied: bool = Field(description="Whether a calibration ranks searches now (enabled, and one is stored for "
                          "the serving generation).")
    query_generation: int | None = Field(description="The generation whose queries it was fitted for, or null.")
    maps: dict[int, ScoreMapOut] = Field(description="Gallery generation id -> its score map (others: raw cosine).")


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
    gallery_version: int = Field(description="The registry gallery version the index reflects.")
    calibration: CalibrationOut


class ErrorResponse(StrictBody):
    """Every error answer."""

    error: str
    detail: str
