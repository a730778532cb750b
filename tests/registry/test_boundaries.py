"""What registry/ depends on, and the embedding codec's checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from registry import EmbeddingCodec, EmbeddingError

REPO = Path(__file__).resolve().parents[2]


def test_registry_imports_neither_torch_nor_upgrader() -> None:
    code = (
        "import sys, registry, registry.api, registry.migrations, registry.stores.gallery\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'upgrader', 'tui'))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,  # a bound for a hang
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_codec_roundtrip_float32_is_exact_and_float16_close() -> None:
    x = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    c32, c16 = EmbeddingCodec(5), EmbeddingCodec(5, "float16")
    blobs = c32.encode(x)
    assert len(blobs) == 7 and all(len(b) == 20 for b in blobs)
    np.testing.assert_array_equal(c32.decode(blobs), x)
    half = c16.encode(x.astype(np.float64))
    assert all(len(b) == 10 for b in half)
    out = c16.decode(half)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_allclose(out, x, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.ones((2, 4), np.float32), "dimension 4 does not match the workspace's 5"),
        (np.ones((5,), np.float32), "2-D"),
        (np.array([[1, 2, 3, 4, 5]]), "floating"),
        (np.array([[0, 0, np.nan, 0, 0]], np.float32), "row 0 contains NaN or inf"),
        (np.array([[0] * 5, [0, -np.inf, 0, 0, 0]], np.float32), "row 1 contains NaN or inf"),
    ],
)
def test_codec_refuses_bad_matrices(value: np.ndarray, match: str) -> None:
    with pytest.raises(EmbeddingError, match=match):
        EmbeddingCodec(5).encode(value)


def test_codec_refuses_float16_overflow_and_corrupt_blobs() -> None:
    with pytest.raises(EmbeddingError, match="overflows float16"):
        EmbeddingCodec(2, "float16").encode(np.array([[1.0, 1e5]]))
    with pytest.raises(EmbeddingError, match="do not decode"):
        EmbeddingCodec(5).decode([b"\x00" * 20, b"\x00" * 12])
    with pytest.raises(EmbeddingError, match="unknown embedding dtype"):
        EmbeddingCodec(5, "int8")
