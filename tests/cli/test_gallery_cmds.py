"""gallery add/rm/stats and search through the CLI.

The seeded workspace (tests/cli/conftest.py) is trained and SQLite only; the resume and removal
tests run on both registry backends on a workspace of two untrained generations (seconds to build).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data.backends import BACKENDS, database_url


def test_gallery_stats_counts_items_by_generation(invoke, seeded: Path) -> None:
    body = invoke("gallery", "stats", "--json", home=seeded).json()
    assert body["total"] == 100
    assert body["by_generation"] == [{"id": 1, "name": "g1", "items": 100}]
    assert body["share_on_old"] == 0.0


def test_adding_the_same_items_again_resumes_and_skips_them_all(invoke, seeded: Path) -> None:
    res = invoke("gallery", "add", "--classes", "0-3", "--per-class", "25", home=seeded)
    assert res.exit_code == 0, res.stderr
    assert "added 0 items" in res.stdout and "skipped 100 ids already in the gallery" in res.stdout
    strict = invoke("gallery", "add", "--classes", "0-3", "--per-class", "25", "--no-skip-existing", home=seeded)
    assert strict.exit_code == 2
    assert "100 of the ids are already in the gallery" in strict.stderr and "--no-skip-existing" in strict.stderr
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


@pytest.mark.parametrize("k", ["0", "-3"])
def test_search_with_k_below_one_is_a_one_line_usage_error(invoke, seeded: Path, k: str) -> None:
    res = invoke("search", "--item", "3", "-k", k, home=seeded)
    assert res.exit_code == 2
    assert "-k must be at least 1" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_search_with_k_above_the_gallery_size_is_a_usage_error(invoke, seeded: Path) -> None:
    res = invoke("search", "--item", "3", "-k", "101", home=seeded)
    assert res.exit_code == 2
    assert "gallery holds 100 items; ask for at most 100" in res.stderr
    assert invoke("search", "--item", "3", "-k", "100", "--json", home=seeded).exit_code == 0


def test_a_png_bomb_in_a_gallery_folder_is_refused_and_nothing_is_added(invoke, seeded: Path, tmp_path: Path) -> None:
    from tests.data.test_probe_identity import _png_bomb

    folder = tmp_path / "shop"
    for name in ("Bag", "Coat"):
        (folder / name).mkdir(parents=True)
        Image.fromarray(np.full((28, 28), 50, dtype=np.uint8)).save(folder / name / "a.png")
    _png_bomb(folder / "Coat" / "b.png")
    res = invoke("gallery", "add", "--dataset", str(folder), home=seeded)
    assert res.exit_code == 1
    assert str(folder / "Coat" / "b.png") in res.stderr and "pixels" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert invoke("gallery", "stats", "--json", home=seeded).json()["total"] == 100


def test_an_image_folder_resumes_by_file_name_after_a_file_that_sorts_first_is_added(
    invoke, seeded: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "shop"
    rng = np.random.default_rng(3)
    for name in ("Bag", "Coat"):
        (folder / name).mkdir(parents=True)
        for i in range(1, 4):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / name / f"{i}.png")
    first = invoke("gallery", "add", "--dataset", str(folder), "--id-prefix", "shop-", "--json", home=seeded)
    assert first.exit_code == 0, first.stderr
    assert first.json()["added"] == 6
    Image.fromarray(np.full((28, 28), 9, dtype=np.uint8)).save(folder / "Bag" / "0.png")  # shifts every index
    again = invoke("gallery", "add", "--dataset", str(folder), "--id-prefix", "shop-", "--json", home=seeded).json()
    assert (again["added"], again["skipped"], again["total"]) == (1, 6, 107)
    gone = invoke("gallery", "rm", "shop-Bag/0.png", "shop-Coat/3.png", "--json", home=seeded).json()
    assert (gone["deleted"], gone["not_found"]) == (2, 0)


# ---- resume and removal, on both registry backends ----------------------------------------------

ADD = ("gallery", "add", "--classes", "0-1", "--per-class", "6", "--batch-size", "4", "--id-prefix", "r-")


@pytest.fixture(scope="module")
def quick_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two untrained small CNNs exported to ONNX (no training: the gallery commands only embed)."""
    import torch

    from upgrader.training.export import export_onnx
    from upgrader.training.models import build_model

    folder = tmp_path_factory.mktemp("quick")
    for seed, name in enumerate(("q1", "q2"), start=1):
        torch.manual_seed(seed)
        export_onnx(build_model("small_cnn", 16).eval(), folder / f"{name}.onnx", metadata={"generation_name": name})
    return folder


@pytest.fixture(params=BACKENDS)
def two_generations(request: pytest.FixtureRequest, tmp_path: Path, quick_artifacts: Path, invoke) -> Iterator[Path]:
    """q1 in production (forced) and q2 registered, an empty gallery, on each registry backend."""
    from upgrader.services.registration import import_artifact
    from upgrader.services.workspace_init import init_workspace

    with database_url(request.param) as url:
        home = tmp_path / "ws"
        with init_workspace(home, num_classes=16, query_per_class=3, gallery_per_class=3, db_url=url) as ws:
            import_artifact(ws, quick_artifacts / "q1.onnx", name="q1", kind="initial")
            import_artifact(ws, quick_artifacts / "q2.onnx", name="q2", kind="replacement")
        res = invoke("promote", "q1", "--force", "--reason", "first generation", home=home)
        assert res.exit_code == 0, res.stderr
        yield home


def _gallery_ids(home: Path) -> list[str]:
    from upgrader.services.workspace import open_workspace

    with open_workspace(home) as ws:
        return sorted(ws.registry.load_gallery().external_ids)


def _by_generation(invoke, home: Path) -> dict[str, int]:
    return {g["name"]: g["items"] for g in invoke("gallery", "stats", "--json", home=home).json()["by_generation"]}


def test_a_rerun_add_skips_what_is_stored_and_refuses_ids_of_another_generation(invoke, two_generations: Path) -> None:
    home = two_generations
    first = invoke(*ADD, "--json", home=home)
    assert first.exit_code == 0, first.stderr
    assert (first.json()["added"], first.json()["skipped"]) == (12, 0)
    # As after a kill between batches: some ids are stored, some not.
    stored = _gallery_ids(home)
    assert len(stored) == 12 and all(i.startswith("r-") for i in stored)
    gone = invoke("gallery", "rm", *stored[:5], "--json", home=home)
    assert (gone.json()["deleted"], gone.json()["not_found"], gone.json()["total"]) == (5, 0, 7)
    resumed = invoke(*ADD, home=home)
    assert resumed.exit_code == 0, resumed.stderr
    assert "added 5 items" in resumed.stdout and "skipped 7 ids already in the gallery" in resumed.stdout
    assert _by_generation(invoke, home) == {"q1": 12}

    assert invoke("promote", "q2", "--force", "--reason", "replacement", home=home).exit_code == 0
    refused = invoke(*ADD, home=home)
    assert refused.exit_code == 2
    assert "12 of the ids are already in the gallery embedded by q1, not by production q2" in refused.stderr
    assert "--skip-other-generations" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    kept = invoke(*ADD, "--skip-other-generations", "--json", home=home).json()
    assert (kept["added"], kept["skipped"], kept["skipped_other_generations"]) == (0, 12, 12)

    wiped = invoke("gallery", "rm", "--generation", "q1", "--json", home=home).json()
    assert (wiped["deleted"], wiped["total"]) == (12, 0)
    again = invoke(*ADD, home=home)
    assert again.exit_code == 0 and "added 12 items" in again.stdout
    assert _by_generation(invoke, home) == {"q2": 12}


def test_gallery_rm_by_ids_and_from_a_file_counts_what_was_not_there(invoke, two_generations: Path, tmp_path: Path) -> None:
    home = two_generations
    assert invoke(*ADD, home=home).exit_code == 0
    first, second, third, fourth = _gallery_ids(home)[:4]
    plain = invoke("gallery", "rm", first, first, "nope", home=home)
    assert plain.exit_code == 0, plain.stderr
    assert "removed 1 items; the gallery holds 11" in plain.stdout and "1 of the ids were not in the gallery" in plain.stdout
    listing = tmp_path / "ids.txt"
    listing.write_text(f"{second}\r\n{third}\n\n[/]odd id\n{first}\n", encoding="utf-8")
    from_file = invoke("gallery", "rm", fourth, "--all-from", str(listing), "--json", home=home).json()
    assert (from_file["deleted"], from_file["not_found"], from_file["total"]) == (3, 2, 8)


@pytest.mark.parametrize("args", [(), ("r-1", "--generation", "q1"), ("--all-from", "missing.txt")])
def test_gallery_rm_without_a_valid_target_is_a_usage_error(invoke, seeded: Path, args: tuple[str, ...]) -> None:
    res = invoke("gallery", "rm", *args, home=seeded)
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1
    assert invoke("gallery", "stats", "--json", home=seeded).json()["total"] == 100


def test_gallery_rm_of_an_unknown_generation_is_a_usage_error(invoke, seeded: Path) -> None:
    res = invoke("gallery", "rm", "--generation", "no-such-gen", home=seeded)
    assert res.exit_code == 2 and "no-such-gen" in res.stderr
