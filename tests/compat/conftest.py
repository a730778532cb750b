"""A small synthetic workspace on each registry backend, for the promotion rules through the Python API.

No model and no training: each generation's "artifact" is a file of distinct bytes (the gate checks
its sha256) and its probe embeddings are written with it, built so the gate's verdicts are known:

- ``g1``: class vertices plus heavy noise on its probe queries (its self-test is below 1);
- ``g2``: the same vertices with clean queries (compatible with g1, and an improvement);
- ``bad``: a different orthogonal basis per class (what an incompatible method produces).

PostgreSQL needs ``UPGRADER_TEST_PG_URL`` (``bash scripts/start-postgres`` prints it); each test gets
a fresh schema, dropped afterwards.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from registry import NewGeneration

from upgrader.services.workspace import Workspace, WorkspaceConfig, create_workspace

PG_ENV = "UPGRADER_TEST_PG_URL"
K = 8  # interface vertices: embedding dim 7
CLASSES = ("a", "b", "c", "d")
PER_CLASS = 6  # probe queries and probe gallery items per class


@dataclass
class SyntheticWorkspace:
    """The open workspace and the backend it runs on."""

    ws: Workspace
    backend: str

    def artifact(self, name: str) -> Path:
        return self.ws.artifacts_dir / name / "model.onnx"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _embeddings(kind: str, vertices: np.ndarray, split: str, rng: np.random.Generator) -> np.ndarray:
    """Probe embeddings [N, K-1] of one synthetic generation."""
    basis = np.eye(K - 1, dtype=np.float64)
    if kind == "bad":
        basis = np.roll(basis, 3, axis=0)  # class c sits where class c+3 sat: nothing lines up
    centres = basis[vertices]
    noise = {"g1": 0.9 if split == "query" else 0.2, "g2": 0.05, "bad": 0.05}[kind]
    return _unit(centres + noise * rng.standard_normal(centres.shape))


def add_synthetic_generation(sw: SyntheticWorkspace, name: str, kind: str, seed: int) -> int:
    """Register generation ``name`` of ``kind`` (g1, g2 or bad) with its file and probe embeddings."""
    ws = sw.ws
    path = sw.artifact(name)
    path.parent.mkdir(parents=True)
    path.write_bytes(f"synthetic artifact {name}".encode())
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    rng = np.random.default_rng(seed)
    probe = {}
    for split in ("query", "gallery"):
        ps = ws.registry.probe_set(split)
        probe[split] = (ps.item_ids, _embeddings(kind, ps.vertices, split, rng))
    gen = ws.registry.add_generation(
        NewGeneration(name=name, kind="initial", method="hoc", architecture="small_cnn",
                      onnx_path=ws.relative(path), onnx_sha256=sha, num_classes=K),
        probe_embeddings=probe,
    )
    return gen.id


def add_gallery(sw: SyntheticWorkspace, gen_id: int, kind: str, prefix: str) -> None:
    """Gallery items of every class written by one generation (it becomes live)."""
    vertices = np.repeat(np.arange(len(CLASSES)), 3)
    feats = _embeddings(kind, vertices, "gallery", np.random.default_rng(99))
    sw.ws.registry.add_gallery_items(
        gen_id, [f"{prefix}-{i}" for i in range(len(vertices))], feats, labels=[CLASSES[v] for v in vertices]
    )


@pytest.fixture
def gallery_of():
    """``gallery_of(sw, gen_id, kind, prefix)``: gallery items of every class written by one generation."""
    return add_gallery


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def synthetic(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SyntheticWorkspace]:
    """A workspace with K=8, four classes, a probe set and generations g1, g2 and bad (none promoted)."""
    url: str | None = None
    admin = None
    schema = f"t_promo_{uuid.uuid4().hex[:12]}"
    if request.param == "postgres":
        if not os.environ.get(PG_ENV):
            pytest.skip(f"{PG_ENV} is not set (scripts/start-postgres starts a server)")
        admin = create_engine(os.environ[PG_ENV], isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = make_url(os.environ[PG_ENV]).update_query_dict(
            {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    config = WorkspaceConfig(dataset="synthetic", num_classes=K, probe_query_per_class=PER_CLASS,
                             probe_gallery_per_class=PER_CLASS, probe_split="all", seed=0, db_url=url)
    ws = create_workspace(tmp_path / "ws", config)
    try:
        reg = ws.registry
        reg.set_interface(K)
        reg.assign_classes(CLASSES)
        names = [c for c in CLASSES for _ in range(PER_CLASS)]
        images = np.random.default_rng(0).integers(0, 256, (len(names), 4, 4, 1), dtype=np.uint8)
        reg.add_probe_items("query", images, names)
        reg.add_probe_items("gallery", images[::-1].copy(), names)
        sw = SyntheticWorkspace(ws, request.param)
        for seed, name in enumerate(("g1", "g2", "bad")):
            add_synthetic_generation(sw, name, name, seed)
        yield sw
    finally:
        ws.close()
        if admin is not None:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            admin.dispose()
