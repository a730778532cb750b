"""Frozen dataclasses the registry hands out. ORM rows (``*Row``) never leave ``registry/``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

#: Lifecycle of a generation. ``production`` is held by at most one generation at a time, and only
#: the ``production`` alias moves it (see :meth:`registry.Registry.move_alias`). A new artifact sends a
#: generation back to ``candidate``; ``retired`` is what removing one the alias history names leaves,
#: and only a forced move brings a retired generation back.
GenerationStatus = Literal["candidate", "verified", "rejected", "production", "retired"]
GENERATION_STATUSES: tuple[str, ...] = ("candidate", "verified", "rejected", "production", "retired")

#: How a generation was made: the first of a lineage, a fine-tune of production, or a new architecture.
GenerationKind = Literal["initial", "finetune", "replacement"]
GENERATION_KINDS: tuple[str, ...] = ("initial", "finetune", "replacement")

#: Which half of the probe set an item belongs to.
ProbeSplit = Literal["query", "gallery"]
PROBE_SPLITS: tuple[str, ...] = ("query", "gallery")

#: The alias that serving follows.
PRODUCTION = "production"

#: Storage dtypes a workspace may choose for its gallery (probe embeddings are always float32).
EMBEDDING_DTYPES: tuple[str, ...] = ("float32", "float16")


@dataclass(frozen=True)
class Interface:
    """The contract every generation of the workspace shares: K, the embedding dim and the label map."""

    num_classes: int  # K, the number of d-Simplex vertices (preallocated, larger than any class count)
    embedding_dim: int  # K - 1
    label_map: dict[str, int]  # class name -> vertex index, append-only
    created_at: datetime
    embedding_dtype: str = "float32"  # how gallery embeddings are stored: "float32" or "float16"

    def vertex_of(self, class_name: str) -> int:
        """Vertex index of a class; raises ``KeyError`` for a class the interface does not know."""
        return self.label_map[class_name]

    @property
    def class_of(self) -> dict[int, str]:
        """Vertex index -> class name."""
        return {v: k for k, v in self.label_map.items()}


@dataclass(frozen=True)
class ProbeSet:
    """One split of the probe set, images included, so every generation embeds the very same pixels."""

    split: str  # "query" or "gallery"
    item_ids: np.ndarray  # int64 [N], registry ids of the probe items (stable order: ascending id)
    images: np.ndarray  # uint8 [N, H, W, C]
    vertices: np.ndarray  # int64 [N], vertex index of each item's class
    class_names: list[str]  # [N]
    source_uris: list[str | None]  # [N], where each image came from (dataset path#index), if known


@dataclass(frozen=True)
class NewGeneration:
    """What a caller supplies to register a generation; the registry assigns id, time and status."""

    name: str  # unique, human-friendly ("g2-finetune-4-5")
    kind: str  # one of GENERATION_KINDS
    method: str  # training method: hoc, ce, er, bct
    architecture: str  # model architecture name (small_cnn, resnet_narrow, resnet18, ...)
    onnx_path: str  # path of the ONNX artifact (absolute, or relative to the workspace home)
    onnx_sha256: str  # hex sha256 of the artifact's bytes
    num_classes: int  # K the generation was trained for; must equal the workspace's
    parent_id: int | None = None  # generation it was fine-tuned from / anchored on
    train_config: dict[str, Any] = field(default_factory=dict)  # the full training config, JSON-able
    data_fingerprint: str = ""  # hash of the training data (ids / bytes) so runs can be traced
    onnx_metadata: dict[str, str] = field(default_factory=dict)  # the artifact's metadata_props
    checkpoint_path: str | None = None  # PyTorch state-dict checkpoint, for fine-tuning later
    metrics: dict[str, Any] = field(default_factory=dict)  # training metrics (loss, accuracy, time)
    checkpoint_sha256: str | None = None  # hex sha256 of the checkpoint's bytes, when there is one


@dataclass(frozen=True)
class Generation:
    """A registered encoder generation."""

    id: int
    name: str
    kind: str
    method: str
    architecture: str
    parent_id: int | None
    num_classes: int
    train_config: dict[str, Any]
    data_fingerprint: str
    onnx_path: str
    onnx_sha256: str
    onnx_metadata: dict[str, str]
    checkpoint_path: str | None
    status: str
    created_at: datetime
    metrics: dict[str, Any]
    checkpoint_sha256: str | None = None  # sha256 of the checkpoint, recorded with it (None: unknown)


@dataclass(frozen=True)
class Evaluation:
    """Retrieval metrics of queries embedded by ``query_gen`` against a gallery embedded by ``gallery_gen``."""

    id: int
    query_gen: int
    gallery_gen: int
    metrics: dict[str, float]  # e.g. {"template_top1": .., "recall_at_1": .., "map": ..}
    created_at: datetime
    query_sha256: str = ""  # the query generation's artifact the metrics were computed with
    gallery_sha256: str = ""  # the gallery generation's artifact


@dataclass(frozen=True)
class GateReport:
    """A stored gate verdict for one generation and one exact artifact."""

    id: int
    generation_id: int
    artifact_sha256: str  # the artifact the verdict is about; promotion checks it is still the same
    passed: bool
    kind: str  # "promote" (candidate vs live generations) or "rollback" (upper triangle)
    report: dict[str, Any]  # the full report: matrix, failing pairs, numbers, margin, reasons
    created_at: datetime
    # The score calibration serving applies while this report backs the alias (None: none stored).
    calibration: dict[str, Any] | None = None


@dataclass(frozen=True)
class AliasMove:
    """One entry of an alias's append-only history."""

    id: int
    alias: str
    from_gen: int | None
    to_gen: int
    at: datetime
    actor: str
    gate_report_id: int | None
    reason: str
    forced: bool


@dataclass(frozen=True)
class GalleryMatrix:
    """The gallery (or a slice of it) as a search-ready matrix."""

    row_ids: np.ndarray  # int64 [N], registry row ids, ascending; usable as a cursor for increments
    external_ids: list[str]  # [N]
    generation_ids: np.ndarray  # int64 [N], generation that wrote each embedding
    labels: list[str | None]  # [N]
    matrix: np.ndarray  # float32 [N, D], C-contiguous

    def __len__(self) -> int:
        return int(self.matrix.shape[0])


@dataclass(frozen=True)
class GalleryChanges:
    """What changed in the gallery after a version: the cursor a server follows it by.

    Apply ``deleted_row_ids`` and then ``upserts`` (an upsert replaces the row with the same row id,
    a re-embedded row arrives again with its new generation), then keep ``version`` for the next call.
    """

    upserts: GalleryMatrix  # rows added or re-embedded after the version asked for, ascending row id
    deleted_row_ids: np.ndarray  # int64, ascending: rows deleted since then (none that exist again)
    version: int  # the gallery's version when read: pass it to the next call

    def __len__(self) -> int:
        return len(self.upserts) + int(self.deleted_row_ids.size)


@dataclass(frozen=True)
class GallerySource:
    """A gallery item without its embedding: what a backfill reads to re-embed it, and from where."""

    row_id: int
    external_id: str
    label: str | None
    source_uri: str | None  # where the item's data can be read again (None: unknown)
    generation_id: int  # the generation whose embedding the gallery holds now
