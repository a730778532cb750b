"""Served search applies the score calibration stored with production's gate report (issue 15, item 2).

The workspace is the serving master (g3 production without a calibration, g4 registered); each test
stores the calibration it needs with a passing report and moves the alias citing it, as a promotion
does, or promotes through ``upgrader promote`` and reads what the gate stored.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from upgrader.cli import app as cli
from upgrader.compat.score_calibration import Calibration, ScoreMap
from upgrader.services.gallery import CalibrationUnusable, serving_calibration
from upgrader.services.registration import open_embedder
from upgrader.services.workspace import open_workspace
from upgrader.serving import QueryService, ServingConfig
from upgrader.serving.http.settings import ServerSettings

MANUAL = ServingConfig(poll_seconds=0)
RAW = ServingConfig(poll_seconds=0, calibrate=False)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _at(q: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at cosine ``cos`` from the unit vector ``q``."""
    n = rng.standard_normal(q.shape[0]).astype(np.float32)
    u = _unit(n - (n @ q) * q)
    return _unit(cos * q + np.sqrt(1.0 - cos**2) * u)


def _promote_with(ws, gen, calibration: Calibration | None) -> None:  # type: ignore[no-untyped-def]
    """Move production to ``gen`` citing a passing report that stores ``calibration``, as promote does."""
    report = ws.registry.add_gate_report(gen.id, gen.onnx_sha256, True, "promote", {"test": "calibrated serving"},
                                         calibration=calibration.to_dict() if calibration else None)
    ws.registry.move_alias(gen.id, actor="test", reason="test: calibrated serving", gate_report_id=report.id)


@dataclass(frozen=True)
class BiasCase:
    """The issue's situation: g4's queries score g4's items high and g1's items low."""

    home: Path
    query: np.ndarray  # uint8 [1, 28, 28, 1]
    g1: int
    g4: int


@pytest.fixture
def bias(case) -> BiasCase:  # type: ignore[no-untyped-def]
    """g4 in production with a calibration mapping g1's scores by +0.15. The gallery: a Coat written by
    g1 at cosine 0.79 from the query (the right item), a Shirt written by g4 at 0.91 (the wrong one),
    and lower-scoring items of both generations, so the order within each generation shows."""
    rng = np.random.default_rng(0)
    with open_workspace(case.home) as ws:
        reg = ws.registry
        for g in ("g1", "g2", "g3"):
            reg.delete_gallery_items(generation=g)
        g1, g4 = reg.get_generation("g1"), reg.get_generation("g4")
        query = case.spare[:1]
        q = open_embedder(ws, g4).embed(query)[0]
        reg.add_gallery_items(g1.id, ["coat-by-g1", "g1-a", "g1-b"],
                              np.stack([_at(q, c, rng) for c in (0.79, 0.70, 0.60)]), labels=["Coat", "Coat", "Bag"])
        reg.add_gallery_items(g4.id, ["shirt-by-g4", "g4-a", "g4-b"],
                              np.stack([_at(q, c, rng) for c in (0.91, 0.89, 0.50)]), labels=["Shirt", "Shirt", "Bag"])
        _promote_with(ws, g4, Calibration(g4.id, {g1.id: ScoreMap(1.0, 0.15)}))
    return BiasCase(case.home, query, g1.id, g4.id)


RAW_ORDER = ["shirt-by-g4", "g4-a", "coat-by-g1", "g1-a", "g1-b", "g4-b"]  # 0.91 0.89 0.79 0.70 0.60 0.50
CALIBRATED_ORDER = ["coat-by-g1", "shirt-by-g4", "g4-a", "g1-a", "g1-b", "g4-b"]  # 0.94 0.91 0.89 0.85 0.75 0.50


def test_served_search_ranks_by_the_stored_calibration_and_no_calibration_gives_raw_order(bias) -> None:  # type: ignore[no-untyped-def]
    with QueryService(bias.home, MANUAL) as svc:
        result = svc.search(bias.query, k=6)
        assert [h.external_id for h in result.hits[0]] == CALIBRATED_ORDER
        assert result.calibration == Calibration(bias.g4, {bias.g1: ScoreMap(1.0, 0.15)})
        assert result.hits[0][0].score == pytest.approx(0.94, abs=1e-4)
        st = svc.status()
        assert st.calibrate and st.calibration is not None and len(st.calibration.maps) == 1
    with QueryService(bias.home, RAW) as svc:
        result = svc.search(bias.query, k=6)
        assert [h.external_id for h in result.hits[0]] == RAW_ORDER
        assert result.calibration is None and svc.status().calibration is None and not svc.status().calibrate


def test_each_generations_own_order_is_unchanged(bias) -> None:  # type: ignore[no-untyped-def]
    with QueryService(bias.home, MANUAL) as cal, QueryService(bias.home, RAW) as raw:
        a, b = cal.search(bias.query, k=6).hits[0], raw.search(bias.query, k=6).hits[0]
    for g in (bias.g1, bias.g4):
        assert [h.external_id for h in a if h.generation_id == g] == [h.external_id for h in b if h.generation_id == g]


async def test_health_generation_and_search_say_whether_calibration_is_applied(bias, http_client, png) -> None:  # type: ignore[no-untyped-def]
    body = {"images": [base64.b64encode(png(bias.query[0])).decode()], "k": 2}
    async with http_client(bias.home, ServerSettings(poll_seconds=0, threads=2)) as (client, _):
        health = (await client.get("/health")).json()
        assert (health["status"], health["calibrated"], health["calibration_maps"]) == ("ok", True, 1)
        cal = (await client.get("/generation")).json()["calibration"]
        assert cal == {"enabled": True, "applied": True, "query_generation": bias.g4,
                       "maps": {str(bias.g1): {"scale": 1.0, "shift": 0.15}}}
        found = (await client.post("/search", json=body)).json()
        assert found["calibrated"] and found["results"][0]["hits"][0]["external_id"] == "coat-by-g1"
    async with http_client(bias.home, ServerSettings(poll_seconds=0, threads=2, calibrate=False)) as (client, _):
        health = (await client.get("/health")).json()
        assert (health["calibrated"], health["calibration_maps"]) == (False, 0)
        cal = (await client.get("/generation")).json()["calibration"]
        assert (cal["enabled"], cal["applied"], cal["maps"]) == (False, False, {})
        found = (await client.post("/search", json=body)).json()
        assert not found["calibrated"] and found["results"][0]["hits"][0]["external_id"] == "shirt-by-g4"


def test_upgrader_search_calibrates_and_no_calibration_gives_raw_order(bias, png, tmp_path) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "query.png"
    image.write_bytes(png(bias.query[0]))
    runner = CliRunner()
    base = ["search", str(image), "--home", str(bias.home), "-k", "6", "--json"]
    out = runner.invoke(cli, base)
    assert out.exit_code == 0, out.output
    found = json.loads(out.stdout)
    assert (found["calibrated"], found["calibration_maps"]) == (True, 1)
    assert [h["external_id"] for h in found["results"][0]["hits"]] == CALIBRATED_ORDER
    out = runner.invoke(cli, [*base, "--no-calibration"])
    assert out.exit_code == 0, out.output
    found = json.loads(out.stdout)
    assert (found["calibrated"], found["calibration_maps"]) == (False, 0)
    assert [h["external_id"] for h in found["results"][0]["hits"]] == RAW_ORDER
    table = runner.invoke(cli, base[:-1])
    assert table.exit_code == 0 and "queried with g4, calibrated (1 score map)" in " ".join(table.stdout.split())


def test_a_promotion_brings_its_own_calibration_with_its_embedder(case) -> None:  # type: ignore[no-untyped-def]
    with QueryService(case.home, MANUAL) as svc, open_workspace(case.home) as ws:
        assert svc.status().calibration is None  # g3 was made production by a move citing no report
        g3, g4 = ws.registry.get_generation("g3"), ws.registry.get_generation("g4")
        cal4 = Calibration(g4.id, {case.gen_ids["g1"]: ScoreMap(1.1, -0.02)})
        _promote_with(ws, g4, cal4)
        before = svc.snapshot()
        svc.refresh()
        after = svc.snapshot()
        assert (before.generation.name, before.calibration) == ("g3", None)  # requests in flight keep theirs
        assert (after.generation.name, after.calibration) == ("g4", cal4)
        assert after.score_maps == {case.gen_ids["g1"]: (1.1, -0.02)}
        ws.registry.move_alias(g3.id, actor="test", reason="test: back, no report", forced=True)
        svc.refresh()
        assert (svc.snapshot().generation.name, svc.snapshot().calibration) == ("g3", None)


class _MovingRegistry:
    """A registry whose alias moves from g3 to g4 between the reads of one consistent read."""

    def __init__(self, cal4: dict) -> None:  # type: ignore[type-arg]
        self.aliases = iter([3, 4, 4, 4])
        self.cal4 = cal4

    def get_alias(self) -> int:
        return next(self.aliases)

    def serving_calibration(self) -> dict:  # type: ignore[type-arg]
        return self.cal4  # the move to g4 committed before this read


def test_a_promotion_between_the_reads_never_pairs_one_generation_with_anothers_calibration() -> None:
    cal4 = Calibration(4, {1: ScoreMap(1.0, 0.1)})
    assert serving_calibration(_MovingRegistry(cal4.to_dict())) == (4, cal4)  # type: ignore[arg-type]


def test_a_calibration_that_cannot_be_applied_is_refused_and_the_old_one_keeps_serving(case) -> None:  # type: ignore[no-untyped-def]
    with QueryService(case.home, MANUAL) as svc, open_workspace(case.home) as ws:
        g4 = ws.registry.get_generation("g4")
        _promote_with(ws, g4, Calibration(case.gen_ids["g2"], {1: ScoreMap(1.0, 0.1)}))  # fitted for g2's queries
        svc.refresh()
        st = svc.status()
        assert st.serving is not None and st.serving.name == "g3" and st.calibration is None
        assert st.last_error is not None and "fitted for queries of generation" in st.last_error
    with pytest.raises(CalibrationUnusable, match="re-run the promotion"):
        QueryService(case.home, MANUAL)
    with QueryService(case.home, RAW) as svc:  # without calibration the new generation serves
        assert svc.snapshot().generation.name == "g4"
    out = CliRunner().invoke(cli, ["search", "--home", str(case.home), "--item", "0"])
    assert out.exit_code == 1 and "--no-calibration" in out.stderr


@pytest.fixture
def promoted(case) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """g4 promoted through ``upgrader promote`` (forced: the gate rightly refuses untrained models)."""
    out = CliRunner().invoke(cli, ["promote", "g4", "--home", str(case.home), "--force", "--reason", "test"])
    assert out.exit_code == 0, out.output
    yield case.home


def test_upgrader_promote_stores_a_calibration_that_serving_applies_as_brute_force_does(promoted, case) -> None:  # type: ignore[no-untyped-def]
    with open_workspace(promoted) as ws:
        stored = ws.registry.serving_calibration()
        assert stored is not None, "the gate stored no calibration with the report the promotion cites"
        expected = Calibration.from_dict(stored)
        g4 = ws.registry.get_generation("g4")
        gallery = ws.registry.load_gallery()
        q = open_embedder(ws, g4).embed(case.spare[:1])
    assert expected.query_gen == g4.id and not expected.is_identity
    mapped = expected.apply(q @ gallery.matrix.T, gallery.generation_ids)[0]
    raw = (q @ gallery.matrix.T)[0]
    n = len(gallery)
    with QueryService(promoted, MANUAL) as cal_svc, QueryService(promoted, RAW) as raw_svc:
        assert cal_svc.status().calibration == expected
        cal_hits, raw_hits = cal_svc.search(case.spare[:1], k=n).hits[0], raw_svc.search(case.spare[:1], k=n).hits[0]
    np.testing.assert_allclose([h.score for h in cal_hits], np.sort(mapped)[::-1], atol=1e-4)
    np.testing.assert_allclose([h.score for h in raw_hits], np.sort(raw)[::-1], atol=1e-4)
    position = {e: i for i, e in enumerate(gallery.external_ids)}
    assert cal_hits[0].external_id == gallery.external_ids[int(np.argmax(mapped))]
    assert [h.external_id for h in cal_hits] != [h.external_id for h in raw_hits]
    for g in set(gallery.generation_ids.tolist()):
        mine = [h.external_id for h in cal_hits if h.generation_id == g]
        assert mine == [h.external_id for h in raw_hits if h.generation_id == g]
        assert all(raw[position[a]] >= raw[position[b]] - 1e-5 for a, b in zip(mine, mine[1:]))
