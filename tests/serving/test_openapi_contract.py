"""The OpenAPI schema states every constraint the handlers enforce, and the handlers enforce every
constraint the schema states: requests are built *from the served /openapi.json* — each bound met
exactly is accepted, each bound broken by one is refused with a 4xx and changes nothing."""

from __future__ import annotations

import base64
import itertools
from typing import Any

import pytest

from upgrader.serving.http.settings import ServerSettings

SETTINGS = ServerSettings(poll_seconds=0, max_images=4, max_k=100, max_side=256, threads=2)
ENDPOINTS = ("/search", "/embed", "/gallery")
_FRESH = itertools.count()  # every generated id is new, so each accepted upload stores new items


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _body_schemas(schema: dict[str, Any], path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    content = schema["paths"][path]["post"]["requestBody"]["content"]
    return content["application/json"]["schema"], content["multipart/form-data"]["schema"]


async def test_the_schema_states_the_servers_limits(http_client, case) -> None:  # type: ignore[no-untyped-def]
    async with http_client(case.home, SETTINGS) as (client, _):
        schema = (await client.get("/openapi.json")).json()
    for path in ENDPOINTS:
        for body in _body_schemas(schema, path):
            images = body["properties"]["images"]
            assert "images" in body["required"]
            assert (images["minItems"], images["maxItems"]) == (1, 4)  # at least one image, the server's limit
            assert images["items"]["minLength"] == 1  # non-empty image data
            assert body.get("additionalProperties") is False
    for body in _body_schemas(schema, "/search"):
        k = body["properties"]["k"]
        assert (k["type"], k["minimum"], k["maximum"], k["default"]) == ("integer", 1, 100, 10)
        assert all(type(k[b]) is int for b in ("minimum", "maximum", "default"))  # not 1.0: the server takes 1
    for body in _body_schemas(schema, "/gallery"):
        assert set(body["required"]) == {"images", "ids"}  # ids are required with gallery uploads
        ids = body["properties"]["ids"]
        assert (ids["minItems"], ids["maxItems"], ids["uniqueItems"]) == (1, 4, True)
        assert (ids["items"]["minLength"], ids["items"]["maxLength"]) == (1, 256) and ids["items"]["pattern"]
    json_body, _ = _body_schemas(schema, "/gallery")
    assert json_body["properties"]["images"]["items"]["pattern"].startswith("^(?:[A-Za-z0-9+/]{4})*")
    errors = schema["paths"]["/search"]["post"]["responses"]
    assert {"400", "413", "415", "422", "503"} <= set(errors)


def _item(items: dict[str, Any], png_b64: str) -> Any:
    """A valid value of an array item schema (a fresh string each time: ids must be new)."""
    if items.get("contentEncoding") == "base64":
        return png_b64
    return f"id-{next(_FRESH)}"


def _valid(body: dict[str, Any], png_b64: str, count: int) -> dict[str, Any]:
    """A body meeting the schema with ``count`` images (array fields sized alike, as the server asks)."""
    out: dict[str, Any] = {}
    for name in body["required"]:
        prop = body["properties"][name]
        out[name] = [_item(prop["items"], png_b64) for _ in range(count)]
    return out


def _array(prop: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(array schema, string item schema) of an array property, nullable or not; None for others."""
    arrays = [prop] if prop.get("type") == "array" else [s for s in prop.get("anyOf", []) if s.get("type") == "array"]
    if not arrays:
        return None
    items = arrays[0]["items"]
    strings = [items] if items.get("type") == "string" else [s for s in items.get("anyOf", []) if s.get("type") == "string"]
    return arrays[0], strings[0]


def _cases(body: dict[str, Any], png_b64: str) -> list[tuple[str, dict[str, Any], bool]]:
    """(what, JSON body, accepted?) for each bound the schema states: met exactly, and broken by one."""
    cases: list[tuple[str, dict[str, Any], bool]] = []
    lo = body["properties"]["images"]["minItems"]
    hi = body["properties"]["images"]["maxItems"]
    cases += [("images at maxItems", _valid(body, png_b64, hi), True),
              ("images at minItems", _valid(body, png_b64, lo), True),
              ("images below minItems", _valid(body, png_b64, lo - 1), False),
              ("images above maxItems", _valid(body, png_b64, hi + 1), False)]
    for name in body["required"]:
        missing = _valid(body, png_b64, 1)
        del missing[name]
        cases.append((f"{name} missing", missing, False))
    for name, prop in body["properties"].items():
        if prop.get("type") == "integer":
            for bound, delta in (("minimum", 0), ("maximum", 0), ("minimum", -1), ("maximum", 1)):
                cases.append((f"{name} {bound}{delta:+d}", {**_valid(body, png_b64, 1), name: prop[bound] + delta},
                              delta == 0))
            cases.append((f"{name} as a string", {**_valid(body, png_b64, 1), name: str(prop["minimum"])}, False))
            cases.append((f"{name} as a boolean", {**_valid(body, png_b64, 1), name: True}, False))
        found = _array(prop)
        if found is None or name == "images":
            continue
        prop, items = found
        if "maxLength" in items:
            at = "x" * items["maxLength"]
            cases.append((f"{name} item at maxLength", {**_valid(body, png_b64, 1), name: [at]}, True))
            cases.append((f"{name} item above maxLength", {**_valid(body, png_b64, 1), name: [at + "x"]}, False))
        if items.get("minLength") == 1:
            cases.append((f"{name} item empty", {**_valid(body, png_b64, 1), name: [""]}, False))
        if "pattern" in items:
            cases.append((f"{name} item against its pattern", {**_valid(body, png_b64, 1), name: [" \t"]}, False))
        if prop.get("uniqueItems"):
            cases.append((f"{name} repeated", {**_valid(body, png_b64, 2), name: ["same", "same"]}, False))
    image_items = body["properties"]["images"]["items"]
    assert image_items["minLength"] == 1 and image_items["pattern"]
    cases.append(("image empty", {**_valid(body, png_b64, 1), "images": [""]}, False))
    cases.append(("image against the base64 pattern", {**_valid(body, png_b64, 1), "images": ["iVBOR w0="]}, False))
    cases.append(("unknown field", {**_valid(body, png_b64, 1), "extra": 1}, False))
    return cases


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_every_bound_in_the_schema_is_the_bound_the_server_enforces(  # type: ignore[no-untyped-def]
    http_client, case, png, path
) -> None:
    async with http_client(case.home, SETTINGS) as (client, svc):
        json_body, _ = _body_schemas((await client.get("/openapi.json")).json(), path)
        for what, body, accepted in _cases(json_body, b64(png(case.spare[0]))):
            before = svc.workspace.registry.gallery_counts()
            r = await client.post(path, json=body)
            if accepted:
                assert r.status_code == 200, (what, r.text)
            else:
                assert 400 <= r.status_code < 500 and r.status_code != 409, (what, r.status_code, r.text)
                assert set(r.json()) == {"error", "detail"}, what
                assert svc.workspace.registry.gallery_counts() == before, what


async def test_a_form_obeys_the_form_schema(http_client, case, png) -> None:  # type: ignore[no-untyped-def]
    async with http_client(case.home, SETTINGS) as (client, svc):
        _, form = _body_schemas((await client.get("/openapi.json")).json(), "/gallery")
        img = png(case.spare[0])
        hi = form["properties"]["images"]["maxItems"]
        files = [("images", (f"{i}.png", img, "image/png")) for i in range(hi)]
        ok = await client.post("/gallery", files=files, data={"ids": [f"f-{i}" for i in range(hi)]})
        assert ok.status_code == 200, ok.text
        refused = [
            ("too many images", files + files[:1], {"ids": [f"g-{i}" for i in range(hi + 1)]}),
            ("ids missing", files[:1], {}),
            ("an empty image", [("images", ("e.png", b"", "image/png"))], {"ids": ["e"]}),
        ]
        before = svc.workspace.registry.gallery_counts()
        for what, parts, data in refused:
            r = await client.post("/gallery", files=parts, data=data)
            assert r.status_code == 422, (what, r.text)
        no_images = b'--x\r\nContent-Disposition: form-data; name="ids"\r\n\r\nx\r\n--x--\r\n'
        r = await client.post("/gallery", content=no_images, headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 422 and "images: 0 items; give at least 1" in r.json()["detail"], r.text
        assert svc.workspace.registry.gallery_counts() == before
