"""What a resumable ``gallery add`` and a gallery removal need from the registry (issue 14, defect 9)."""

from __future__ import annotations

import pytest

from registry import ConstraintViolation, Registry, UnknownGeneration
from registry.stores.gallery import IN_CHUNK


def test_existing_external_ids_says_which_are_stored(ready: Registry, make_gen, unit_rows) -> None:
    g = make_gen("g1")
    assert ready.existing_external_ids(["a", "b"]) == set()
    ready.add_gallery_items(g.id, [f"x{i}" for i in range(10)], unit_rows(10))
    assert ready.existing_external_ids(["x1", "x9", "nope", "x1"]) == {"x1", "x9"}
    # More ids than fit one IN list: asked in chunks, every hit found.
    asked = [f"y{i}" for i in range(2 * IN_CHUNK + 7)] + ["x0", "x5"]
    assert ready.existing_external_ids(iter(asked)) == {"x0", "x5"}
    assert ready.existing_external_ids([]) == set()


def test_delete_every_item_of_one_generation_keeps_counts_in_step(ready: Registry, make_gen, unit_rows) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    ready.add_gallery_items(g1.id, [f"a{i}" for i in range(6)], unit_rows(6, seed=1), labels=["a"] * 3 + ["b", None, ""])
    ready.add_gallery_items(g1.id, ["a6"], unit_rows(1, seed=2), labels=["a"])
    ready.add_gallery_items(g2.id, ["b0", "b1"], unit_rows(2, seed=3), labels=["a", None])
    assert ready.delete_gallery_items(generation="g1") == 7
    assert ready.gallery_counts() == {g2.id: 2}
    assert ready.gallery_label_counts() == {(g2.id, "a"): 1, (g2.id, None): 1}
    assert ready.load_gallery().external_ids == ["b0", "b1"]
    assert ready.delete_gallery_items(generation=g1.id) == 0  # nothing left: nothing to do
    assert ready.delete_gallery_items(["b0"]) == 1  # by ids, as before
    assert ready.gallery_label_counts() == {(g2.id, None): 1}
    # The ids are free again: a resumed add can write them.
    assert ready.add_gallery_items(g1.id, ["a0"], unit_rows(1)) == 1


def test_delete_gallery_items_takes_exactly_one_selector(ready: Registry, make_gen, unit_rows) -> None:
    g = make_gen("g1")
    ready.add_gallery_items(g.id, ["x"], unit_rows(1))
    with pytest.raises(ConstraintViolation, match="exactly one"):
        ready.delete_gallery_items()
    with pytest.raises(ConstraintViolation, match="exactly one"):
        ready.delete_gallery_items(["x"], generation=g.id)
    with pytest.raises(UnknownGeneration):
        ready.delete_gallery_items(generation="nope")
    assert ready.gallery_counts() == {g.id: 1}
