"""A real workspace with four quick generations (untrained models exported to ONNX), built once per
session and copied per test.

g1, g2 and g3 were made production in turn and each wrote 20 gallery items while it was production,
so the gallery mixes three generations; g3 is production. The moves are forced registry moves that
cite no gate report, so no score calibration is stored: the gate would fit one to untrained, mutually
incompatible models (shifts of about +1 for the older generations), and the tests of search order
below are about raw cosine similarity. Tests of calibration store the one they need
(tests/serving/test_calibrated_serving.py). g4 is registered but not promoted: tests promote it to
watch the service switch.
"""

from __future__ import annotations

import io
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upgrader.data.items import load_items
from upgrader.training.export import export_onnx
from upgrader.services.registration import import_artifact, open_embedder
from upgrader.training.models import build_model
from upgrader.services.workspace_init import init_workspace
from upgrader.services.promotion import promote

NUM_CLASSES = 16
PER_GENERATION = 20
GENERATIONS = ("g1", "g2", "g3", "g4")


@dataclass(frozen=True)
class ServingCase:
    """The master workspace and what went into it."""

    home: Path
    images: dict[str, np.ndarray]  # generation name -> uint8 [20, 28, 28, 1] gallery images it wrote
    ids: dict[str, list[str]]  # generation name -> external ids of those items
    gen_ids: dict[str, int]  # generation name -> registry id
    spare: np.ndarray  # uint8 [20, 28, 28, 1] images not in the gallery


def quick_generation(ws, name: str, seed: int, folder: Path):  # type: ignore[no-untyped-def]
    """An untrained small CNN exported and registered (seconds, no training)."""
    torch.manual_seed(seed)
    model = build_model("small_cnn", NUM_CLASSES).eval()
    path = folder / f"{name}.onnx"
    export_onnx(model, path, metadata={"generation_name": name})
    return import_artifact(ws, path, name=name, kind="initial" if name == "g1" else "replacement")


@pytest.fixture(scope="session")
def serving_master(tmp_path_factory: pytest.TempPathFactory) -> ServingCase:
    root = tmp_path_factory.mktemp("serving")
    home = root / "ws"
    data = load_items("fashion-mnist", "test")
    pool = data.images[5000 : 5000 + PER_GENERATION * 4]  # [80, 28, 28, 1]
    names = data.class_names()[5000 : 5000 + PER_GENERATION * 4]
    ws = init_workspace(home, num_classes=NUM_CLASSES, query_per_class=5, gallery_per_class=5)
    images: dict[str, np.ndarray] = {}
    ids: dict[str, list[str]] = {}
    gen_ids: dict[str, int] = {}
    try:
        for i, name in enumerate(GENERATIONS):
            gen = quick_generation(ws, name, seed=i + 1, folder=root)
            gen_ids[name] = gen.id
            if name == "g4":
                continue
            ws.registry.move_alias(gen.id, actor="test", reason="test: untrained models, no gate", forced=True)
            part = pool[i * PER_GENERATION : (i + 1) * PER_GENERATION]
            item_ids = [f"{name}-item-{j}" for j in range(PER_GENERATION)]
            labels = names[i * PER_GENERATION : (i + 1) * PER_GENERATION]
            feats = open_embedder(ws, gen).embed(part)
            ws.registry.add_gallery_items(gen.id, item_ids, feats, labels=labels)
            images[name], ids[name] = part, item_ids
    finally:
        ws.close()
    return ServingCase(home, images, ids, gen_ids, pool[3 * PER_GENERATION :])


@pytest.fixture
def case(serving_master: ServingCase, tmp_path: Path) -> ServingCase:
    """A private copy of the master workspace (tests promote, add and delete on their own)."""
    dest = tmp_path / "ws"
    shutil.copytree(serving_master.home, dest)
    return ServingCase(dest, serving_master.images, serving_master.ids, serving_master.gen_ids, serving_master.spare)


def png(image: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    """Encode a uint8 [H, W, 1|3] image as PNG, optionally resized to ``size`` (W, H)."""
    im = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    if size is not None:
        im = im.resize(size)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(name="png")
def png_fixture():  # type: ignore[no-untyped-def]
    """The PNG encoder helper (a fixture: test modules cannot import conftest reliably)."""
    return png


@pytest.fixture
def loopback_socket() -> Iterator[socket.socket]:
    """A TCP socket bound to 127.0.0.1 on a free port, for a server started on it; closed afterwards."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def http_client():  # type: ignore[no-untyped-def]
    """A factory: ``async with http_client(home, settings) as (client, service)`` serves the app in-process."""
    import contextlib

    import httpx

    from upgrader.serving.http.app import create_app

    @contextlib.asynccontextmanager
    async def open_client(home: Path, settings):  # type: ignore[no-untyped-def]
        app = create_app(home, settings)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                yield client, app.state.service
        finally:
            app.state.service.close()

    return open_client


PG_ENV = "UPGRADER_TEST_PG_URL"


@dataclass(frozen=True)
class BackendCase:
    """A served workspace on one registry backend: what serves, and another generation to point at."""

    home: Path
    backend: str  # "sqlite" or "postgres"
    db_url: str  # SQLAlchemy URL of its registry
    production: str  # name of the generation in production
    other_id: int  # id of a registered generation that is not in production


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_case(request: pytest.FixtureRequest, case: ServingCase, tmp_path: Path) -> Iterator[BackendCase]:
    """SQLite: the copied serving workspace (g3 serving, g4 registered). PostgreSQL: a small one built
    in a fresh schema of ``UPGRADER_TEST_PG_URL`` (g1 serving, g2 registered), dropped afterwards."""
    if request.param == "sqlite":
        yield BackendCase(case.home, "sqlite", f"sqlite:///{case.home / 'registry.db'}", "g3", case.gen_ids["g4"])
        return
    import os
    import uuid

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    server = os.environ.get(PG_ENV)
    if not server:
        pytest.skip(f"{PG_ENV} is not set (scripts/start-postgres starts a server)")
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    schema = f"t_srv_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(server).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    try:
        home = tmp_path / "pg-ws"
        ws = init_workspace(home, num_classes=NUM_CLASSES, query_per_class=5, gallery_per_class=5, db_url=url)
        try:
            quick_generation(ws, "g1", seed=1, folder=tmp_path)
            other = quick_generation(ws, "g2", seed=2, folder=tmp_path)
            promote(ws, "g1", force=True, reason="test")
        finally:
            ws.close()
        yield BackendCase(home, "postgres", url, "g1", other.id)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()
