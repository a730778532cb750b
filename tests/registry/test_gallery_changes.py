"""The gallery's change sequence, re-embedding in place and the list of sources (issue 15, item 3)."""

from __future__ import annotations

import numpy as np
import pytest

from registry import ConstraintViolation, DuplicateItem, EmbeddingError, GalleryChanges, Registry, UnknownGalleryItem
from registry.stores.gallery import IN_CHUNK


def _versions(raw_sql) -> dict[str, int]:
    return {str(e): int(v) for e, v in raw_sql.run("SELECT external_id, version FROM gallery_items")}


def _tombstones(raw_sql) -> list[tuple[int, int, str]]:
    rows = raw_sql.run("SELECT version, row_id, external_id FROM gallery_tombstones ORDER BY version")
    return [(int(v), int(r), str(e)) for v, r, e in rows]


def _row_ids(reg: Registry) -> dict[str, int]:
    g = reg.load_gallery()
    return dict(zip(g.external_ids, (int(r) for r in g.row_ids)))


def _recount(raw_sql) -> dict[tuple[int, str | None], int]:
    rows = raw_sql.run("SELECT generation_id, label, COUNT(*) FROM gallery_items GROUP BY generation_id, label")
    return {(int(g), lab): int(n) for g, lab, n in rows}  # type: ignore[misc]


def test_every_write_takes_new_consecutive_versions(ready: Registry, make_gen, unit_rows, raw_sql) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    assert ready.gallery_version() == 0
    ready.add_gallery_items(g1.id, ["a", "b", "c"], unit_rows(3, seed=1))
    assert ready.gallery_version() == 3
    assert _versions(raw_sql) == {"a": 1, "b": 2, "c": 3}  # batch order
    ready.add_gallery_items(g1.id, [], unit_rows(0))  # an empty batch takes none
    assert ready.gallery_version() == 3
    assert ready.reembed_gallery_items(["c", "a"], g2.id, unit_rows(2, seed=2)) == 2
    assert ready.gallery_version() == 5
    assert _versions(raw_sql) == {"a": 4, "b": 2, "c": 5}  # ascending row id, whatever the batch order
    ready.add_gallery_items(g2.id, ["d"], unit_rows(1, seed=3))
    rows = _row_ids(ready)
    assert ready.delete_gallery_items(["d", "b", "nope"]) == 2
    assert ready.gallery_version() == 8
    assert _tombstones(raw_sql) == [(7, rows["b"], "b"), (8, rows["d"], "d")]
    assert ready.delete_gallery_items(generation=g2.id) == 2
    assert _tombstones(raw_sql)[2:] == [(9, rows["a"], "a"), (10, rows["c"], "c")]
    assert ready.delete_gallery_items(["nope"]) == 0  # nothing deleted: no version taken
    assert ready.gallery_version() == 10


def test_changes_show_a_reembedded_row_as_an_upsert_and_a_deleted_one_as_deleted(
    ready: Registry, make_gen, unit_rows
) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    ready.add_gallery_items(g1.id, [f"x{i}" for i in range(6)], unit_rows(6, seed=1), labels=list("aabbcc"),
                            source_uris=[f"file:{i}" for i in range(6)])
    start = ready.gallery_changes(0)
    full = ready.load_gallery()
    assert start.version == ready.gallery_version() == 6 and start.deleted_row_ids.size == 0
    for field in ("row_ids", "generation_ids", "matrix"):
        np.testing.assert_array_equal(getattr(start.upserts, field), getattr(full, field))
    assert (start.upserts.external_ids, start.upserts.labels) == (full.external_ids, full.labels)

    new = unit_rows(2, seed=9)
    ready.reembed_gallery_items(["x4", "x1"], g2.id, new)
    ready.delete_gallery_items(["x2"])
    ready.add_gallery_items(g1.id, ["y0"], unit_rows(1, seed=3), labels=["d"])
    ch = ready.gallery_changes(start.version)
    assert isinstance(ch, GalleryChanges) and ch.version == ready.gallery_version() == 10
    rows = dict(zip(full.external_ids, full.row_ids.tolist()))
    assert ch.upserts.external_ids == ["x1", "x4", "y0"]  # ascending row id
    assert ch.upserts.generation_ids.tolist() == [g2.id, g2.id, g1.id]
    assert ch.upserts.row_ids.tolist()[:2] == [rows["x1"], rows["x4"]]
    assert ch.upserts.labels == ["a", "c", "d"]
    np.testing.assert_allclose(ch.upserts.matrix[:2], new[[1, 0]], atol=1e-6)
    assert ch.deleted_row_ids.dtype == np.int64 and ch.deleted_row_ids.tolist() == [rows["x2"]]
    assert len(ch) == 4
    # Following from the new cursor: nothing more; from an older one, the same again.
    after = ready.gallery_changes(ch.version)
    assert len(after) == 0 and after.version == ch.version and after.upserts.matrix.shape == (0, 15)
    again = ready.gallery_changes(start.version)
    assert again.upserts.external_ids == ch.upserts.external_ids


def test_a_row_id_that_exists_again_is_not_reported_deleted(ready: Registry, make_gen, unit_rows) -> None:
    g = make_gen("g1")
    ready.add_gallery_items(g.id, ["a", "b"], unit_rows(2, seed=1))
    cursor = ready.gallery_version()
    top = _row_ids(ready)["b"]
    ready.delete_gallery_items(["b"])
    ready.add_gallery_items(g.id, ["c"], unit_rows(1, seed=2))  # SQLite hands the freed top row id out again
    ch = ready.gallery_changes(cursor)
    reused = _row_ids(ready)["c"] == top
    assert reused == (ready.url.startswith("sqlite"))
    assert ch.upserts.external_ids == ["c"]
    assert ch.deleted_row_ids.tolist() == ([] if reused else [top])
    assert not set(ch.deleted_row_ids.tolist()) & set(ch.upserts.row_ids.tolist())


def test_a_reembed_naming_an_unknown_id_writes_nothing(ready: Registry, make_gen, unit_rows, raw_sql) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    ready.add_gallery_items(g1.id, ["a", "b"], unit_rows(2, seed=1), labels=["x", "y"])
    before = (ready.gallery_version(), ready.load_gallery().matrix.copy(), ready.gallery_label_counts(),
              _versions(raw_sql))
    with pytest.raises(UnknownGalleryItem, match=r"1 of the 2 items to re-embed are not in the gallery: 'ghost'"):
        ready.reembed_gallery_items(["a", "ghost"], g2.id, unit_rows(2, seed=5))
    many = [f"ghost{i}" for i in range(IN_CHUNK + 3)]  # asked in chunks; the message shows a preview
    with pytest.raises(UnknownGalleryItem, match=r"5003 of the 5004 items .*\(\+4998 more\)"):
        ready.reembed_gallery_items(["b", *many], g2.id, unit_rows(len(many) + 1, seed=6))
    with pytest.raises(EmbeddingError, match="dimension"):
        ready.reembed_gallery_items(["a"], g2.id, np.ones((1, 7), np.float32))
    with pytest.raises(EmbeddingError, match="NaN"):
        ready.reembed_gallery_items(["a"], g2.id, np.full((1, 15), np.nan, np.float32))
    with pytest.raises(DuplicateItem, match="repeat"):
        ready.reembed_gallery_items(["a", "a"], g2.id, unit_rows(2, seed=7))
    after = (ready.gallery_version(), ready.load_gallery().matrix, ready.gallery_label_counts(), _versions(raw_sql))
    assert after[0] == before[0] and after[2:] == before[2:]
    np.testing.assert_array_equal(after[1], before[1])
    assert ready.load_gallery().generation_ids.tolist() == [g1.id, g1.id]
    assert ready.reembed_gallery_items([], g2.id, unit_rows(0)) == 0 and ready.gallery_version() == before[0]


def test_label_counts_after_a_reembed_equal_a_recount(ready: Registry, make_gen, unit_rows, raw_sql) -> None:
    g1, g2, g3 = make_gen("g1"), make_gen("g2"), make_gen("g3")
    labels = ["a", "a", "b", None, "c", "a", None, "b"]
    ready.add_gallery_items(g1.id, [f"i{n}" for n in range(8)], unit_rows(8, seed=1), labels=labels)
    ready.add_gallery_items(g2.id, ["j0", "j1"], unit_rows(2, seed=2), labels=["a", None])
    ready.reembed_gallery_items(["i0", "i3", "i4", "j0"], g3.id, unit_rows(4, seed=3))
    ready.reembed_gallery_items(["i1", "j1"], g2.id, unit_rows(2, seed=4))  # j1: same generation again
    ready.reembed_gallery_items(["i4"], g1.id, unit_rows(1, seed=5))  # back to where it started
    assert ready.gallery_label_counts() == _recount(raw_sql) == {
        (g1.id, "a"): 1, (g1.id, "b"): 2, (g1.id, None): 1, (g1.id, "c"): 1,
        (g2.id, "a"): 1, (g2.id, None): 1, (g3.id, "a"): 2, (g3.id, None): 1,
    }
    assert ready.gallery_counts() == {g1.id: 5, g2.id: 2, g3.id: 3}


def test_gallery_sources_page_through_items_without_embeddings(ready: Registry, make_gen, unit_rows) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    ready.add_gallery_items(g1.id, ["a", "b", "c"], unit_rows(3, seed=1), labels=["x", None, "y"],
                            source_uris=["s:a", None, "s:c"])
    ready.add_gallery_items(g2.id, ["d"], unit_rows(1, seed=2), labels=["z"], source_uris=["s:d"])
    ready.reembed_gallery_items(["b"], g2.id, unit_rows(1, seed=3))
    every = ready.gallery_sources()
    assert [(s.external_id, s.label, s.source_uri, s.generation_id) for s in every] == [
        ("a", "x", "s:a", g1.id), ("b", None, None, g2.id), ("c", "y", "s:c", g1.id), ("d", "z", "s:d", g2.id),
    ]
    assert [s.row_id for s in every] == sorted(s.row_id for s in every)
    assert [s.external_id for s in ready.gallery_sources(generation_ids=[g1.id])] == ["a", "c"]
    assert ready.gallery_sources(generation_ids=[]) == []
    first = ready.gallery_sources(limit=2)
    assert [s.external_id for s in first] == ["a", "b"]
    rest = ready.gallery_sources(after_row_id=first[-1].row_id, limit=10)
    assert [s.external_id for s in rest] == ["c", "d"]
    assert ready.gallery_sources(limit=0) == []
    with pytest.raises(ConstraintViolation, match="cannot be negative"):
        ready.gallery_sources(limit=-1)
    with pytest.raises(AttributeError):
        every[0].embedding  # type: ignore[attr-defined]


def test_a_missing_clock_row_is_rebuilt_above_every_stored_version(
    ready: Registry, make_gen, unit_rows, raw_sql
) -> None:
    g = make_gen("g1")
    ready.add_gallery_items(g.id, ["a", "b", "c"], unit_rows(3, seed=1))
    ready.delete_gallery_items(["c"])
    raw_sql.run("DELETE FROM gallery_clock")  # a database emptied or edited outside the registry
    assert ready.gallery_version() == 4  # the tombstone's version
    ready.add_gallery_items(g.id, ["d"], unit_rows(1, seed=2))
    assert _versions(raw_sql) == {"a": 1, "b": 2, "d": 5}
    assert ready.gallery_version() == 5
    assert raw_sql.run("SELECT id, version FROM gallery_clock") == [(1, 5)]
