"""Each exported artifact records the upgrader version that produced it, in its ONNX metadata."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import torch

from upgrader.core.artifact import VERSION_KEY
from upgrader.core.version import VERSION, installed_version
from upgrader.training.export import export_onnx
from upgrader.training.models import build_model


def test_an_export_records_the_producing_version_and_no_caller_can_fake_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=8, in_channels=1, image_size=28)
    result = export_onnx(model, tmp_path / "model.onnx", metadata={VERSION_KEY: "9.9.9"})
    stored = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert stored.custom_metadata_map[VERSION_KEY] == VERSION == installed_version()
    assert result.metadata[VERSION_KEY] == VERSION
