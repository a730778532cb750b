"""The Registry API as a caller sees it, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timezone

import numpy as np
import pytest

from registry import (
    ConstraintViolation,
    DuplicateItem,
    EmbeddingError,
    GateNotPassed,
    InterfaceError,
    InvalidStatus,
    NewGeneration,
    ProbeSetError,
    Registry,
    RegistryError,
    UnknownGateReport,
    UnknownGeneration,
)

K = 16
D = K - 1


# ---------------------------------------------------------------- interface and label map


def test_interface_is_set_once_with_dim_k_minus_1(registry: Registry) -> None:
    with pytest.raises(InterfaceError, match="set_interface"):
        registry.interface()
    iface = registry.set_interface(K)
    assert (iface.num_classes, iface.embedding_dim, iface.embedding_dtype) == (K, D, "float32")
    assert iface.created_at.tzinfo is not None
    with pytest.raises(InterfaceError, match="already set"):
        registry.set_interface(K + 1)
    assert registry.interface().num_classes == K


def test_label_map_is_append_only_and_bounded_by_k(registry: Registry) -> None:
    registry.set_interface(4)
    assert registry.assign_classes(["cat", "dog"]) == {"cat": 0, "dog": 1}
    assert registry.assign_classes(["bird", "cat"]) == {"bird": 2, "cat": 0}
    with pytest.raises(InterfaceError, match="label map is full"):
        registry.assign_classes(["x", "y"])  # 3 used + 2 new > K=4
    iface = registry.interface()
    assert iface.label_map == {"cat": 0, "dog": 1, "bird": 2}  # the refused call wrote nothing
    assert iface.class_of[2] == "bird"


# ---------------------------------------------------------------- probe set


def test_probe_set_keeps_pixels_labels_and_order(ready: Registry) -> None:
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    ids = ready.add_probe_items("query", imgs, ["a", "b", "a", "c", "d"], [f"ds#{i}" for i in range(5)])
    ready.add_probe_items("gallery", imgs[:2], ["d", "d"])
    ps = ready.probe_set("query")
    assert ps.item_ids.dtype == np.int64 and list(ps.item_ids) == list(ids)
    np.testing.assert_array_equal(ps.images, imgs)
    assert list(ps.vertices) == [0, 1, 0, 2, 3]
    assert ps.class_names == ["a", "b", "a", "c", "d"]
    assert ps.source_uris[3] == "ds#3"
    assert ready.probe_counts() == {"query": 5, "gallery": 2}


def test_probe_set_refuses_bad_input(ready: Registry) -> None:
    imgs = np.zeros((2, 4, 4, 1), dtype=np.uint8)
    with pytest.raises(ProbeSetError, match="register the probe set"):
        ready.probe_set("query")
    with pytest.raises(ProbeSetError, match="uint8"):
        ready.add_probe_items("query", imgs.astype(np.float32), ["a", "b"])
    with pytest.raises(InterfaceError, match="assign_classes"):
        ready.add_probe_items("query", imgs, ["a", "zebra"])
    with pytest.raises(ProbeSetError, match="split"):
        ready.add_probe_items("train", imgs, ["a", "b"])
    ready.add_probe_items("query", imgs, ["a", "b"])
    with pytest.raises(ProbeSetError, match="resize"):
        ready.add_probe_items("gallery", np.zeros((1, 5, 5, 1), dtype=np.uint8), ["a"])
    assert ready.probe_counts() == {"query": 2, "gallery": 0}


def test_probe_embeddings_roundtrip_replace_and_freeze_the_probe_set(ready: Registry, make_gen, unit_rows) -> None:
    g = make_gen("g1")
    ids = ready.add_probe_items("query", np.zeros((3, 4, 4, 3), dtype=np.uint8), ["a", "b", "c"])
    emb = unit_rows(3)
    ready.put_probe_embeddings(g.id, "query", ids, emb)
    got_ids, got = ready.get_probe_embeddings(g.id, "query")
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got, emb)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    ready.put_probe_embeddings(g.id, "query", ids[:2], emb[:2] * 0.5)  # replaces the split
    got_ids, got = ready.get_probe_embeddings(g.id, "query")
    assert list(got_ids) == list(ids[:2])
    np.testing.assert_allclose(got, emb[:2] * 0.5)
    with pytest.raises(ProbeSetError, match="no 'gallery' probe embeddings"):
        ready.get_probe_embeddings(g.id, "gallery")
    with pytest.raises(ProbeSetError, match="not in the 'gallery' probe split"):
        ready.put_probe_embeddings(g.id, "gallery", ids, emb)
    with pytest.raises(EmbeddingError, match="dimension"):
        ready.put_probe_embeddings(g.id, "query", ids, np.ones((3, D + 1), np.float32))
    with pytest.raises(ProbeSetError, match="cannot change"):
        ready.add_probe_items("query", np.zeros((1, 4, 4, 3), dtype=np.uint8), ["a"])
    assert len(ready.get_probe_embeddings(g.id, "query")[0]) == 2


# ---------------------------------------------------------------- generations


def test_generations_by_id_name_numeric_string_and_alias(ready: Registry, make_gen, passing_report) -> None:
    g1 = make_gen("g1", train_config={"lr": 0.1}, onnx_metadata={"k": "16"}, metrics={"acc": 0.5})
    g2 = make_gen("g2", kind="finetune", parent_id=g1.id, checkpoint_path="/ck/g2.pt")
    assert g1.status == "candidate"
    assert g1.created_at.tzinfo is not None and g1.created_at.utcoffset() == timezone.utc.utcoffset(None)
    assert ready.get_generation(g1.id) == g1
    assert ready.get_generation(str(g2.id)) == g2
    assert ready.get_generation("g2").parent_id == g1.id
    assert ready.get_generation("g1").train_config == {"lr": 0.1}
    assert [g.name for g in ready.list_generations()] == ["g1", "g2"]
    with pytest.raises(UnknownGeneration, match="production"):
        ready.get_generation("production")
    ready.move_alias(g2.id, actor="t", reason="r", gate_report_id=passing_report(g2).id)
    assert ready.get_generation("production").id == g2.id
    with pytest.raises(UnknownGeneration):
        ready.get_generation(999)
    with pytest.raises(UnknownGeneration):
        ready.get_generation("nope")


def test_add_generation_refuses_conflicts(ready: Registry, make_gen) -> None:
    make_gen("g1")
    with pytest.raises(DuplicateItem, match="already exists"):
        make_gen("g1")
    with pytest.raises(InterfaceError, match="K=32"):
        make_gen("g-wide", num_classes=32)
    with pytest.raises(UnknownGeneration, match="parent"):
        make_gen("orphan", parent_id=42)
    with pytest.raises(ConstraintViolation, match="kind"):
        make_gen("weird", kind="magic")
    with pytest.raises(ConstraintViolation, match="non-numeric"):
        make_gen("7")
    assert [g.name for g in ready.list_generations()] == ["g1"]


def test_add_generation_needs_an_interface(registry: Registry) -> None:
    new = NewGeneration(name="g", kind="initial", method="ce", architecture="a", onnx_path="p",
                        onnx_sha256="s", num_classes=K)
    with pytest.raises(InterfaceError, match="no interface"):
        registry.add_generation(new)


def test_set_status_and_update_artifact(ready: Registry, make_gen, passing_report) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    assert ready.set_status(g1.id, "verified").status == "verified"
    with pytest.raises(InvalidStatus, match="promote"):
        ready.set_status(g1.id, "production")
    with pytest.raises(InvalidStatus, match="unknown status"):
        ready.set_status(g1.id, "great")
    ready.move_alias(g1.id, actor="t", reason="r", gate_report_id=passing_report(g1).id)
    with pytest.raises(InvalidStatus, match="serves production"):
        ready.set_status(g1.id, "retired")
    with pytest.raises(ConstraintViolation, match="serves production.*roll back or promote another generation first"):
        ready.update_artifact(g1.id, "/m/new.onnx", "f" * 64, {})
    updated = ready.update_artifact(g2.id, "/m/g2b.onnx", "b" * 64, {"opset": "17"})
    assert (updated.onnx_path, updated.onnx_sha256, updated.onnx_metadata) == ("/m/g2b.onnx", "b" * 64, {"opset": "17"})
    assert ready.get_generation(g1.id).status == "production"


# ---------------------------------------------------------------- evaluations and gate reports


def test_evaluations_upsert_per_pair(ready: Registry, make_gen) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    ready.record_evaluations([(g1.id, g1.id, {"template_top1": 0.5}), (g2.id, g1.id, {"template_top1": 0.6})])
    ready.record_evaluations([(g2.id, g1.id, {"template_top1": np.float32(0.75), "map": float("nan")})])
    evs = ready.evaluations()
    assert [(e.query_gen, e.gallery_gen) for e in evs] == [(g1.id, g1.id), (g2.id, g1.id)]
    assert evs[1].metrics == {"template_top1": 0.75, "map": None}  # NaN has no JSON form: stored as null
    assert [(e.query_gen, e.gallery_gen) for e in ready.evaluations([g1.id])] == [(g1.id, g1.id)]
    with pytest.raises(UnknownGeneration):
        ready.record_evaluations([(g1.id, 99, {"x": 1.0})])
    assert len(ready.evaluations()) == 2


def test_gate_reports_newest_first(ready: Registry, make_gen) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    r1 = ready.add_gate_report(g1.id, g1.onnx_sha256, False, "promote", {"failing": [[1, 0]], "m": np.float64(0.3)})
    r2 = ready.add_gate_report(g2.id, g2.onnx_sha256, True, "rollback", {})
    assert [r.id for r in ready.gate_reports()] == [r2.id, r1.id]
    assert [r.id for r in ready.gate_reports(g1.id)] == [r1.id]
    got = ready.get_gate_report(r1.id)
    assert (got.passed, got.kind, got.report) == (False, "promote", {"failing": [[1, 0]], "m": 0.3})
    with pytest.raises(UnknownGateReport):
        ready.get_gate_report(12345)
    with pytest.raises(ConstraintViolation, match="kind"):
        ready.add_gate_report(g1.id, "x", True, "yolo", {})


# ---------------------------------------------------------------- aliases


def test_move_alias_flips_statuses_and_records_history(ready: Registry, make_gen, passing_report) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    r1, r2 = passing_report(g1), passing_report(g2)
    assert ready.get_alias() is None
    m1 = ready.move_alias(g1.id, actor="alice", reason="first", gate_report_id=r1.id)
    m2 = ready.move_alias("g2", actor="bob", reason="better", gate_report_id=r2.id)
    assert ready.get_alias() == g2.id
    assert ready.get_generation(g1.id).status == "verified"
    assert ready.get_generation(g2.id).status == "production"
    hist = ready.alias_history()
    assert hist == [m1, m2]
    assert (hist[0].from_gen, hist[0].to_gen, hist[1].from_gen, hist[1].to_gen) == (None, g1.id, g1.id, g2.id)
    assert (hist[1].actor, hist[1].reason, hist[1].gate_report_id, hist[1].forced) == ("bob", "better", r2.id, False)
    assert hist[1].at >= hist[0].at and hist[1].at.tzinfo is not None
    # Rollback: a passing report of kind "rollback" for g1's artifact moves production back.
    rb = passing_report(g1, kind="rollback")
    ready.move_alias(g1.id, actor="carol", reason="rollback", gate_report_id=rb.id, kind="rollback")
    assert ready.get_alias() == g1.id
    assert [(m.from_gen, m.to_gen) for m in ready.alias_history()][-1] == (g2.id, g1.id)


def test_move_alias_refusals_write_nothing(ready: Registry, make_gen, passing_report) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    ready.move_alias(g1.id, actor="t", reason="start", gate_report_id=passing_report(g1).id)
    failing = ready.add_gate_report(g2.id, g2.onnx_sha256, False, "promote", {})
    other_gen = passing_report(g1)
    stale = passing_report(g2)
    ready.update_artifact(g2.id, "/m/g2-reexport.onnx", "c" * 64, {})
    attempts = {
        "no report": dict(gate_report_id=None),
        "missing report": dict(gate_report_id=9999),
        "failing report": dict(gate_report_id=failing.id),
        "another generation's report": dict(gate_report_id=other_gen.id),
        "report for the previous artifact": dict(gate_report_id=stale.id),
    }
    for label, kw in attempts.items():
        with pytest.raises(GateNotPassed) as err:
            ready.move_alias(g2.id, actor="t", reason=label, **kw)
        assert "\n" not in str(err.value), label
    with pytest.raises(GateNotPassed, match="re-run the gate"):
        ready.move_alias(g2.id, actor="t", reason="x", gate_report_id=stale.id)
    with pytest.raises(GateNotPassed, match="reason"):
        ready.move_alias(g2.id, actor="t", reason="  ", forced=True)
    assert ready.get_alias() == g1.id
    assert len(ready.alias_history()) == 1
    assert ready.get_generation(g2.id).status == "candidate"
    assert ready.get_generation(g1.id).status == "production"
    forced = ready.move_alias(g2.id, actor="ops", reason="incident 42: gate down", forced=True)
    assert forced.forced and forced.gate_report_id is None and ready.get_alias() == g2.id


def test_other_aliases_do_not_touch_statuses(ready: Registry, make_gen, passing_report) -> None:
    g1 = make_gen("g1")
    ready.move_alias(g1.id, actor="t", reason="canary", gate_report_id=passing_report(g1).id, alias="canary")
    assert ready.get_alias("canary") == g1.id and ready.get_alias() is None
    assert ready.get_generation(g1.id).status == "candidate"
    assert len(ready.alias_history("canary")) == 1 and ready.alias_history() == []


# ---------------------------------------------------------------- gallery


def test_gallery_add_count_load_incremental_and_delete(ready: Registry, make_gen, unit_rows) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    e1, e2 = unit_rows(50, seed=1), unit_rows(30, seed=2)
    assert ready.add_gallery_items(g1.id, [f"a{i}" for i in range(50)], e1, labels=["x"] * 50) == 50
    first = ready.load_gallery()
    assert ready.add_gallery_items(g2.id, [f"b{i}" for i in range(30)], e2, source_uris=[f"s3://b{i}" for i in range(30)]) == 30
    assert ready.gallery_counts() == {g1.id: 50, g2.id: 30}
    assert ready.live_generations() == [g1.id, g2.id]
    full = ready.load_gallery()
    assert len(full) == 80 and full.matrix.dtype == np.float32 and full.matrix.flags.c_contiguous
    np.testing.assert_array_equal(full.matrix, np.vstack([e1, e2]))
    assert full.external_ids[:2] == ["a0", "a1"] and full.labels[0] == "x" and full.labels[-1] is None
    assert list(full.generation_ids) == [g1.id] * 50 + [g2.id] * 30
    assert np.all(np.diff(full.row_ids) > 0)
    newer = ready.load_gallery(after_row_id=int(first.row_ids[-1]))
    assert newer.external_ids == [f"b{i}" for i in range(30)]
    only_g1 = ready.load_gallery(generation_ids=[g1.id])
    assert len(only_g1) == 50
    assert ready.delete_gallery_items([f"a{i}" for i in range(50)] + ["never-there"]) == 50
    assert ready.gallery_counts() == {g2.id: 30}
    assert ready.live_generations() == [g2.id]
    empty = ready.load_gallery(after_row_id=int(full.row_ids[-1]))
    assert len(empty) == 0 and empty.matrix.shape == (0, D)


def test_gallery_label_counts_group_by_generation_and_label(ready: Registry, make_gen, unit_rows) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    assert ready.gallery_label_counts() == {}
    ready.add_gallery_items(g1.id, [f"a{i}" for i in range(6)], unit_rows(6, seed=1), labels=["a"] * 4 + ["b"] * 2)
    labels = ["b", "b", "c", None, None]
    ready.add_gallery_items(g2.id, [f"b{i}" for i in range(5)], unit_rows(5, seed=2), labels=labels)
    assert ready.gallery_label_counts() == {
        (g1.id, "a"): 4,
        (g1.id, "b"): 2,
        (g2.id, "b"): 2,
        (g2.id, "c"): 1,
        (g2.id, None): 2,
    }
    ready.delete_gallery_items(["a0", "a1", "a2", "a3"])
    assert (g1.id, "a") not in ready.gallery_label_counts()


def test_gallery_label_counts_keep_step_with_every_write(ready: Registry, make_gen, unit_rows) -> None:
    # The counts live in their own table (read on every verify): adds, deletes and a refused batch
    # must leave it equal to a count of the items themselves. "" and None are different labels.
    g1, g2 = make_gen("g1"), make_gen("g2")
    ready.add_gallery_items(g1.id, ["x0", "x1", "x2"], unit_rows(3, seed=3), labels=["", None, ""])
    ready.add_gallery_items(g2.id, ["y0", "y1"], unit_rows(2, seed=4), labels=["=a", "a"])
    with pytest.raises(DuplicateItem):
        ready.add_gallery_items(g2.id, ["y9", "x0"], unit_rows(2, seed=5), labels=["a", "a"])
    assert ready.delete_gallery_items(["x1", "y1", "y1", "nope"]) == 2
    expected: dict[tuple[int, str | None], int] = {}
    full = ready.load_gallery()
    for gen, label in zip(full.generation_ids.tolist(), full.labels):
        expected[(gen, label)] = expected.get((gen, label), 0) + 1
    assert ready.gallery_label_counts() == expected == {(g1.id, ""): 2, (g2.id, "=a"): 1}
    assert ready.gallery_counts() == {g1.id: 2, g2.id: 1}
    assert ready.delete_gallery_items(["x0", "x2"]) == 2
    assert ready.live_generations() == [g2.id]


@pytest.mark.parametrize(
    ("label", "ids", "emb", "error", "match"),
    [
        ("wrong dimension", ["n0", "n1"], np.ones((2, D + 2), np.float32), EmbeddingError, "dimension"),
        ("NaN", ["n0", "n1"], np.array([[0.0] * D, [np.nan] * D], np.float32), EmbeddingError, "NaN"),
        ("inf", ["n0", "n1"], np.array([[np.inf] * D, [0.0] * D], np.float32), EmbeddingError, "inf"),
        ("rows unlike ids", ["n0", "n1", "n2"], np.ones((2, D), np.float32), EmbeddingError, "one row per id"),
        ("integers", ["n0", "n1"], np.ones((2, D), np.int64), EmbeddingError, "floating"),
        ("known external id", ["n0", "old-3"], np.ones((2, D), np.float32), DuplicateItem, "old-3"),
        ("repeated in batch", ["n0", "n0"], np.ones((2, D), np.float32), DuplicateItem, "within the batch"),
    ],
)
def test_gallery_bad_batches_write_nothing(ready: Registry, make_gen, unit_rows, label, ids, emb, error, match) -> None:
    g = make_gen("g1")
    ready.add_gallery_items(g.id, [f"old-{i}" for i in range(5)], unit_rows(5))
    with pytest.raises(error, match=match):
        ready.add_gallery_items(g.id, ids, emb)
    assert ready.gallery_counts() == {g.id: 5}


def test_gallery_unknown_generation_and_big_batch_all_or_nothing(ready: Registry, make_gen, unit_rows) -> None:
    g = make_gen("g1")
    with pytest.raises(UnknownGeneration):
        ready.add_gallery_items(77, ["x"], unit_rows(1))
    ready.add_gallery_items(g.id, ["dup"], unit_rows(1))
    # The duplicate is the very last row of a large batch: none of the 5000 rows before it stays.
    ids = [f"x{i}" for i in range(5000)] + ["dup"]
    with pytest.raises(DuplicateItem, match="'dup'"):
        ready.add_gallery_items(g.id, ids, unit_rows(5001))
    assert ready.gallery_counts() == {g.id: 1}


def test_float16_workspace_halves_storage_and_loads_float32(registry: Registry, unit_rows) -> None:
    registry.set_interface(K, embedding_dtype="float16")
    g = registry.add_generation(NewGeneration(name="g", kind="initial", method="ce", architecture="a",
                                              onnx_path="p", onnx_sha256="s", num_classes=K))
    emb = unit_rows(20)
    registry.add_gallery_items(g.id, [str(i) for i in range(20)], emb)
    loaded = registry.load_gallery().matrix
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, emb, atol=1e-3)
    assert registry.interface().embedding_dtype == "float16"
    with pytest.raises(EmbeddingError, match="overflows float16"):
        registry.add_gallery_items(g.id, ["big"], np.full((1, D), 1e6, np.float32))


def test_one_registry_serves_several_threads(ready: Registry, make_gen, unit_rows) -> None:
    g = make_gen("g1")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for b in range(5):
                ready.add_gallery_items(g.id, [f"t{t}-{b}-{i}" for i in range(40)], unit_rows(40, seed=t))
                ready.load_gallery()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert ready.gallery_counts() == {g.id: 4 * 5 * 40}


def test_database_failures_surface_as_registry_errors(ready: Registry, make_gen) -> None:
    make_gen("g1")
    from registry.db import make_engine  # the table is dropped behind the registry's back

    engine = make_engine(ready.url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE gallery_items")
    engine.dispose()
    with pytest.raises(RegistryError) as err:
        ready.load_gallery()
    assert not type(err.value).__module__.startswith("sqlalchemy")
    assert "\n" not in str(err.value)


def test_values_that_cannot_be_stored_are_refused_cleanly(ready: Registry, make_gen) -> None:
    g = make_gen("g1")
    with pytest.raises(ConstraintViolation, match="JSON-able"):
        ready.add_gate_report(g.id, g.onnx_sha256, True, "promote", {"when": object()})
    assert ready.gate_reports() == []


def test_alias_move_never_touches_gallery_rows(ready: Registry, make_gen, passing_report, unit_rows) -> None:
    from sqlalchemy import event

    g1, g2 = make_gen("g1"), make_gen("g2")
    ready.add_gallery_items(g1.id, [f"i{i}" for i in range(100)], unit_rows(100))
    r2 = passing_report(g2)
    statements: list[str] = []
    engine = ready._uow.engine  # white-box: watch the SQL a promotion sends

    def watch(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        statements.append(statement.lower())

    event.listen(engine, "before_cursor_execute", watch)
    try:
        ready.move_alias(g2.id, actor="t", reason="r", gate_report_id=r2.id)
    finally:
        event.remove(engine, "before_cursor_execute", watch)
    assert statements and not any("gallery_items" in s for s in statements)
    assert ready.gallery_counts() == {g1.id: 100}
