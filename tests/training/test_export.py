"""ONNX export: single file, uint8 NHWC in, parity with PyTorch, dynamic batch, metadata, refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import upgrader.training.export as export_module
from upgrader.core.files import sha256_file
from upgrader.core.errors import ExportError
from upgrader.core.artifact import REQUIRED_METADATA
from upgrader.training.export import export_onnx
from upgrader.training.models import build_model


@pytest.fixture(scope="module")
def exported(first_generation, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("export")
    result = export_onnx(
        first_generation.result.model, folder / "gen0.onnx",
        metadata={"generation_id": "1", "generation_name": "gen0"}, image_shape=(28, 28, 1),
    )
    return result, folder


def test_export_is_one_verified_file(exported) -> None:
    result, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == ["gen0.onnx"]  # no external data, no temp file
    assert result.sha256 == sha256_file(result.path)
    assert result.max_abs_diff < 1e-4 and result.min_cosine >= 0.9999
    onnx.checker.check_model(str(result.path))


def test_graph_takes_uint8_nhwc_and_gives_embeddings(exported) -> None:
    result, _ = exported
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type) == ("images", "tensor(uint8)")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [28, 28, 1]
    assert out.name == "embeddings" and out.shape[1] == 9


def test_metadata_props(exported, first_generation) -> None:
    result, _ = exported
    meta = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert set(REQUIRED_METADATA) <= set(meta)
    assert meta["generation_id"] == "1" and meta["generation_name"] == "gen0"
    assert meta["embedding_dim"] == "9" and meta["num_classes"] == "10"
    assert meta["input_shape"] == "28,28,1" and meta["layout"] == "NHWC"
    assert meta["architecture"] == "small_cnn"
    assert meta == result.metadata


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch_matches_pytorch(exported, first_generation, embed_torch, batch: int) -> None:
    result, _ = exported
    images = first_generation.data.images[:batch]
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["embeddings"], {"images": images})
    want = embed_torch(first_generation.result.model, images)
    assert got.shape == (batch, 9)
    assert np.abs(got - want).max() < 1e-4
    assert ((got * want).sum(1) >= 0.9999).all()
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_rgb_resnet_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet_narrow", 8, in_channels=3, image_size=32, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25])
    result = export_onnx(model, tmp_path / "rgb.onnx")
    assert result.metadata["input_shape"] == "32,32,3" and result.min_cosine >= 0.9999


def test_failed_parity_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export_module, "MIN_COSINE", 1.5)  # unreachable: every export must be refused
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(build_model("small_cnn", 4), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []
