"""The probe set is held out by what its items are, not where they sit (issue 14, items 7 and 10).

An image folder gets a file that sorts first after ``init``: every position shifts, yet no probe
image may reach training. The draw itself depends on identities only, and a decompression bomb in
an image folder is one line naming the file, with nothing written.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli.conftest import run_cli
from tests.data.backends import BACKENDS, database_url
from upgrader.core.errors import DataError
from upgrader.data.dataset import pixel_digests
from upgrader.data.items import draw_per_class, excluded_indices, item_uris, load_items, probe_mask
from upgrader.data.readers import MAX_DATASET_IMAGE_PIXELS, load_dataset
from upgrader.services.training_plan import TrainRequest
from upgrader.services.workspace_init import read_splits, init_workspace, probe_pixels

CLASSES = ("bag", "coat", "shoe", "sock")
PER_CLASS = 20  # images per class folder
PROBE = 4  # probe queries and probe gallery items per class: 32 probe items in all


def _image_folder(root: Path, seed: int = 0) -> Path:
    """4 class folders of 20 random 28x28 grey PNGs, named 010.png ... 029.png."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(10, 10 + PER_CLASS):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def _add_first(root: Path) -> Path:
    """A new image that sorts before every other file of the folder."""
    path = root / CLASSES[0] / "000.png"
    Image.fromarray(np.full((28, 28), 7, dtype=np.uint8)).save(path)
    return path


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    with database_url(request.param) as url:
        yield url


def test_no_probe_item_reaches_training_after_a_file_that_sorts_first_is_added(tmp_path: Path, db_url) -> None:
    from upgrader.training.pipeline import _run_inputs

    folder = _image_folder(tmp_path / "images")
    with init_workspace(tmp_path / "ws", dataset=str(folder), num_classes=8, query_per_class=PROBE,
                        gallery_per_class=PROBE, db_url=db_url) as ws:
        probe = probe_pixels(ws)
        assert len(probe) == 2 * PROBE * len(CLASSES)
        _add_first(folder)  # every index of the folder shifts by one
        inputs = _run_inputs(ws, TrainRequest(kind="initial", classes=("all",)), None, "small_cnn")

        trained = set(pixel_digests(inputs.data.images))
        assert sum(d in trained for d in pixel_digests(probe)) == 0  # was 19 of 32 by position
        held = read_splits(ws).gallery.digests  # the held-out gallery split init drew: never trained on either
        assert len(held) == 2 * len(CLASSES) and not held & trained
        # Everything else trains, the new file included: 81 images less the 32 probe and 8 held-out items.
        assert len(inputs.data) == len(CLASSES) * PER_CLASS + 1 - len(probe) - len(held)
        assert inputs.heldout_items_left_out == len(held)
        uris = ws.registry.probe_set("query").source_uris
    assert all(u is not None and u.startswith(f"{folder}#all#") and u.split("#")[2].endswith(".png") for u in uris)


def test_a_copy_of_a_probe_image_under_another_name_is_left_out_of_training(tmp_path: Path) -> None:
    from upgrader.training.pipeline import _run_inputs

    folder = _image_folder(tmp_path / "images")
    with init_workspace(tmp_path / "ws", dataset=str(folder), num_classes=8, query_per_class=PROBE,
                        gallery_per_class=PROBE) as ws:
        where = ws.registry.probe_set("gallery").source_uris[0].split("#")[2]  # e.g. "bag/017.png"
        shutil.copyfile(folder / where, folder / CLASSES[1] / "zzz-copy.png")  # another class, another name
        inputs = _run_inputs(ws, TrainRequest(kind="initial", classes=("all",)), None, "small_cnn")
        held = len(read_splits(ws).gallery.digests)
        assert len(inputs.data) == len(CLASSES) * PER_CLASS + 1 - len(probe_pixels(ws)) - held - 1


def test_the_probe_draw_depends_on_identities_not_positions(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "images")
    before = load_dataset(folder)
    _add_first(folder)
    after = load_dataset(folder)

    def drawn(ds) -> set[str]:  # the identities of a query draw and a gallery draw
        keys = ds.item_keys()
        q = draw_per_class(keys, ds.labels, len(ds.classes), PROBE, seed=0)
        g = draw_per_class(keys, ds.labels, len(ds.classes), PROBE, seed=1, exclude=q)
        return {keys[i] for i in q} | {keys[i] for i in g}

    old, new = drawn(before), drawn(after)
    added = after.item_keys()[0]
    assert added.startswith(f"{CLASSES[0]}/000.png#")
    # The other classes keep their probe items exactly; the new file's class changes by at most the
    # new file joining (and pushing out the item ranked last).
    other = {k for k in old if not k.startswith(f"{CLASSES[0]}/")}
    assert other == {k for k in new if not k.startswith(f"{CLASSES[0]}/")}
    assert new - old <= {added} and len(old - new) <= 1
    # Same seed, same draw on any machine; another seed draws differently.
    keys = before.item_keys()
    again = draw_per_class(keys, before.labels, len(before.classes), PROBE, seed=0)
    assert np.array_equal(again, draw_per_class(list(keys), before.labels, len(before.classes), PROBE, seed=0))
    assert not np.array_equal(again, draw_per_class(keys, before.labels, len(before.classes), PROBE, seed=5))


def test_uris_name_the_item_and_legacy_uris_still_exclude_by_index(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "images")
    ds = load_items(str(folder), "all")
    uris = item_uris(str(folder), "train", [3, 25], ds)
    assert uris[0].startswith(f"{folder}#all#bag/013.png#") and len(uris[0].rsplit("#", 1)[1]) == 64
    _add_first(folder)
    shifted = load_items(str(folder), "all")
    # The identity finds the items at their new positions, 4 and 26.
    assert excluded_indices(str(folder), "train", uris, shifted).tolist() == [4, 26]
    assert excluded_indices(str(folder), "train", [f"{folder}#all#7", None, "other#all#1"]).tolist() == [7]
    assert probe_mask(shifted, ds.images[[3, 25]]).nonzero()[0].tolist() == [4, 26]


def _png_bomb(path: Path, side: int = 20_000) -> None:
    """A valid 1-bit PNG of side x side pixels: a few kB on disk, gigabytes once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # bit depth 1, greyscale
    squeeze = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed pixels
    body = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_a_png_bomb_in_an_image_folder_is_one_line_naming_the_file(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "images")
    bomb = folder / CLASSES[2] / "015.png"
    _png_bomb(bomb)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(DataError) as err:
        load_dataset(folder)
    message = str(err.value)
    assert str(bomb) in message and f"{MAX_DATASET_IMAGE_PIXELS:,}" in message and "\n" not in message

    home = tmp_path / "ws"
    res = run_cli("init", "--dataset", str(folder), "--num-classes", "8", "--probe-queries", "2",
                  "--probe-gallery", "2", home=home)
    assert res.exit_code == 1, res.stderr
    assert str(bomb) in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not home.exists()  # nothing half-written


def test_an_image_just_over_the_limit_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "images")
    side = int(MAX_DATASET_IMAGE_PIXELS**0.5) + 1  # below Pillow's own bomb guard
    _png_bomb(folder / CLASSES[0] / "big.png", side=side)
    with pytest.raises(DataError, match=f"image is {side}x{side}"):
        load_dataset(folder)
