"""Embedder: same features as PyTorch, no torch import, files, and clear artifact errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from upgrader.core.files import sha256_file
from upgrader.runtime.embedder import Embedder
from upgrader.core.errors import ArtifactError
from upgrader.training.export import export_onnx

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def artifact(first_generation, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("embedder") / "gen0.onnx"
    export_onnx(first_generation.result.model, path, metadata={"generation_id": "7"})
    return path


def test_embedder_matches_pytorch(artifact: Path, first_generation, embed_torch) -> None:
    images = first_generation.data.images[:23]
    embedder = Embedder(artifact, threads=1)
    got = embedder.embed(images, batch_size=8)  # three ORT calls, last one partial
    want = embed_torch(first_generation.result.model, images)
    assert got.dtype == np.float32 and got.shape == (23, 9)
    assert np.abs(got - want).max() < 1e-4
    assert embedder.image_shape == (28, 28, 1) and embedder.generation_id == "7"
    assert embedder.sha256 == sha256_file(artifact)
    assert np.allclose(embedder.embed(images[:, :, :, 0]), got, atol=1e-6)  # N,H,W accepted for 1 channel


def test_embedder_does_not_import_torch(artifact: Path, first_generation) -> None:
    np.save(artifact.with_suffix(".npy"), first_generation.data.images[:4])
    code = (
        "import sys, numpy as np\n"
        "from upgrader.runtime.embedder import Embedder\n"
        f"e = Embedder({str(artifact)!r}, threads=1)\n"
        f"out = e.embed(np.load({str(artifact.with_suffix('.npy'))!r}))\n"
        "assert out.shape == (4, 9), out.shape\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)  # a bound for a hang
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_embed_files_resizes_and_converts(artifact: Path, tmp_path: Path, first_generation) -> None:
    embedder = Embedder(artifact)
    image = first_generation.data.images[0, :, :, 0]
    Image.fromarray(image).save(tmp_path / "same.png")
    Image.fromarray(image).convert("RGB").resize((56, 56), Image.NEAREST).save(tmp_path / "big_rgb.png")
    feats = embedder.embed_files([tmp_path / "same.png", tmp_path / "big_rgb.png"])
    assert np.allclose(feats[0], embedder.embed(image[None])[0], atol=1e-5)
    assert float(feats[0] @ feats[1]) > 0.95  # the resized colour copy embeds close to the original
    (tmp_path / "note.txt").write_text("hello")
    with pytest.raises(ArtifactError, match="not a readable image"):
        embedder.embed_files([tmp_path / "note.txt"])


def test_wrong_images_are_refused(artifact: Path) -> None:
    embedder = Embedder(artifact)
    with pytest.raises(ArtifactError, match=r"takes \(N, 28, 28, 1\)"):
        embedder.embed(np.zeros((2, 32, 32, 1), dtype=np.uint8))
    with pytest.raises(ArtifactError, match="uint8"):
        embedder.embed(np.zeros((2, 28, 28, 1), dtype=np.float32))
    assert embedder.embed(np.zeros((0, 28, 28, 1), dtype=np.uint8)).shape == (0, 9)


def test_bad_artifacts_are_refused(artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        Embedder(tmp_path / "missing.onnx")
    (tmp_path / "corrupt.onnx").write_bytes(artifact.read_bytes()[:500])
    with pytest.raises(ArtifactError, match="not a loadable ONNX model"):
        Embedder(tmp_path / "corrupt.onnx")
    proto = onnx.load(str(artifact))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(ArtifactError, match="metadata lacks"):
        Embedder(tmp_path / "bare.onnx")
    with pytest.raises(ArtifactError, match="cannot read"):
        sha256_file(tmp_path / "missing.onnx")
