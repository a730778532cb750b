"""A production alias that disagrees with its history (edited behind the registry's back) is never
followed: the server answers every request with 503 and says why, /health reports it, and serving
resumes only once the registry agrees with itself again."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from registry import Registry
from registry.errors import AliasTampered
from upgrader.serving import QueryService, ServingConfig
from upgrader.serving.errors import ServingRefused
from upgrader.serving.http.settings import ServerSettings

MANUAL = ServingConfig(poll_seconds=0)
WHY = "alias 'production' points at generation 4 but its history's last move is to generation 3: restore it"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _tamper(monkeypatch: pytest.MonkeyPatch) -> None:
    def tampered(self, alias: str = "production") -> int | None:  # type: ignore[no-untyped-def]
        raise AliasTampered(WHY)

    monkeypatch.setattr(Registry, "get_alias", tampered)


def test_the_service_refuses_every_request_while_the_alias_is_tampered(case, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = Registry.get_alias
    with QueryService(case.home, MANUAL) as svc:
        before = svc.workspace.registry.gallery_counts()
        _tamper(monkeypatch)
        svc.refresh()  # never raises: the watcher's tick
        st = svc.status()
        assert st.refused == WHY and st.serving is not None and st.serving.name == "g3"  # nothing followed
        assert st.last_error == f"AliasTampered: {WHY}"
        for call in (lambda: svc.search(case.spare[:1], k=1), lambda: svc.embed(case.spare[:1]),
                     lambda: svc.add(case.spare[:1], ["while-tampered"]), svc.snapshot):
            with pytest.raises(ServingRefused, match=f"the service answers no request: {WHY}"):
                call()
        assert svc.workspace.registry.gallery_counts() == before
        monkeypatch.setattr(Registry, "get_alias", real)  # the registry agrees with itself again
        svc.refresh()
        assert svc.status().refused is None and svc.search(case.spare[:1], k=1).generation.name == "g3"


def test_a_service_does_not_start_on_a_tampered_alias(case, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _tamper(monkeypatch)
    with pytest.raises(AliasTampered, match="history"):
        QueryService(case.home, MANUAL)


async def test_http_answers_503_and_health_says_why(http_client, case, png, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async with http_client(case.home, ServerSettings(poll_seconds=0, threads=2)) as (client, svc):
        _tamper(monkeypatch)
        svc.refresh()
        img = b64(png(case.spare[0]))
        for path, body in (("/search", {"images": [img]}), ("/embed", {"images": [img]}),
                           ("/gallery", {"images": [img], "ids": ["x"]})):
            r = await client.post(path, json=body)
            assert r.status_code == 503, r.text
            assert r.json() == {"error": "serving_refused", "detail": f"the service answers no request: {WHY}"}
        r = await client.get("/health")
        assert r.status_code == 503
        assert (r.json()["status"], r.json()["refused"], r.json()["generation"]) == ("refused", WHY, "g3")


def _raw_sql(url: str, *statements: str, **params: int) -> None:
    """What someone with write access to the database can do, triggers or not."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for sql in statements:
                conn.execute(text(sql), params)
    finally:
        engine.dispose()


def test_an_alias_edited_in_the_database_is_not_followed(backend_case) -> None:  # type: ignore[no-untyped-def]
    bc = backend_case
    drop = ("DROP TRIGGER aliases_follow_history" if bc.backend == "sqlite"
            else "DROP TRIGGER aliases_follow_history ON aliases")
    move = "UPDATE aliases SET generation_id = :gen WHERE name = 'production'"
    with QueryService(bc.home, MANUAL) as svc:
        production_id = svc.snapshot().generation.id
        _raw_sql(bc.db_url, drop, move, gen=bc.other_id)
        svc.refresh()
        st = svc.status()
        assert st.serving is not None and st.serving.name == bc.production  # the edited alias is not followed
        assert st.refused is not None and "history" in st.refused and str(bc.other_id) in st.refused
        with pytest.raises(ServingRefused):
            svc.search(np.zeros((1, 28, 28, 1), np.uint8), k=1)
        # a server started now refuses to start, in one line, exit 1
        from upgrader.cli import app

        res = CliRunner().invoke(app, ["serve", "--home", str(bc.home)])
        assert res.exit_code == 1 and res.stderr.startswith("error: alias 'production' points at generation")
        assert res.stderr.count("\n") == 1 and "serving" not in res.stdout
        _raw_sql(bc.db_url, move, gen=production_id)  # restored
        svc.refresh()
        assert svc.status().refused is None
        assert svc.search(np.zeros((1, 28, 28, 1), np.uint8), k=1).generation.name == bc.production
