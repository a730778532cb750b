"""Bearer tokens: remote serving needs one, a configured token is enforced everywhere (loopback too),
a separate write token guards POST /gallery, and a refused request writes nothing."""

from __future__ import annotations

import base64

import pytest
from typer.testing import CliRunner

from upgrader.core.errors import InvalidRequest
from upgrader.serving.http.settings import ServerSettings

READ, WRITE = "read-token-0123456789abcdef", "write-token-0123456789abcdef"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _settings(**tokens: str) -> ServerSettings:
    return ServerSettings(poll_seconds=0, threads=2, **tokens)


async def test_a_token_guards_every_endpoint_and_a_refused_write_stores_nothing(http_client, case, png) -> None:  # type: ignore[no-untyped-def]
    add = {"images": [b64(png(case.spare[0]))], "ids": ["auth-0"]}
    async with http_client(case.home, _settings(token=READ)) as (client, svc):
        before = svc.workspace.registry.gallery_counts()
        for method, path, kw in [("GET", "/health", {}), ("GET", "/generation", {}), ("POST", "/gallery", {"json": add}),
                                 ("POST", "/search", {"json": {"images": add["images"]}}), ("GET", "/nope", {})]:
            r = await client.request(method, path, **kw)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"] == 'Bearer realm="upgrader"'
            assert r.json() == {"error": "unauthorized", "detail": (
                "this server needs a bearer token: send the header `Authorization: Bearer TOKEN`")}
            r = await client.request(method, path, headers=bearer(READ[:-1] + "X"), **kw)
            assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
            r = await client.request(method, path, headers={"authorization": f"Basic {READ}"}, **kw)
            assert r.status_code == 401
        assert svc.workspace.registry.gallery_counts() == before
        assert (await client.get("/health", headers=bearer(READ))).status_code == 200
        r = await client.post("/gallery", json=add, headers={"authorization": f"bearer  {READ} "})
        assert r.status_code == 200, r.text
        # the description of the API holds no data and stays open, saying how to authenticate
        schema = (await client.get("/openapi.json")).json()
        assert schema["components"]["securitySchemes"]["bearerAuth"] == {
            "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["bearerAuth"]["description"]}
        assert schema["paths"]["/search"]["post"]["security"] == [{"bearerAuth": []}]
        assert "401" in schema["paths"]["/gallery"]["post"]["responses"]


async def test_a_write_token_is_the_only_key_to_the_gallery(http_client, case, png) -> None:  # type: ignore[no-untyped-def]
    add = {"images": [b64(png(case.spare[1]))], "ids": ["auth-1"]}
    async with http_client(case.home, _settings(token=READ, write_token=WRITE)) as (client, svc):
        before = svc.workspace.registry.gallery_counts()
        r = await client.post("/gallery", json=add, headers=bearer(READ))
        assert r.status_code == 403 and 'error="insufficient_scope"' in r.headers["www-authenticate"]
        assert r.json() == {"error": "forbidden",
                            "detail": "POST /gallery needs the write token; the token sent allows reads only"}
        assert svc.workspace.registry.gallery_counts() == before
        for token in (READ, WRITE):  # reads accept either
            r = await client.post("/search", json={"images": add["images"], "k": 1}, headers=bearer(token))
            assert r.status_code == 200, r.text
        r = await client.post("/gallery", json=add, headers=bearer(WRITE))
        assert r.status_code == 200 and r.json()["added"] == 1
        assert "403" in (await client.get("/openapi.json")).json()["paths"]["/gallery"]["post"]["responses"]


async def test_a_write_token_alone_leaves_reads_open(http_client, case, png) -> None:  # type: ignore[no-untyped-def]
    add = {"images": [b64(png(case.spare[2]))], "ids": ["auth-2"]}
    async with http_client(case.home, _settings(write_token=WRITE)) as (client, svc):
        assert (await client.post("/search", json={"images": add["images"], "k": 1})).status_code == 200
        assert (await client.post("/gallery", json=add)).status_code == 401
        assert svc.workspace.registry.gallery_counts().get(case.gen_ids["g3"]) == 20
        assert (await client.post("/gallery", json=add, headers=bearer(WRITE))).status_code == 200


async def test_loopback_without_a_token_stays_open(http_client, case) -> None:  # type: ignore[no-untyped-def]
    async with http_client(case.home, _settings()) as (client, _):
        assert (await client.get("/health")).status_code == 200
        assert "securitySchemes" not in (await client.get("/openapi.json")).json().get("components", {})


@pytest.mark.parametrize("token,words", [("short", "at least 16"), ("has space in it 0123456", "characters"),
                                         ("é" * 20, "characters")])
def test_weak_or_unsendable_tokens_are_refused(token: str, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        ServerSettings(token=token)


def _serve(case, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    from upgrader.cli import app

    return CliRunner().invoke(app, ["serve", "--home", str(case.home), *args], env=env)


def test_allow_remote_without_a_token_refuses_to_start(case, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import upgrader.serving.http.run as run

    monkeypatch.delenv("UPGRADER_TOKEN", raising=False)
    monkeypatch.delenv("UPGRADER_WRITE_TOKEN", raising=False)
    started = []
    monkeypatch.setattr(run, "run_server", lambda home, **kw: started.append(kw))
    res = _serve(case, "--host", "0.0.0.0", "--allow-remote")
    assert res.exit_code == 2 and not started
    assert res.stderr.count("\n") == 1 and "--allow-remote needs a bearer token" in res.stderr
    assert "--token-file" in res.stderr and "serving" not in res.stdout
    # the token from the environment, or a file, lets it start
    res = _serve(case, "--host", "0.0.0.0", "--allow-remote", env={"UPGRADER_TOKEN": READ})
    assert res.exit_code == 0, res.stderr
    assert started[-1]["settings"].token == READ and started[-1]["allow_remote"]


def test_token_files_that_cannot_serve_are_refused_naming_the_flag(case, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import upgrader.serving.http.run as run

    monkeypatch.setattr(run, "run_server", lambda home, **kw: None)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for args, words in [(["--token-file", str(empty)], "--token-file: token file"),
                        (["--token-file", str(tmp_path / "missing")], "--token-file: cannot read token file"),
                        (["--write-token-file", str(empty)], "--write-token-file: token file")]:
        res = _serve(case, *args)
        assert res.exit_code == 2 and words in res.stderr, (args, res.stderr)
    res = _serve(case, env={"UPGRADER_TOKEN": "short"})
    assert res.exit_code == 2 and "UPGRADER_TOKEN: the token in UPGRADER_TOKEN is 5 characters" in res.stderr
