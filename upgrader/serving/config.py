"""How a query service runs: index kind, poll periods and request limits, checked on construction."""

from __future__ import annotations

from dataclasses import dataclass

from upgrader.core.errors import InvalidRequest
from upgrader.runtime.kernels import INDEX_KINDS, IndexKind

#: Default per-request pixel budget: 64 megapixels, about 0.9 s of decoding CPU at the slowest rate
#: measured (14 ms per megapixel, lossless RGBA WebP; see :mod:`upgrader.serving.decoding`).
DEFAULT_MAX_REQUEST_PIXELS = 64_000_000


@dataclass(frozen=True)
class ServingConfig:
    """How a :class:`QueryService` runs. Defaults suit a small CPU server."""

    index: IndexKind = "flat"  # gallery index kind: "flat" (exact), "hnsw" or "ivf" (approximate)
    search_threads: int = 1  # FAISS threads per search call; parallelism comes from concurrent requests
    embed_threads: int = 1  # ONNX Runtime intra-op threads per embed call, for the same reason
    poll_seconds: float = 1.0  # watcher period (alias + gallery changes); 0 = no watcher, call refresh()
    sync_on_search: bool = False  # pull gallery changes before every search (read-your-writes across processes)
    calibrate: bool = True  # rank by the score calibration stored for production (False: raw cosine)
    max_images: int = 64  # images per call (search / embed / add)
    max_k: int = 1000  # largest k a search may ask for
    max_side: int = 4096  # largest width or height of an encoded image, before resizing
    max_pixels: int = 16_777_216  # largest width * height of an encoded image (decompression bombs)
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS  # width * height summed over a request's encoded images
    max_id_length: int = 256  # longest external id accepted by add()
    max_label_length: int = 255  # longest label accepted by add() (the registry's column width)
    batch_size: int = 256  # images per ONNX Runtime call

    def __post_init__(self) -> None:
        if self.index not in INDEX_KINDS:
            raise InvalidRequest(f"unknown index kind {self.index!r}; choose one of {', '.join(INDEX_KINDS)}")
        for name in ("search_threads", "embed_threads", "max_images", "max_k", "max_side", "max_pixels",
                     "max_request_pixels", "max_id_length", "max_label_length", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise InvalidRequest(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.poll_seconds < 0:
            raise InvalidRequest(f"poll_seconds must be >= 0, got {self.poll_seconds}")
