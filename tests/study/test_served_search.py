"""The demo's and the study's served figures are what a user of `upgrader serve` would compute."""

from __future__ import annotations

import numpy as np

from upgrader.data.items import load_items
from upgrader.serving.config import ServingConfig
from upgrader.serving.service import QueryService
from upgrader.services.gallery import production_embedder
from upgrader.services.workspace import open_workspace
from upgrader.study.served_search import CURVE_FRACTIONS, measure_served


def _unseen_test_images(ws, n: int) -> tuple[np.ndarray, list[str]]:
    """``n`` test images in neither the gallery nor the probe set, with their labels."""
    ds = load_items(ws.config.dataset, "test")
    stored = set(ws.registry.load_gallery().external_ids)
    probe_pixels = {ws.registry.probe_set(split).images[i].tobytes() for split in ("query", "gallery")
                    for i in range(len(ws.registry.probe_set(split).images))}
    idx = [i for i in range(len(ds.labels)) if f"test-{i}" not in stored and ds.images[i].tobytes() not in probe_pixels][:n]
    part = ds.take(np.asarray(idx))
    return part.images, part.class_names()


def _served_top1(home, images: np.ndarray, labels: list[str], calibrate: bool) -> float:
    with QueryService(home, ServingConfig(poll_seconds=0, calibrate=calibrate)) as svc:  # 64 images a request
        hits = [row for start in range(0, len(images), 64) for row in svc.search(images[start:start + 64], k=1).hits]
    return float(np.mean([row[0].label == lbl for row, lbl in zip(hits, labels)]))


def test_served_figures_equal_the_query_service_and_a_reindex_by_hand(tiny_study) -> None:
    _, data, _ = tiny_study
    home = next(r["workspace"] for r in data["runs"] if r["method"] == "hoc")
    with open_workspace(home) as ws:
        images, labels = _unseen_test_images(ws, 200)
        held = {lbl for lbl in ws.registry.load_gallery().labels}
        keep = [i for i, lbl in enumerate(labels) if lbl in held]
        images, labels = images[keep], [labels[i] for i in keep]
        served = measure_served(ws, images, labels)
        # a re-index by hand: every stored item re-read from the dataset and embedded by production
        _, embedder = production_embedder(ws)
        ds = load_items(ws.config.dataset, "test")
        stored = ws.registry.load_gallery()
        items = embedder.embed(ds.take(np.array([int(e.split("-")[1]) for e in stored.external_ids])).images)
        nearest = np.argmax(embedder.embed(images) @ items.T, axis=1)
        by_hand = float(np.mean([stored.labels[j] == lbl for j, lbl in zip(nearest, labels)]))
    assert served.queries == len(labels) > 0
    assert served.calibrated == _served_top1(home, images, labels, calibrate=True)
    assert served.raw == _served_top1(home, images, labels, calibrate=False)
    assert served.reindex == by_hand
    for policy in ("gain", "oldest", "random"):
        curve = served.backfill[policy]
        assert [f for f, _, _ in curve] == list(CURVE_FRACTIONS)
        assert curve[0][2] == served.calibrated and curve[-1][2] == served.reindex  # nothing moved / all moved
