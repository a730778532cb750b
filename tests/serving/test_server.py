"""The HTTP API in-process (httpx + ASGI transport): answers, OpenAPI, and 4xx that change nothing."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest

from upgrader.serving.http.app import create_app
from upgrader.serving.http.settings import ServerSettings

SETTINGS = ServerSettings(poll_seconds=0, max_request_bytes=256 * 1024, max_images=4, max_k=100, max_side=256,
                          threads=2)


@pytest.fixture
async def api(case) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:  # type: ignore[no-untyped-def]
    app = create_app(case.home, SETTINGS)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client, app.state.service
    finally:
        app.state.service.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_health_generation_and_openapi(api, case) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    health = (await client.get("/health")).json()
    assert health["status"] == "ok" and health["generation"] == "g3" and health["gallery_items"] == 60
    gen = (await client.get("/generation")).json()
    assert gen["serving"]["name"] == "g3" and gen["production_alias"] == case.gen_ids["g3"]
    assert gen["image_shape"] == [28, 28, 1] and gen["embedding_dim"] == 15
    schema = (await client.get("/openapi.json")).json()
    assert {"/search", "/embed", "/gallery", "/health", "/generation"} <= set(schema["paths"])
    body = schema["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert body["application/json"]["schema"]["additionalProperties"] is False


async def test_search_by_upload_and_by_base64(api, case, png) -> None:  # type: ignore[no-untyped-def]
    client, _ = api
    img = case.images["g3"][5]
    files = [("images", ("q.png", png(img, (56, 56)), "image/png")), ("images", ("q2.png", png(img), "image/png"))]
    r = await client.post("/search", files=files, data={"k": "3"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["generation"]["name"] == "g3" and len(out["results"]) == 2
    first = out["results"][1]["hits"][0]
    assert first["external_id"] == case.ids["g3"][5] and first["generation_name"] == "g3"
    assert first["score"] == pytest.approx(1.0, abs=1e-4)
    r = await client.post("/search", json={"images": [b64(png(img))], "k": 60})
    hits = r.json()["results"][0]["hits"]
    assert r.status_code == 200 and len(hits) == 60
    assert {h["generation_name"] for h in hits} == {"g1", "g2", "g3"}


async def test_embed_and_add(api, case, png) -> None:  # type: ignore[no-untyped-def]
    client, svc = api
    r = await client.post("/embed", json={"images": [b64(png(case.spare[0])), b64(png(case.spare[1]))]})
    assert r.status_code == 200 and r.json()["dim"] == 15
    emb = np.array(r.json()["embeddings"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    r = await client.post("/gallery", json={"images": [b64(png(case.spare[2]))], "ids": ["api-0"], "labels": ["Bag"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"generation": r.json()["generation"], "added": 1, "gallery_items": 61}
    files = [("images", ("a.png", png(case.spare[3]), "image/png"))]
    r = await client.post("/gallery", files=files, data={"ids": "api-1"})
    assert r.status_code == 200 and r.json()["gallery_items"] == 62
    top = (await client.post("/search", json={"images": [b64(png(case.spare[2]))], "k": 1})).json()["results"][0]["hits"][0]
    assert (top["external_id"], top["label"], top["generation_name"]) == ("api-0", "Bag", "g3")


def _json(**body):  # type: ignore[no-untyped-def]
    return {"json": body}


BAD_REQUESTS = [
    # (name, path, request kwargs builder, status, words in the message)
    ("unknown JSON field", "/search", lambda p, img: _json(images=[b64(p(img))], k=1, top=3), 422, "top: unknown field"),
    ("k too small", "/search", lambda p, img: _json(images=[b64(p(img))], k=0), 422, "k"),
    ("k too large", "/search", lambda p, img: _json(images=[b64(p(img))], k=101), 422, "k must be"),
    ("no images", "/search", lambda p, img: _json(images=[], k=1), 422, "images"),
    ("not base64", "/search", lambda p, img: _json(images=["***"], k=1), 400, "base64"),
    ("not an image", "/embed", lambda p, img: _json(images=[b64(b"hello world")]), 400, "not a decodable image"),
    ("image too large", "/search", lambda p, img: _json(images=[b64(p(img, (300, 20)))]), 413, "300x20"),
    ("too many images", "/embed", lambda p, img: _json(images=[b64(p(img))] * 5), 422, "limit is 4"),
    ("body too large", "/search", lambda p, img: {"content": b"{" + b" " * 300_000 + b"}",
                                                  "headers": {"content-type": "application/json"}}, 413, "limit"),
    ("wrong content type", "/search", lambda p, img: {"content": b"abc", "headers": {"content-type": "text/plain"}},
     415, "content type"),
    ("malformed JSON", "/search", lambda p, img: {"content": b"{\"images\": [", "headers": {"content-type": "application/json"}},
     422, "JSON"),
    ("unknown form field", "/search", lambda p, img: {"files": [("images", ("a.png", p(img), "image/png"))],
                                                      "data": {"k": "2", "kk": "1"}}, 422, "kk: unknown field"),
    ("ids missing", "/gallery", lambda p, img: _json(images=[b64(p(img))]), 422, "ids"),
    ("ids count", "/gallery", lambda p, img: _json(images=[b64(p(img))] * 2, ids=["n1"]), 422, "one id per image"),
    ("duplicate id", "/gallery", lambda p, img: _json(images=[b64(p(img))] * 2, ids=["n1", "g1-item-0"]), 409, "g1-item-0"),
    ("one bad image", "/gallery", lambda p, img: _json(images=[b64(p(img)), b64(b"junk")], ids=["n1", "n2"]), 400, "image 1"),
]


@pytest.mark.parametrize("name,path,build,status,words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
async def test_bad_requests_get_4xx_with_a_message_and_change_nothing(  # type: ignore[no-untyped-def]
    api, case, png, name, path, build, status, words
) -> None:
    client, svc = api
    before = (svc.workspace.registry.gallery_counts(), svc.status().gallery_items, svc.status().last_row_id)
    r = await client.post(path, **build(png, case.spare[0]))
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] and words.lower() in body["detail"].lower(), body
    svc.refresh()  # even a sync finds nothing new
    after = (svc.workspace.registry.gallery_counts(), svc.status().gallery_items, svc.status().last_row_id)
    assert after == before
    assert (await client.get("/health")).json()["status"] == "ok"
