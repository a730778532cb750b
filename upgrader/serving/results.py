"""What a query service hands back: the snapshot a request uses, results of each call, its status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from registry import Generation

from upgrader.compat.score_calibration import Calibration
from upgrader.runtime.embedder import Embedder
from upgrader.runtime.index import Hit, ScoreMaps


@dataclass(frozen=True)
class ModelSnapshot:
    """What one request uses from start to finish: a generation, its loaded artifact, and the score
    calibration fitted for its queries (swapped together, so they always belong to each other)."""

    generation: Generation
    embedder: Embedder
    loaded_at: datetime
    calibration: Calibration | None = None  # None: results ranked by raw cosine
    score_maps: ScoreMaps | None = None  # the calibration as the index takes it (None: none, or identity)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) the artifact takes."""
        return self.embedder.image_shape


@dataclass(frozen=True)
class SearchResult:
    """Top-k hits per query and the generation that embedded the queries."""

    generation: Generation
    hits: list[list[Hit]]  # one list per query, nearest first; each Hit names the generation that wrote it
    calibration: Calibration | None = None  # the score maps the ranking applied (None: raw cosine)


@dataclass(frozen=True)
class EmbedResult:
    """Embeddings and the generation that produced them."""

    generation: Generation
    embeddings: np.ndarray  # float32 [N, D], L2-normalised


@dataclass(frozen=True)
class AddResult:
    """Outcome of :meth:`QueryService.add`."""

    generation: Generation  # the generation that embedded (and is recorded as writing) the items
    added: int
    gallery_items: int  # items in the index afterwards


@dataclass(frozen=True)
class ServiceStatus:
    """A health snapshot of a running service."""

    serving: Generation | None  # generation new requests use (None: nothing promoted yet)
    production_alias: int | None  # where the registry's alias pointed at the last poll
    serving_since: datetime | None
    gallery_items: int
    items_by_generation: dict[int, int]
    last_row_id: int
    index: str
    reloads: int  # generation swaps since start
    rebuilds: int  # full index rebuilds since start
    last_poll_at: datetime | None
    last_error: str | None  # the last failed reload / sync, cleared by the next good tick
    watching: bool
    refused: str | None = None  # why no request is answered (the alias disagrees with its history), or None
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    gallery_version: int = 0  # the registry gallery version the index reflects
    calibrate: bool = True  # whether the service applies stored calibrations (ServingConfig.calibrate)
    calibration: Calibration | None = None  # what ranks searches now (None: raw cosine)
