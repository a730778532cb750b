"""ONNX Runtime embedder: uint8 NHWC images (or image files) -> L2-normalised embeddings.

Server side: imports numpy, onnxruntime and (for files, through :mod:`upgrader.runtime.images`)
Pillow — never torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from upgrader.core.artifact import INPUT_NAME, OUTPUT_NAME, REQUIRED_METADATA
from upgrader.core.errors import ArtifactError
from upgrader.core.files import sha256_file
from upgrader.runtime.images import load_images



class Embedder:
    """Embeds images with one ONNX artifact.

    Attributes:
        path: the artifact.
        metadata: its metadata_props (strings).
        image_shape: (H, W, C) the artifact takes.
        embedding_dim: D of the output.
        sha256: checksum of the artifact as loaded.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        """Load and check an artifact.

        Args:
            path: the ``.onnx`` file.
            threads: ONNX Runtime intra-op threads (None: its default, all cores).

        Raises:
            ArtifactError: missing or corrupt file, missing metadata, or an unexpected input.
        """
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: artifact not found; export it or fix the path")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: warnings are not the caller's problem
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for corrupt models
            raise ArtifactError(f"{self.path}: not a loadable ONNX model ({exc.__class__.__name__}); re-export it") from None
        self.sha256 = sha256_file(self.path)
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        missing = [k for k in REQUIRED_METADATA if k not in self.metadata]
        if missing:
            raise ArtifactError(f"{self.path}: metadata lacks {missing}; export it with upgrader.training.export")
        if self.metadata["layout"] != "NHWC":
            raise ArtifactError(f"{self.path}: layout {self.metadata['layout']!r}, this embedder takes NHWC")
        try:
            h, w, c = (int(s) for s in self.metadata["input_shape"].split(","))
            self.embedding_dim = int(self.metadata["embedding_dim"])
        except ValueError:
            raise ArtifactError(f"{self.path}: malformed input_shape/embedding_dim metadata") from None
        self.image_shape = (h, w, c)
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != "tensor(uint8)":
            raise ArtifactError(f"{self.path}: expected one uint8 input named '{INPUT_NAME}'")
        shape = list(inputs[0].shape)
        if len(shape) != 4 or [s for s in shape[1:]] != [h, w, c]:
            raise ArtifactError(f"{self.path}: input shape {shape} disagrees with metadata (N, {h}, {w}, {c})")
        if isinstance(shape[0], int):
            raise ArtifactError(f"{self.path}: batch axis is fixed at {shape[0]}; re-export with a dynamic batch")

    @property
    def generation_id(self) -> str:
        """Generation id recorded at export ("" if none)."""
        return self.metadata.get("generation_id", "")

    def info(self) -> dict[str, Any]:
        """Path, checksum, shape and metadata as a plain dict."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "image_shape": list(self.image_shape),
            "embedding_dim": self.embedding_dim,
            "metadata": dict(self.metadata),
            "mean": json.loads(self.metadata["mean"]),
            "std": json.loads(self.metadata["std"]),
        }

    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Embed uint8 NHWC images.

        Args:
            images: uint8 [N, H, W, C] matching ``image_shape`` (N, H, W accepted when C == 1).
            batch_size: images per ONNX Runtime call.

        Returns:
            float32 [N, D], rows L2-normalised.

        Raises:
            ArtifactError: wrong dtype or shape.
        """
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            raise ArtifactError(f"images must be uint8 0..255, got {arr.dtype}; convert before embedding")
        if arr.ndim == 3 and self.image_shape[2] == 1:
            arr = arr[..., None]
        if arr.ndim != 4 or tuple(arr.shape[1:]) != self.image_shape:
            raise ArtifactError(
                f"images have shape {tuple(arr.shape)}, this artifact takes (N, {', '.join(map(str, self.image_shape))}); "
                "use embed_files to resize, or resize first"
            )
        if len(arr) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        out = []
        for i in range(0, len(arr), max(1, batch_size)):
            batch = np.ascontiguousarray(arr[i : i + batch_size])  # [b, H, W, C]
            out.append(self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0])
        return np.concatenate(out).astype(np.float32, copy=False)

    def load_images(self, paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Read image files resized / converted to the artifact's shape -> uint8 [N, H, W, C]."""
        return load_images(paths, self.image_shape)

    def embed_files(self, paths: Sequence[str | os.PathLike[str]], batch_size: int = 256) -> np.ndarray:
        """Embed image files (any size/mode: converted and resized to the artifact's input)."""
        return self.embed(self.load_images(paths), batch_size)
