"""A real workspace with four quick generations (untrained models exported to ONNX), built once per
session and copied per test.

g1, g2 and g3 were promoted in turn (forced: the gate rightly refuses random models) and each wrote
20 gallery items while it was production, so the gallery mixes three generations; g3 is production.
g4 is registered but not promoted: tests promote it to watch the service switch.
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
            promote(ws, name, force=True, reason="test")
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
