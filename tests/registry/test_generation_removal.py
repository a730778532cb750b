"""Generation names are safe folder names (issue 14, defect 5), and a generation can be removed:
deleted when it never served, retired when the alias history names it (defect 3)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from registry import (
    GENERATION_NAME_PATTERN,
    ConstraintViolation,
    InvalidStatus,
    Registry,
    UnknownGeneration,
    generation_name,
)


@pytest.mark.parametrize(
    "name",
    ["../../x", "/abs/x", "a/b", "a\\b", ".hidden", "..", "a b", "[/]evil", "x]", "", " g1", "g1\n", "x" * 101,
     "7", "production", "ö-umlaut"],
)
def test_unsafe_generation_names_are_refused_with_the_pattern(ready: Registry, make_gen, name: str) -> None:
    with pytest.raises(ConstraintViolation) as err:
        make_gen(name, sha="1" * 64)
    message = str(err.value)
    assert GENERATION_NAME_PATTERN in message and "choose a name like" in message and "\n" not in message
    with pytest.raises(ConstraintViolation):
        generation_name(name)
    assert ready.list_generations() == []


def test_safe_generation_names_are_kept_as_given(ready: Registry, make_gen) -> None:
    for name in ("g1", "A.b_c-1", "2026-01-01.run", "x" * 100):
        assert generation_name(name) == name
        assert make_gen(name, sha=f"{len(name)}".ljust(64, "0")).name == name
    assert GENERATION_NAME_PATTERN == r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
    assert re.fullmatch(GENERATION_NAME_PATTERN, "a/b") is None


def _count(raw_sql, table: str, column: str, gen_id: int) -> int:  # noqa: ANN001
    [(n,)] = raw_sql.run(f"SELECT COUNT(*) FROM {table} WHERE {column} = :g", g=gen_id)
    return int(n)  # type: ignore[call-overload]


def test_removing_a_never_served_generation_deletes_it_and_frees_the_name(
    ready: Registry, make_gen, unit_rows, raw_sql
) -> None:
    g1 = make_gen("g1")
    q = ready.add_probe_items("query", np.zeros((2, 4, 4, 3), np.uint8), ["a", "b"])
    g2 = make_gen("g2")
    ready.put_probe_embeddings(g2.id, "query", q, unit_rows(2))
    ready.record_evaluations([(g1.id, g2.id, {"m": 1.0}), (g2.id, g1.id, {"m": 1.0}), (g2.id, g2.id, {"m": 1.0}),
                              (g1.id, g1.id, {"m": 0.5})])
    ready.add_gate_report(g2.id, g2.onnx_sha256, False, "promote", {})
    ready.add_gate_report(g2.id, g2.onnx_sha256, True, "rollback", {})
    ready.add_gallery_items(g2.id, ["x"], unit_rows(1))
    ready.delete_gallery_items(["x"])  # items that came and went leave nothing behind
    gone, deleted = ready.remove_generation("g2")
    assert deleted is True and gone == g2  # the generation as it was
    with pytest.raises(UnknownGeneration):
        ready.get_generation("g2")
    for table, column in (("probe_embeddings", "generation_id"), ("gate_reports", "generation_id"),
                          ("evaluations", "query_gen"), ("evaluations", "gallery_gen")):
        assert _count(raw_sql, table, column, g2.id) == 0, table
    assert [(e.query_gen, e.gallery_gen) for e in ready.evaluations()] == [(g1.id, g1.id)]
    again = make_gen("g2")
    assert again.status == "candidate" and not ready.has_probe_embeddings(again.id) and ready.gate_reports(again.id) == []
    assert [g.name for g in ready.list_generations()] == ["g1", "g2"]


def test_removal_refusals_name_the_obstacle_and_write_nothing(
    ready: Registry, make_gen, passing_report, unit_rows
) -> None:
    g1 = make_gen("g1")
    ready.move_alias(g1.id, actor="t", reason="first", gate_report_id=passing_report(g1).id)
    with pytest.raises(ConstraintViolation, match="serves production.*; roll back or promote another generation first"):
        ready.remove_generation(g1.id)
    g2 = make_gen("g2")
    ready.add_gallery_items(g2.id, ["i0", "i1", "i2"], unit_rows(3))
    with pytest.raises(ConstraintViolation, match="'g2' still has 3 gallery items; delete its gallery items first"):
        ready.remove_generation("g2")
    g3 = make_gen("g3")
    make_gen("g4", kind="finetune", parent_id=g3.id)
    with pytest.raises(ConstraintViolation, match=r"'g3' is the parent of 'g4'; remove those first"):
        ready.remove_generation("g3")
    assert [g.name for g in ready.list_generations()] == ["g1", "g2", "g3", "g4"]
    assert ready.gallery_counts() == {g2.id: 3}
    assert ready.get_generation(g1.id).status == "production"
    # Once the obstacles are gone, removal goes through.
    assert ready.delete_gallery_items(generation="g2") == 3
    assert ready.remove_generation("g2")[1] is True
    assert ready.remove_generation("g4")[1] is True
    assert ready.remove_generation("g3")[1] is True
    assert [g.name for g in ready.list_generations()] == ["g1"]


def test_a_generation_the_history_names_is_retired_not_deleted(
    ready: Registry, make_gen, passing_report, unit_rows
) -> None:
    g1, g2, g3 = make_gen("g1"), make_gen("g2"), make_gen("g3")
    q = ready.add_probe_items("query", np.zeros((1, 4, 4, 3), np.uint8), ["a"])
    ready.put_probe_embeddings(g1.id, "query", q, unit_rows(1))
    r1 = passing_report(g1)
    ready.move_alias(g1.id, actor="t", reason="first", gate_report_id=r1.id)
    ready.move_alias(g2.id, actor="t", reason="second", gate_report_id=passing_report(g2).id)
    # A forced move citing g3's report: g3 is named by the history through it.
    r3 = ready.add_gate_report(g3.id, g3.onnx_sha256, False, "promote", {})
    ready.move_alias(g2.id, actor="ops", reason="incident", gate_report_id=r3.id, forced=True, alias="canary")
    history = ready.alias_history()
    for gen in (g1, g3):
        now, deleted = ready.remove_generation(gen.id)
        assert deleted is False and now.status == "retired" and now.id == gen.id
    assert ready.alias_history() == history
    assert [r.id for r in ready.gate_reports(g1.id)] == [r1.id]
    assert len(ready.get_probe_embeddings(g1.id, "query")[0]) == 1
    # Retired: no unforced move brings it back, whatever report is offered.
    rb = passing_report(ready.get_generation(g1.id), kind="rollback")
    with pytest.raises(InvalidStatus, match="'g1' is retired.*force the move with a reason"):
        ready.move_alias(g1.id, actor="t", reason="back", gate_report_id=rb.id, kind="rollback")
    assert ready.get_alias() == g2.id
    move = ready.move_alias(g1.id, actor="ops", reason="needed it back", forced=True, kind="rollback")
    assert move.forced and ready.get_alias() == g1.id
