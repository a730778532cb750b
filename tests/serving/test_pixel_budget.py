"""A request's images are held to a total-pixel budget, checked from their headers before anything
is decoded, so neither many huge images nor a decompression bomb costs the server CPU."""

from __future__ import annotations

import base64
import struct
import time
import zlib

import pytest
from typer.testing import CliRunner

from upgrader.serving import ServingConfig
from upgrader.serving.http.settings import ServerSettings

SMALL = ServerSettings(poll_seconds=0, max_side=256, max_request_pixels=100_000, threads=2)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_header_only(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG declaring ``width`` x ``height`` grey pixels with whatever image data is given (a bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def decodes(monkeypatch):  # type: ignore[no-untyped-def]
    """How many images the service decoded (headers are read without counting)."""
    import upgrader.serving.decoding as decoding

    calls: list[int] = []
    real = decoding.decode_image

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding, "decode_image", counting)
    return calls


async def test_over_budget_is_413_naming_the_limit_and_the_flag_before_any_decoding(  # type: ignore[no-untyped-def]
    http_client, case, png, decodes
) -> None:
    img = b64(png(case.spare[0], (200, 200)))  # 40,000 pixels each
    async with http_client(case.home, SMALL) as (client, _):
        ok = await client.post("/search", json={"images": [img, img], "k": 1})  # 80,000: within 100,000
        assert ok.status_code == 200, ok.text
        assert len(decodes) == 2
        r = await client.post("/search", json={"images": [img] * 3, "k": 1})
        assert r.status_code == 413
        assert r.json() == {"error": "too_many_pixels", "detail": (
            "the request's 3 images hold 120,000 pixels in all; the limit is 100,000 pixels per request — send "
            "fewer or smaller images (the server's limit: `upgrader serve --max-request-pixels N`)")}
        assert len(decodes) == 2  # the refused request decoded nothing
        files = [("images", (f"{i}.png", png(case.spare[0], (200, 200)), "image/png")) for i in range(3)]
        r = await client.post("/gallery", files=files, data={"ids": ["a", "b", "c"]})
        assert r.status_code == 413 and r.json()["error"] == "too_many_pixels"


async def test_the_default_budget_refuses_64_images_at_the_size_limit_from_their_headers(  # type: ignore[no-untyped-def]
    http_client, case, decodes
) -> None:
    assert ServingConfig().max_request_pixels == ServerSettings().max_request_pixels == 64_000_000
    big = png_header_only(4096, 4096, zlib.compress(b"\x00" * 4097 * 4096, 9))  # a real 16.8 Mpx image, ~16 kB
    async with http_client(case.home, ServerSettings(poll_seconds=0, threads=2)) as (client, _):
        t = time.process_time()
        r = await client.post("/search", json={"images": [b64(big)] * 64, "k": 1})
        cpu = time.process_time() - t
        assert r.status_code == 413 and "1,073,741,824 pixels in all" in r.json()["detail"], r.text
        assert decodes == []
        # Nothing was decoded: well under the time one such image takes to decode (~0.1 s), let alone 64.
        assert cpu < 2.0, cpu
        r = await client.post("/search", json={"images": [b64(big)] * 3, "k": 1})  # 50 Mpx: within the budget
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("width,height", [(100_000, 100_000), (5_000, 5_000), (70_000, 1)],
                         ids=["pillow-bomb-guard", "over-max-pixels", "over-max-side"])
async def test_a_png_bomb_is_refused_from_its_header(http_client, case, decodes, width, height) -> None:  # type: ignore[no-untyped-def]
    bomb = png_header_only(width, height, zlib.compress(b"\x00" * 64))  # tiny file, huge declared size
    assert len(bomb) < 200
    async with http_client(case.home, ServerSettings(poll_seconds=0, threads=2)) as (client, svc):
        before = svc.workspace.registry.gallery_counts()
        for r in (await client.post("/search", json={"images": [b64(bomb)]}),
                  await client.post("/gallery", files=[("images", ("b.png", bomb, "image/png"))], data={"ids": ["b"]})):
            assert r.status_code == 413, r.text
            assert r.json()["error"] == "image_too_large" and r.json()["detail"].startswith("image 0: ")
        assert decodes == [] and svc.workspace.registry.gallery_counts() == before


def test_serve_takes_the_budget_and_the_tokens_as_flags(case, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import upgrader.serving.http.run as run
    from upgrader.cli import app

    seen = {}
    monkeypatch.setattr(run, "run_server", lambda home, **kw: seen.update(kw))
    token = tmp_path / "token"
    token.write_text("r" * 32 + "\n")
    res = CliRunner().invoke(app, ["serve", "--home", str(case.home), "--max-request-pixels", "12345",
                                   "--token-file", str(token)])
    assert res.exit_code == 0, res.stderr
    assert seen["settings"].max_request_pixels == 12345 and seen["settings"].token == "r" * 32
    assert "r" * 32 not in repr(seen["settings"])  # a token never reaches a log through repr
    res = CliRunner().invoke(app, ["serve", "--home", str(case.home), "--max-request-pixels", "0"])
    assert res.exit_code == 2 and "--max-request-pixels must be at least 1" in res.stderr
