"""Static INT8 quantisation of an exported artifact, for the embedding benchmark only.

Not an export option: on the 2-core CPU it did not meet the target (>= 2x PyTorch eager at batch 64
with <= 1 point template top-1 loss). small_cnn at 1 thread: INT8 1.27x eager vs fp32 1.53x, top-1
-0.3 points (bench/embed_bench.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from upgrader.core.errors import ExportError
from upgrader.core.files import sha256_file
from upgrader.core.artifact import INPUT_NAME
from upgrader.training.export import ExportResult


class CalibrationReader:
    """onnxruntime.quantization CalibrationDataReader over uint8 NHWC images."""

    def __init__(self, images: np.ndarray, batch_size: int = 32) -> None:
        self._batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next calibration batch, or None when all were read."""
        if self._pos >= len(self._batches):
            return None
        self._pos += 1
        return {INPUT_NAME: self._batches[self._pos - 1]}

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._pos = 0


def quantize_int8(
    fp32_path: str | os.PathLike[str], int8_path: str | os.PathLike[str], calibration_images: np.ndarray
) -> ExportResult:
    """Static INT8 (QDQ, per-channel weights, MinMax calibration) copy of an fp32 artifact.

    Args:
        fp32_path: an artifact written by ``export_onnx``.
        int8_path: destination; metadata is copied and ``precision`` set to "int8".
        calibration_images: uint8 NHWC images representative of the data (a few hundred).

    Raises:
        ExportError: quantisation failed.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dest = Path(fp32_path), Path(int8_path)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmpdir:
        pre = os.path.join(tmpdir, "pre.onnx")
        out = os.path.join(tmpdir, "int8.onnx")
        try:
            quant_pre_process(str(src), pre, skip_symbolic_shape=True)
            quantize_static(
                pre,
                out,
                CalibrationReader(calibration_images),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as exc:
            raise ExportError(f"INT8 quantisation failed: {exc}") from None
        meta = {p.key: p.value for p in onnx.load(str(src)).metadata_props}
        meta["precision"] = "int8"
        proto = onnx.load(out)
        del proto.metadata_props[:]
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save_model(proto, out, save_as_external_data=False)
        digest = sha256_file(out)
        os.replace(out, dest)
    return ExportResult(dest, digest, meta, float("nan"), float("nan"))
