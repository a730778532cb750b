"""Data readers, splits, memory, sampling and augmentation; bad inputs give DataError."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upgrader.data.dataset import ImageDataset, RehearsalMemory, probe_splits, split_per_class, subsample_per_class
from upgrader.data.readers import FASHION_MNIST_CLASSES, load_dataset, load_npz, read_idx, save_npz
from upgrader.training.batches import augment_batch, batch_indices
from upgrader.core.errors import DataError, InvalidRequest
from upgrader.data.items import parse_classes
from upgrader.data.readers import load_image_folder
from upgrader.runtime.images import decode_image, load_image


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _idx_folder(root: Path, n_images: int = 20, n_labels: int = 20) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    _write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_images, 28, 28)))
    _write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(n_labels) % 10)
    return root


def test_fashion_mnist_loads_with_class_names() -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.images.shape == (60000, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.classes == FASHION_MNIST_CLASSES
    assert ds.images.flags.writeable  # copied out of the read-only frombuffer view
    test = load_dataset("/usr/share/datasets/fashion-mnist", split="test")
    assert len(test) == 10000 and test.classes[9] == "Ankle boot"


def test_generic_idx_folder_gets_digit_names(tmp_path: Path) -> None:
    ds = load_dataset(_idx_folder(tmp_path / "digits"))
    assert ds.classes == [str(i) for i in range(10)]
    assert ds.images.shape == (20, 28, 28, 1)
    override = load_dataset(tmp_path / "digits", classes=list("abcdefghij"))
    assert override.class_names()[:3] == ["a", "b", "c"]


def test_corrupt_gz_is_refused(tmp_path: Path) -> None:
    folder = _idx_folder(tmp_path / "bad")
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08 definitely not gzip")
    with pytest.raises(DataError, match="gzip"):
        load_dataset(folder)


def test_truncated_idx_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x-images-idx3-ubyte.gz"
    _write_idx(path, np.zeros((4, 28, 28)))
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(path)


def test_mismatched_label_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="20 images but 19 labels"):
        load_dataset(_idx_folder(tmp_path / "mismatch", n_images=20, n_labels=19))


def _png(path: Path, size: tuple[int, int], mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=128 if mode == "L" else (10, 200, 30)).save(path)


def test_image_folder_loads_and_resizes(tmp_path: Path) -> None:
    _png(tmp_path / "cats" / "a.png", (32, 32))
    _png(tmp_path / "cats" / "b.png", (40, 36))
    _png(tmp_path / "dogs" / "c.png", (32, 32), mode="RGB")
    ds = load_dataset(tmp_path)
    assert ds.classes == ["cats", "dogs"]
    assert ds.images.shape == (3, 32, 32, 3)  # colour anywhere -> RGB, size of the first image
    assert ds.class_names() == ["cats", "cats", "dogs"]


def test_empty_image_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="has no images"):
        load_dataset(tmp_path)


def test_non_image_file_is_refused(tmp_path: Path) -> None:
    _png(tmp_path / "cats" / "a.png", (32, 32))
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="notes.txt: not a readable image"):
        load_dataset(tmp_path)


def test_npz_round_trip_and_missing_keys(tmp_path: Path) -> None:
    images = np.zeros((6, 30, 30, 3), dtype=np.uint8)
    save_npz(tmp_path / "ok.npz", images, np.array([0, 1, 2, 0, 1, 2]), ["x", "y", "z"])
    ds = load_dataset(tmp_path / "ok.npz")
    assert ds.classes == ["x", "y", "z"] and ds.images.shape == (6, 30, 30, 3)
    np.savez(tmp_path / "nolabels.npz", images=images)
    with pytest.raises(DataError, match=r"missing arrays \['labels'\]"):
        load_npz(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "float.npz", images=images.astype(np.float32), labels=np.zeros(6))
    with pytest.raises(DataError, match="need uint8"):
        load_npz(tmp_path / "float.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "short.npz", images=images, labels=np.zeros(5, dtype=np.int64))
    with pytest.raises(DataError, match="6 images but 5 labels"):
        load_npz(tmp_path / "short.npz")


def test_missing_spec_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="no such file or folder"):
        load_dataset(tmp_path / "nowhere")


def _toy(n_per_class: int = 30, classes: int = 4) -> ImageDataset:
    labels = np.repeat(np.arange(classes), n_per_class)
    images = (np.arange(len(labels))[:, None, None, None] % 256 * np.ones((1, 28, 28, 1))).astype(np.uint8)
    return ImageDataset(images, labels, [f"c{i}" for i in range(classes)], "toy")


def test_select_take_and_fingerprint() -> None:
    ds = _toy()
    sub = ds.select(["c3", "c1"])
    assert sub.classes == ["c3", "c1"] and len(sub) == 60
    assert set(sub.class_names()) == {"c3", "c1"}
    assert sub.fingerprint() != ds.fingerprint()
    assert ds.take([0, 1]).fingerprint() == ds.take([0, 1]).fingerprint()
    with pytest.raises(DataError, match="unknown classes"):
        ds.select(["nope"])
    assert list(sub.vertices({"c3": 7, "c1": 2})[:1]) in ([7], [2])


def test_splits_are_deterministic_and_disjoint() -> None:
    ds = _toy()
    a1, rest1 = split_per_class(ds, 5, seed=3)
    a2, _ = split_per_class(ds, 5, seed=3)
    a3, _ = split_per_class(ds, 5, seed=4)
    assert np.array_equal(a1.images, a2.images) and not np.array_equal(a1.images, a3.images)
    assert np.bincount(a1.labels).tolist() == [5, 5, 5, 5] and len(rest1) == 100
    train, query, gallery = probe_splits(ds, 4, 6, seed=0)
    ids = [set(d.images[:, 0, 0, 0].tolist()) for d in (train, query, gallery)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert len(query) == 16 and len(gallery) == 24 and len(train) == 80
    assert np.bincount(subsample_per_class(ds, 7, 0).labels).tolist() == [7] * 4
    with pytest.raises(DataError, match="fewer than"):
        split_per_class(ds, 31, 0)


def test_rehearsal_memory_keeps_k_per_class_seeded() -> None:
    ds = _toy()
    mem = RehearsalMemory.build(ds.images, ds.labels, per_class=3, seed=1)
    assert np.bincount(mem.vertices).tolist() == [3, 3, 3, 3]
    again = RehearsalMemory.build(ds.images, ds.labels, per_class=3, seed=1)
    assert np.array_equal(mem.images, again.images)
    assert len(mem.merge(again)) == 24


def test_batches_are_half_memory_half_new() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = list(batch_indices(n_new=100, n_memory=7, batch_size=16, generator=gen))
    assert len(batches) == 100 // 8
    assert all(len(n) == 8 and len(m) == 8 for n, m in batches)
    seen_new = np.concatenate([n for n, _ in batches])
    assert len(set(seen_new.tolist())) == len(seen_new)  # each new item at most once per epoch
    assert set(np.concatenate([m for _, m in batches]).tolist()) == set(range(7))
    plain = list(batch_indices(n_new=100, n_memory=0, batch_size=16, generator=gen))
    assert all(len(n) == 16 and len(m) == 0 for n, m in plain)


def test_augmentation_crops_and_flips_deterministically() -> None:
    x = torch.rand(8, 1, 28, 28)
    a = augment_batch(x, torch.Generator().manual_seed(5), pad=2, flip=True)
    b = augment_batch(x, torch.Generator().manual_seed(5), pad=2, flip=True)
    assert a.shape == x.shape and torch.equal(a, b)
    flipped = augment_batch(x, torch.Generator().manual_seed(0), pad=0, flip=True)
    for i in range(8):  # without crop, every image is itself or its mirror image
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))
    assert any(not torch.equal(flipped[i], x[i]) for i in range(8))
    shifted = augment_batch(x, torch.Generator().manual_seed(1), pad=2, flip=False)
    assert not torch.equal(shifted, x)


def test_an_image_gives_the_same_pixels_as_dataset_item_query_file_and_upload(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    (tmp_path / "Bag").mkdir()
    path = tmp_path / "Bag" / "a.png"
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(path)  # colour, 30x40: converted and resized
    from_folder = load_image_folder(tmp_path, image_size=(28, 28), channels=1).images[0]
    assert from_folder.shape == (28, 28, 1)
    np.testing.assert_array_equal(from_folder, load_image(path, (28, 28, 1)))
    np.testing.assert_array_equal(from_folder, decode_image(path.read_bytes(), (28, 28, 1)))


def test_no_classes_names_the_remedy_in_dataset_terms() -> None:
    with pytest.raises(InvalidRequest, match="no classes given") as err:
        parse_classes("", ["Bag", "Sandal"])
    assert "--" not in str(err.value)


def test_a_reversed_class_range_is_called_reversed() -> None:
    with pytest.raises(InvalidRequest, match=r"class range '5-4' is reversed; write it low to high \(4-5\)"):
        parse_classes("5-4", [str(i) for i in range(10)])
    with pytest.raises(InvalidRequest, match="outside 0-9"):
        parse_classes("8-12", [str(i) for i in range(10)])


def test_dataset_classes_are_what_the_reader_gives_without_decoding_images(tmp_path: Path) -> None:
    from upgrader.data.readers import dataset_classes

    assert dataset_classes("fashion-mnist") == FASHION_MNIST_CLASSES
    assert dataset_classes(_idx_folder(tmp_path / "digits")) == load_dataset(tmp_path / "digits").classes
    images = np.zeros((3, 28, 28), np.uint8)
    save_npz(tmp_path / "named.npz", images, [0, 1, 1], classes=["cat", "dog"])
    save_npz(tmp_path / "plain.npz", images, [0, 2, 1])
    assert dataset_classes(tmp_path / "named.npz") == ["cat", "dog"] == load_npz(tmp_path / "named.npz").classes
    assert dataset_classes(tmp_path / "plain.npz") == ["0", "1", "2"] == load_npz(tmp_path / "plain.npz").classes
    for name in ("b_dog", "a_cat", ".hidden"):
        (tmp_path / "photos" / name).mkdir(parents=True)
    Image.new("L", (28, 28)).save(tmp_path / "photos" / "a_cat" / "1.png")
    Image.new("L", (28, 28)).save(tmp_path / "photos" / "b_dog" / "1.png")
    assert dataset_classes(tmp_path / "photos") == ["a_cat", "b_dog"] == load_image_folder(tmp_path / "photos").classes
    with pytest.raises(InvalidRequest, match="no such file or folder"):
        dataset_classes(tmp_path / "nowhere")
