"""`upgrader gallery backfill`: re-embedding stored items with production, on the seeded workspace.

Before each test g2 is promoted (forced: these tests are about the backfill, not the gate), so the
gallery's 100 items of classes 0-3 are g1's and production is g2. Kills use a child process that
SIGKILLs itself at the ``backfill:batch`` fault point; the serving test runs a real `upgrader serve`.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli.conftest import run_cli
from tests.cli.test_fault_injection import assert_reads_work, run_killed
from upgrader.data.items import SourceReader, UnreadableSource, item_uris, load_items
from upgrader.data.readers import save_npz
from upgrader.services.backfill import plan_backfill, run_backfill
from upgrader.services.registration import open_embedder
from upgrader.services.workspace import open_workspace

PG_ENV = "UPGRADER_TEST_PG_URL"
MAX_SECONDS = 180.0  # bound for a hung server or client; every wait below ends on a condition


def promote_g2(home: Path) -> None:
    res = run_cli("promote", "g2", "--force", "--reason", "test: backfill with g2", home=home)
    assert res.exit_code == 0, res.stderr


def gallery_state(home: Path) -> dict[str, tuple[int, str | None, np.ndarray]]:
    """external id -> (generation, label, embedding) of every gallery item."""
    with open_workspace(home) as ws:
        g = ws.registry.load_gallery()
    assert len(set(g.external_ids)) == len(g.external_ids)  # no id twice
    return {e: (int(gen), lab, g.matrix[i].copy()) for i, (e, gen, lab) in
            enumerate(zip(g.external_ids, g.generation_ids, g.labels))}


def gen_id(home: Path, name: str) -> int:
    with open_workspace(home) as ws:
        return ws.registry.get_generation(name).id


def assert_embedded_by(home: Path, ids: list[str], generation: str, state: dict) -> None:
    """The stored embeddings of ``ids`` (``test-<index>`` items of Fashion-MNIST's test split) are
    ``generation``'s embeddings of those very images."""
    images = load_items("fashion-mnist", "test").images[[int(i.removeprefix("test-")) for i in ids]]
    with open_workspace(home) as ws:
        want = open_embedder(ws, ws.registry.get_generation(generation)).embed(images)
    got = np.stack([state[i][2] for i in ids])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.fixture
def g2_serving(seeded: Path) -> Path:
    promote_g2(seeded)
    return seeded


def test_a_dry_run_writes_nothing_and_its_curves_run_from_the_gallery_now_to_a_reindex(g2_serving: Path) -> None:
    home = g2_serving
    before = gallery_state(home)
    with open_workspace(home) as ws:
        version = ws.registry.gallery_version()
    res = run_cli("gallery", "backfill", "--dry-run", "--budget", "10%", "--json", home=home)
    assert res.exit_code == 0, res.stderr
    body = res.json()
    assert body["dry_run"] and body["candidates"] == 100 and body["budget"] == 10
    assert set(body["curves"]) == {"gain", "oldest", "random"}
    # A full re-index by hand: g2's probe queries on g2's probe gallery of the classes the gallery holds.
    with open_workspace(home) as ws:
        reg, g2 = ws.registry, ws.registry.get_generation("g2").id
        q, g = reg.get_probe_embeddings(g2, "query")[1], reg.get_probe_embeddings(g2, "gallery")[1]
        ql, gl = reg.probe_set("query").vertices, reg.probe_set("gallery").vertices
        held = [reg.interface().label_map[c] for c in ("T-shirt/top", "Trouser", "Pullover", "Dress")]
    keep_g, keep_q = np.isin(gl, held), np.isin(ql, held)
    top = np.argmax(q[keep_q] @ g[keep_g].T, axis=1)
    reindex = float(np.mean(gl[keep_g][top] == ql[keep_q]))
    assert body["estimate"]["reindex"] == pytest.approx(reindex, abs=1e-9)
    for policy, points in body["curves"].items():
        assert points[0]["fraction"] == 0 and points[0]["items"] == 0
        assert points[0]["recall_at_1"] == pytest.approx(body["estimate"]["now"]), policy
        assert points[-1]["fraction"] == 1 and points[-1]["items"] == 100
        assert points[-1]["recall_at_1"] == pytest.approx(reindex), policy
        assert any(p["fraction"] == pytest.approx(0.1) and p["items"] == 10 for p in points)
    assert sum(g["items"] for g in body["order"]) == 100
    text = run_cli("gallery", "backfill", "--dry-run", home=home)
    assert text.exit_code == 0 and "nothing was written" in text.stdout and "oldest" in text.stdout
    after = gallery_state(home)
    with open_workspace(home) as ws:
        assert ws.registry.gallery_version() == version
    assert after.keys() == before.keys()
    assert all(after[k][0] == before[k][0] and np.array_equal(after[k][2], before[k][2]) for k in before)


def test_a_backfill_estimated_to_lower_search_is_refused_and_writes_nothing(g2_serving: Path, tmp_path: Path) -> None:
    home = tmp_path / "lowering"
    shutil.copytree(g2_serving, home)
    plan = run_cli("gallery", "backfill", "--dry-run", "--budget", "30", "--policy", "oldest", "--json", home=home).json()
    assert plan["estimate"]["at_budget"] < plan["estimate"]["now"]  # this world: re-embedding 30 oldest items hurts
    before = gallery_state(home)
    res = run_cli("gallery", "backfill", "--budget", "30", "--policy", "oldest", home=home)
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    now, after = f"{100 * plan['estimate']['now']:.1f}%", f"{100 * plan['estimate']['at_budget']:.1f}%"
    assert f"from {now} to {after}" in res.stderr and "--allow-lower" in res.stderr
    assert gallery_state(home).keys() == before.keys() and all(
        gallery_state(home)[k][0] == before[k][0] for k in before)  # nothing re-embedded
    forced = run_cli("gallery", "backfill", "--budget", "30", "--policy", "oldest", "--allow-lower", "--json", home=home)
    assert forced.exit_code == 0 and forced.json()["reembedded"] == 30


def test_a_budget_of_n_reembeds_exactly_n_items_in_the_policys_order_oldest_first(g2_serving: Path, tmp_path: Path) -> None:
    home = g2_serving
    g1, g2 = gen_id(home, "g1"), gen_id(home, "g2")
    with open_workspace(home) as ws:
        rows = ws.registry.load_gallery()
        vertex = ws.registry.interface().label_map
    by_class: dict[int, list[str]] = {}
    for rid, ext, lab in sorted(zip(rows.row_ids, rows.external_ids, rows.labels)):
        by_class.setdefault(vertex[lab], []).append(ext)  # ascending row id: oldest first
    oldest_home = tmp_path / "oldest"
    shutil.copytree(home, oldest_home)

    # oldest: the lowest generation, then class vertex; all 25 of class 0, then the 5 oldest of class 1.
    res = run_cli("gallery", "backfill", "--allow-lower", "--budget", "30", "--policy", "oldest", "--batch-size", "8", "--json",
                  home=oldest_home)
    assert res.exit_code == 0, res.stderr
    assert res.json()["reembedded"] == 30 and res.json()["remaining"] == 70
    state = gallery_state(oldest_home)
    switched = sorted(k for k, (g, _, _) in state.items() if g == g2)
    assert switched == sorted(by_class[0] + by_class[1][:5])
    assert all(g == g1 for k, (g, _, _) in state.items() if k not in switched)
    assert_embedded_by(oldest_home, switched, "g2", state)

    # gain: whole groups in the order the dry run lists, the partly taken one oldest first.
    order = run_cli("gallery", "backfill", "--dry-run", "--json", home=home).json()["order"]
    assert [o["generation"] for o in order] == [g1] * 4
    want = by_class[order[0]["vertex"]] + by_class[order[1]["vertex"]][:5]
    res = run_cli("gallery", "backfill", "--allow-lower", "--budget", "30", "--json", home=home)
    assert res.exit_code == 0 and res.json()["policy"] == "gain" and res.json()["reembedded"] == 30
    assert sorted(k for k, (g, _, _) in gallery_state(home).items() if g == g2) == sorted(want)

    # a percentage of the gallery, counted like the dry run's rows; then the rest by default
    assert run_cli("gallery", "backfill", "--allow-lower", "--budget", "10%", "--json", home=home).json()["reembedded"] == 10
    rest = run_cli("gallery", "backfill", "--allow-lower", "--json", home=home).json()
    assert rest["reembedded"] == 60 and rest["remaining"] == 0 and rest["by_generation"][0]["id"] == g1
    again = run_cli("gallery", "backfill", "--allow-lower", "--json", home=home).json()
    assert again["reembedded"] == 0 and again["candidates"] == 0
    for bad in ("0", "abc", "150%", "-3"):
        res = run_cli("gallery", "backfill", "--budget", bad, home=home)
        assert res.exit_code == 2 and "budget" in res.stderr, bad
    assert run_cli("gallery", "backfill", "--policy", "newest", home=home).exit_code == 2
    assert run_cli("gallery", "backfill", "--batch-size", "0", home=home).exit_code == 2


# ------------------------------------------------------------------- a kill between batches, both backends


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def killable(request: pytest.FixtureRequest, seeded: Path, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """(home, items): the seeded workspace with g2 promoted (SQLite), or a small one on PostgreSQL
    (untrained g1 wrote 40 items of classes 0-3 from Fashion-MNIST's test split, g2 promoted)."""
    if request.param == "sqlite":
        promote_g2(seeded)
        yield seeded, 100
        return
    server = os.environ.get(PG_ENV)
    if not server:
        pytest.skip(f"{PG_ENV} is not set (scripts/start-postgres starts a server)")
    import torch
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from upgrader.services.gallery import add_dataset
    from upgrader.services.promotion import promote
    from upgrader.services.registration import import_artifact
    from upgrader.services.workspace_init import init_workspace
    from upgrader.training.export import export_onnx
    from upgrader.training.models import build_model

    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    schema = f"t_bf_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(server).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    try:
        home = tmp_path / "pg-ws"
        ws = init_workspace(home, num_classes=16, query_per_class=5, gallery_per_class=5, db_url=url)
        try:
            for seed, name in enumerate(("g1", "g2"), 1):
                torch.manual_seed(seed)
                path = tmp_path / f"{name}.onnx"
                export_onnx(build_model("small_cnn", 16).eval(), path, metadata={"generation_name": name})
                import_artifact(ws, path, name=name, kind="initial" if name == "g1" else "replacement")
            promote(ws, "g1", force=True, reason="test")
            assert add_dataset(ws, "fashion-mnist", classes="0-3", per_class=10).added == 40
            promote(ws, "g2", force=True, reason="test")
        finally:
            ws.close()
        yield home, 40
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


def test_a_backfill_killed_between_batches_resumes_with_no_item_lost_or_duplicated(killable: tuple[Path, int]) -> None:
    home, items = killable
    g1, g2 = gen_id(home, "g1"), gen_id(home, "g2")
    before = gallery_state(home)
    assert len(before) == items and {g for g, _, _ in before.values()} == {g1}

    run_killed(home, "backfill:batch", "gallery", "backfill", "--allow-lower", "--batch-size", "7")
    assert_reads_work(home)
    partial = gallery_state(home)
    assert partial.keys() == before.keys()  # none lost, none added
    assert all(partial[k][1] == before[k][1] for k in before)  # labels kept
    by_gen = {g: sum(1 for v in partial.values() if v[0] == g) for g in (g1, g2)}
    assert by_gen == {g1: items - 7, g2: 7}  # the committed batch, whole; nothing of the next
    for k, (g, _, emb) in partial.items():  # every item either its old embedding or production's
        if g == g1:
            assert np.array_equal(emb, before[k][2])

    again = run_cli("gallery", "backfill", "--allow-lower", "--batch-size", "7", "--json", home=home)
    assert again.exit_code == 0, again.stderr
    assert again.json()["reembedded"] == items - 7 and again.json()["remaining"] == 0
    after = gallery_state(home)
    assert after.keys() == before.keys() and all(g == g2 for g, _, _ in after.values())
    assert_embedded_by(home, sorted(after), "g2", after)


# ------------------------------------------------------------------- unreadable sources


def write_folder(root: Path, images: np.ndarray, classes: list[str], per_class: int) -> None:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(images[c * per_class + j][..., 0]).save(root / name / f"item #{j}.png")


def test_items_whose_source_cannot_be_read_are_reported_skipped_and_kept(seeded: Path, tmp_path: Path) -> None:
    home = seeded
    pool = load_items("fashion-mnist", "train").images[-40:]  # 28x28 grey, like the workspace
    a, b = tmp_path / "folder-a", tmp_path / "folder-b"
    write_folder(a, pool[:8], ["Trouser", "Bag"], 4)
    write_folder(b, pool[8:12], ["Bag"], 4)
    for prefix, folder in (("a-", a), ("b-", b)):  # embedded by g1 while it serves
        res = run_cli("gallery", "add", "--dataset", str(folder), "--id-prefix", prefix, "--json", home=home)
        assert res.exit_code == 0, res.stderr
    with open_workspace(home) as ws:  # an item stored with no source at all
        g1 = ws.registry.get_generation("g1")
        ws.registry.add_gallery_items(g1.id, ["no-source"], open_embedder(ws, g1).embed(pool[20:21]), labels=["Bag"])
    promote_g2(home)
    before = gallery_state(home)
    (a / "Trouser" / "item #0.png").unlink()  # file gone
    Image.fromarray(255 - pool[1][..., 0]).save(a / "Trouser" / "item #1.png")  # pixels changed
    b.rename(tmp_path / "moved")  # dataset moved
    broken = {"a-Trouser/item #0.png": "item-missing", "a-Trouser/item #1.png": "pixels-changed",
              **{f"b-Bag/item #{j}.png": "dataset-missing" for j in range(4)}, "no-source": "no-source"}
    assert broken.keys() <= before.keys()

    res = run_cli("gallery", "backfill", "--allow-lower", "--batch-size", "5", "--json", home=home)
    assert res.exit_code == 0, res.stderr
    body = res.json()
    skipped = body["skipped_unreadable"]
    assert skipped["count"] == len(broken) and body["reembedded"] == len(before) - len(broken)
    assert skipped["reasons"] == {"dataset-missing": 4, "item-missing": 1, "no-source": 1, "pixels-changed": 1}
    assert set(skipped["preview"]) <= broken.keys() and len(skipped["preview"]) == 5
    after = gallery_state(home)
    g1, g2 = gen_id(home, "g1"), gen_id(home, "g2")
    assert after.keys() == before.keys()
    for k, (g, _, emb) in after.items():
        if k in broken:  # kept, with its old embedding
            assert g == g1 and np.array_equal(emb, before[k][2]), k
        else:
            assert g == g2, k
    text = run_cli("gallery", "backfill", "--allow-lower", home=home)  # a re-run reports them again, and loses none
    assert text.exit_code == 0 and "skipped 7 items whose source cannot be read" in text.stdout
    assert gallery_state(home).keys() == before.keys()


def test_the_source_reader_finds_a_moved_array_item_by_its_pixels_and_refuses_changed_ones(tmp_path: Path) -> None:
    ds = load_items("fashion-mnist", "test").take(np.arange(6))
    path = tmp_path / "items #1.npz"
    save_npz(path, ds.images, ds.labels, ds.classes)
    uris = item_uris(str(path), "test", [0, 1, 2], load_items(str(path), "test"))
    assert uris[1].startswith(f"{path}#all#1#")
    save_npz(path, ds.images[::-1], ds.labels[::-1], ds.classes)  # item 1 now sits at index 4
    reader = SourceReader((28, 28, 1))
    np.testing.assert_array_equal(reader.read(uris[1]), ds.images[1])
    changed = tmp_path / "changed.npz"
    save_npz(changed, 255 - ds.images, ds.labels, ds.classes)
    fresh = SourceReader((28, 28, 1))
    with pytest.raises(UnreadableSource) as err:
        fresh.read(uris[1].replace(str(path), str(changed)))
    assert err.value.reason == "pixels-changed"
    np.testing.assert_array_equal(fresh.read(f"{changed}#all#2"), 255 - ds.images[2])  # positional: unverified
    for uri, reason in ((None, "no-source"), ("nonsense", "malformed"), (f"{tmp_path}/gone.npz#all#0", "dataset-missing")):
        with pytest.raises(UnreadableSource) as err:
            fresh.read(uri)
        assert err.value.reason == reason, uri


# ------------------------------------------------------------------- serving during a backfill


def _png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition, deadline: float, what: str) -> None:  # type: ignore[no-untyped-def]
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)  # poll period; the bound is the deadline


def test_serve_answers_every_request_during_a_backfill_and_follows_it_batch_by_batch(
    g2_serving: Path, tmp_path: Path
) -> None:
    import httpx

    home, batch = g2_serving, 10
    g1, g2 = gen_id(home, "g1"), gen_id(home, "g2")
    queried = sorted(gallery_state(home))[:3]  # gallery items' own images: each is its own nearest item
    images = load_items("fashion-mnist", "test").images
    bodies = [{"images": [_png(images[int(i.removeprefix("test-"))])], "k": 3} for i in queried]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-c", "from upgrader.cli import main; main()", "serve", "--home", str(home), "--port",
         str(port), "--poll-seconds", "0.1", "--threads", "2", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + MAX_SECONDS
    failures: list[str] = []
    answered = [0] * len(bodies)
    seen: list[dict[str, int]] = []  # items_by_generation as clients saw it
    stop = threading.Event()

    def served_counts() -> dict[str, int]:
        return httpx.get(f"{url}/generation", timeout=10).json()["items_by_generation"]

    def up() -> bool:
        assert server.poll() is None, f"upgrader serve exited: {(tmp_path / 'serve.log').read_text()[-2000:]}"
        try:
            return httpx.get(f"{url}/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60.0) as c:  # a bound for a stuck request
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    r = c.post("/search", json=bodies[i])
                    if r.status_code != 200:
                        failures.append(f"/search {r.status_code}: {r.text[:200]}")
                    gen = c.get("/generation")
                    if gen.status_code != 200:
                        failures.append(f"/generation {gen.status_code}: {gen.text[:200]}")
                    else:
                        seen.append(gen.json()["items_by_generation"])
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                answered[i] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(bodies))]
    try:
        _wait(up, deadline, "upgrader serve answers /health")
        for t in threads:
            t.start()

        def between_batches(done: int, total: int) -> None:
            # The server has followed this batch, and every client was answered after it did.
            _wait(lambda: served_counts().get(str(g2), 0) == done, deadline, f"the server serves {done} items by g2")
            marks = list(answered)
            _wait(lambda: all(a > m for a, m in zip(answered, marks)), deadline, f"clients answered after {done} items")

        with open_workspace(home) as ws:
            res = run_backfill(ws, plan_backfill(ws), batch_size=batch, progress=between_batches)
        assert res.reembedded == 100 and not res.unreadable
        assert served_counts() == {str(g2): 100}
        with httpx.Client(base_url=url, timeout=60.0) as c:
            for ext, body in zip(queried, bodies):
                top = c.post("/search", json=body).json()["results"][0]["hits"][0]
                assert top["external_id"] == ext and top["generation_id"] == g2
    finally:
        stop.set()
        for t in threads:
            if t.ident is not None:  # started
                t.join(timeout=30)
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    assert not failures, f"{len(failures)} failed requests, e.g. {failures[0]}"
    mixed = [c for c in seen if c.get(str(g1)) and c.get(str(g2))]
    assert mixed, "no client saw the gallery midway through the backfill"
    for counts in seen:  # each batch switched whole: never part of one
        assert sum(counts.values()) == 100 and counts.get(str(g2), 0) % batch == 0, counts
