"""The HTTP API takes request fields at their declared types only: no coercion of JSON values, no
latin-1 fallback for form text, clear 422s for out-of-range k, and every error (404 and 405 too) in
the documented ``{"error", "detail"}`` shape."""

from __future__ import annotations

import base64

import pytest

from upgrader.serving.http.settings import ServerSettings

SETTINGS = ServerSettings(poll_seconds=0, max_images=4, max_k=100, max_side=256, threads=2)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _state(svc):  # type: ignore[no-untyped-def]
    return svc.workspace.registry.gallery_counts(), svc.status().last_row_id


@pytest.mark.parametrize("k", [True, False, "5", 5.0, None, [5], {"k": 5}], ids=repr)
async def test_json_k_of_any_type_but_an_integer_is_refused(http_client, case, png, k) -> None:  # type: ignore[no-untyped-def]
    async with http_client(case.home, SETTINGS) as (client, _):
        r = await client.post("/search", json={"images": [b64(png(case.spare[0]))], "k": k})
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "invalid_request"
        assert "k must be an integer from 1 to 100" in r.json()["detail"]


@pytest.mark.parametrize("k", [0, -1, 101])
async def test_k_out_of_range_says_the_range(http_client, case, png, k) -> None:  # type: ignore[no-untyped-def]
    async with http_client(case.home, SETTINGS) as (client, _):
        img = png(case.spare[0])
        r = await client.post("/search", json={"images": [b64(img)], "k": k})
        assert r.status_code == 422 and r.json() == {
            "error": "invalid_request", "detail": f"k must be an integer from 1 to 100, got {k}"}
        r = await client.post("/search", files=[("images", ("a.png", img, "image/png"))], data={"k": str(k)})
        assert r.status_code == 422 and "k must be an integer from 1 to 100" in r.json()["detail"]


@pytest.mark.parametrize("text", ["true", "5.0", " 5", "five", ""])
async def test_a_form_k_must_be_decimal_digits(http_client, case, png, text) -> None:  # type: ignore[no-untyped-def]
    async with http_client(case.home, SETTINGS) as (client, _):
        files = [("images", ("a.png", png(case.spare[0]), "image/png"))]
        r = await client.post("/search", files=files, data={"k": text})
        assert r.status_code == 422, r.text
        assert "k must be an integer" in r.json()["detail"]
        ok = await client.post("/search", files=files, data={"k": "3"})
        assert ok.status_code == 200 and len(ok.json()["results"][0]["hits"]) == 3


@pytest.mark.parametrize("field,value", [("ids", [5]), ("ids", [True]), ("labels", [7]), ("images", [123])])
async def test_json_strings_are_not_coerced_either(http_client, case, png, field, value) -> None:  # type: ignore[no-untyped-def]
    async with http_client(case.home, SETTINGS) as (client, svc):
        before = _state(svc)
        body = {"images": [b64(png(case.spare[0]))], "ids": ["s-0"], field: value}
        r = await client.post("/gallery", json=body)
        assert r.status_code == 422 and r.json()["detail"].startswith(f"{field}.0: "), r.text
        assert _state(svc) == before


def _form(parts: list[tuple[str, bytes, bytes | None]], boundary: bytes = b"XyZ") -> bytes:
    """A multipart body from (name, payload, filename-or-None) by hand, so text can be any bytes."""
    out = b""
    for name, payload, filename in parts:
        disposition = b'form-data; name="' + name.encode() + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"\r\nContent-Type: image/png'
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + payload + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


@pytest.mark.parametrize("raw_id", [b"\xff\xfeabc", b"caf\xe9", b"\xc3"], ids=["bom", "latin-1", "truncated"])
async def test_a_form_id_that_is_not_utf8_is_refused_and_nothing_is_stored(  # type: ignore[no-untyped-def]
    http_client, case, png, raw_id
) -> None:
    async with http_client(case.home, SETTINGS) as (client, svc):
        before = _state(svc)
        body = _form([("images", png(case.spare[0]), b"a.png"), ("ids", raw_id, None)])
        r = await client.post("/gallery", content=body, headers={"content-type": "multipart/form-data; boundary=XyZ"})
        assert r.status_code == 422, r.text
        assert r.json() == {"error": "invalid_request",
                            "detail": "ids: form field is not UTF-8 text; send ids and labels as UTF-8"}
        svc.refresh()
        assert _state(svc) == before
        # the same field in UTF-8 is stored as typed
        body = _form([("images", png(case.spare[0]), b"a.png"), ("ids", "café-ü".encode(), None),
                      ("labels", "Ärmel".encode(), None)])
        r = await client.post("/gallery", content=body, headers={"content-type": "multipart/form-data; boundary=XyZ"})
        assert r.status_code == 200, r.text
        hit = (await client.post("/search", json={"images": [b64(png(case.spare[0]))], "k": 1})).json()
        assert (hit["results"][0]["hits"][0]["external_id"], hit["results"][0]["hits"][0]["label"]) == ("café-ü", "Ärmel")


async def test_a_form_declaring_another_charset_is_refused(http_client, case, png) -> None:  # type: ignore[no-untyped-def]
    async with http_client(case.home, SETTINGS) as (client, svc):
        before = _state(svc)
        body = _form([("images", png(case.spare[0]), b"a.png"), ("ids", b"caf\xe9", None)])
        r = await client.post("/gallery", content=body,
                              headers={"content-type": "multipart/form-data; charset=latin-1; boundary=XyZ"})
        assert r.status_code == 422 and "UTF-8" in r.json()["detail"], r.text
        assert _state(svc) == before


async def test_unknown_paths_and_methods_answer_in_the_documented_error_shape(http_client, case) -> None:  # type: ignore[no-untyped-def]
    async with http_client(case.home, SETTINGS) as (client, _):
        r = await client.get("/nope")
        assert r.status_code == 404
        assert r.json() == {"error": "not_found", "detail": "no endpoint /nope; see /docs for the API"}
        r = await client.get("/search")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        assert r.json() == {"error": "method_not_allowed", "detail": "GET is not allowed on /search; allowed: POST"}


async def test_a_json_id_that_is_not_utf8_is_refused(http_client, case, png) -> None:  # type: ignore[no-untyped-def]
    async with http_client(case.home, SETTINGS) as (client, svc):
        before = _state(svc)
        body = b'{"images": ["' + b64(png(case.spare[0])).encode() + b'"], "ids": ["caf\xe9"]}'
        r = await client.post("/gallery", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "invalid unicode" in r.json()["detail"], r.text
        assert _state(svc) == before
