"""Limits and behaviour of the HTTP server; the query service's own configuration derives from them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from upgrader.core.errors import InvalidRequest
from upgrader.serving.config import DEFAULT_MAX_REQUEST_PIXELS, ServingConfig
from upgrader.serving.http.auth import check_token
from upgrader.serving.http.schemas import RequestLimits

DEFAULT_PORT = 8000


@dataclass(frozen=True)
class ServerSettings:
    """Limits and behaviour of the HTTP server (the service's own are derived from these)."""

    poll_seconds: float = 1.0  # how often the production alias and new gallery rows are checked
    max_request_bytes: int = 16 * 1024 * 1024  # largest request body; larger -> 413 before parsing
    max_images: int = 64  # images per request
    max_k: int = 1000  # largest k of /search
    max_side: int = 4096  # largest width / height of an uploaded image
    max_pixels: int = 16_777_216  # largest width * height of an uploaded image
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS  # width * height summed over a request's images
    threads: int = max(1, os.cpu_count() or 1)  # requests embedded / searched at once (worker threads)
    index: str = "flat"  # gallery index: flat (exact), hnsw or ivf (approximate)
    sync_on_search: bool = False  # pull gallery changes before every search, not only on the poll tick
    calibrate: bool = True  # rank by the score calibration stored for production (False: raw cosine)
    # Bearer tokens (upgrader.serving.http.auth); kept out of repr so they never reach a log.
    token: str | None = field(default=None, repr=False)  # for every endpoint (None: reads are open)
    write_token: str | None = field(default=None, repr=False)  # for POST /gallery only, when separate

    def __post_init__(self) -> None:
        if self.max_request_bytes < 1024:
            raise InvalidRequest("max_request_bytes must be at least 1024")
        if self.threads < 1:
            raise InvalidRequest(f"threads must be >= 1, got {self.threads}")
        if self.token is not None:
            check_token(self.token, "the server settings (token)")
        if self.write_token is not None:
            check_token(self.write_token, "the server settings (write_token)")
        self.serving_config()  # the service's own checks, now rather than at start-up

    @property
    def authenticated(self) -> bool:
        """Whether any request needs a token."""
        return self.token is not None or self.write_token is not None

    def serving_config(self) -> ServingConfig:
        """The :class:`ServingConfig` of the service behind the app."""
        return ServingConfig(
            index=self.index,  # type: ignore[arg-type]
            poll_seconds=self.poll_seconds,
            calibrate=self.calibrate,
            sync_on_search=self.sync_on_search,
            max_images=self.max_images,
            max_k=self.max_k,
            max_side=self.max_side,
            max_pixels=self.max_pixels,
            max_request_pixels=self.max_request_pixels,
        )

    def request_limits(self) -> RequestLimits:
        """The limits the request schemas state (the same numbers the service enforces)."""
        cfg = self.serving_config()
        return RequestLimits(max_images=cfg.max_images, max_k=cfg.max_k, max_id_length=cfg.max_id_length,
                             max_label_length=cfg.max_label_length, max_side=cfg.max_side,
                             max_pixels=cfg.max_pixels, max_request_pixels=cfg.max_request_pixels)
