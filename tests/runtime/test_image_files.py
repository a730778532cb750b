"""Query image files read from disk: the same size guard as a served query."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upgrader.core.errors import ArtifactError
from upgrader.runtime.images import load_image


def png_bomb(path: Path, side: int = 60_000) -> Path:
    """A few-hundred-byte PNG whose header declares ``side`` x ``side`` grey pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
                     + chunk(b"IEND", b""))
    return path


def test_a_query_file_is_read_and_fitted(tmp_path: Path) -> None:
    f = tmp_path / "q.png"
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(f)
    assert load_image(f, (28, 28, 1)).shape == (28, 28, 1)


def test_a_decompression_bomb_query_file_is_refused_in_one_line_without_decoding(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"bomb\.png: image exceeds \d+ pixels"):
        load_image(png_bomb(tmp_path / "bomb.png"), (28, 28, 1))


def test_a_file_that_is_not_an_image_names_itself(tmp_path: Path) -> None:
    f = tmp_path / "notes.png"
    f.write_text("hello")
    with pytest.raises(ArtifactError, match=r"notes\.png: not a readable image"):
        load_image(f, (28, 28, 1))
