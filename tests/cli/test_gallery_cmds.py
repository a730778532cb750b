"""gallery add/stats and search through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image



def test_gallery_stats_counts_items_by_generation(invoke, seeded: Path) -> None:
    body = invoke("gallery", "stats", "--json", home=seeded).json()
    assert body["total"] == 100
    assert body["by_generation"] == [{"id": 1, "name": "g1", "items": 100}]
    assert body["share_on_old"] == 0.0


def test_adding_the_same_items_twice_is_refused_and_nothing_is_written(invoke, seeded: Path) -> None:
    res = invoke("gallery", "add", "--classes", "0-3", "--per-class", "25", home=seeded)
    assert res.exit_code == 1
    assert "already" in res.stderr
    assert invoke("gallery", "stats", "--json", home=seeded).json()["total"] == 100


def test_search_by_dataset_item_returns_ranked_hits_with_generations(invoke, seeded: Path) -> None:
    res = invoke("search", "--item", "3", "-k", "4", "--json", home=seeded)
    assert res.exit_code == 0, res.stderr
    hits = res.json()["results"][0]["hits"]
    assert len(hits) == 4
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(h["generation_id"] == 1 for h in hits)


def test_search_by_image_file(invoke, seeded: Path, tmp_path: Path) -> None:
    img = tmp_path / "query.png"
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) % 255).astype(np.uint8)).save(img)  # resized to 28x28
    res = invoke("search", str(img), "-k", "2", "--json", home=seeded)
    assert res.exit_code == 0, res.stderr
    assert len(res.json()["results"][0]["hits"]) == 2


def test_search_without_a_query_is_a_usage_error(invoke, seeded: Path) -> None:
    res = invoke("search", home=seeded)
    assert res.exit_code == 2
    assert "--item" in res.stderr
    missing = invoke("search", "nope.png", home=seeded)
    assert missing.exit_code == 2 and "nope.png" in missing.stderr
