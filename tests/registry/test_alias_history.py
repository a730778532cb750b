"""Alias moves need a report of their own kind (issue 14, defect 1), and the alias history is
append-only in the database itself, with readers refusing an alias that disagrees with it (defect 8)."""

from __future__ import annotations

import pytest

from registry import AliasTampered, ConstraintViolation, GateNotPassed, Registry, UnknownGeneration

HISTORY_TRIGGERS = {"alias_history_no_update", "alias_history_no_delete", "aliases_no_delete", "aliases_follow_history"}


def test_an_unforced_move_needs_a_report_of_its_own_kind(ready: Registry, make_gen, passing_report) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    promote1, rollback1 = passing_report(g1), passing_report(g1, kind="rollback")
    with pytest.raises(GateNotPassed, match="is a rollback report but this move needs a promote report"):
        ready.move_alias(g1.id, actor="t", reason="r", gate_report_id=rollback1.id)
    with pytest.raises(GateNotPassed, match="is a promote report but this move needs a rollback report"):
        ready.move_alias(g1.id, actor="t", reason="r", gate_report_id=promote1.id, kind="rollback")
    with pytest.raises(ConstraintViolation, match="unknown gate report kind"):
        ready.move_alias(g1.id, actor="t", reason="r", gate_report_id=promote1.id, kind="sideways")
    assert ready.alias_history() == [] and ready.get_alias() is None
    ready.move_alias(g1.id, actor="t", reason="first", gate_report_id=promote1.id)
    ready.move_alias(g2.id, actor="t", reason="next", gate_report_id=passing_report(g2).id, kind="promote")
    back = ready.move_alias(g1.id, actor="t", reason="back", gate_report_id=rollback1.id, kind="rollback")
    assert (back.from_gen, back.to_gen, back.forced) == (g2.id, g1.id, False)
    forced = ready.move_alias(g2.id, actor="ops", reason="gate down", forced=True, kind="rollback")
    assert forced.forced and ready.get_alias() == g2.id


def test_the_database_refuses_edits_of_the_history_from_any_client(
    ready: Registry, make_gen, passing_report, raw_sql
) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    ready.move_alias(g1.id, actor="t", reason="first", gate_report_id=passing_report(g1).id)
    ready.move_alias(g2.id, actor="t", reason="second", gate_report_id=passing_report(g2).id)
    history = ready.alias_history()
    assert HISTORY_TRIGGERS <= raw_sql.triggers()
    assert "append-only" in raw_sql.refused("UPDATE alias_history SET reason = 'nothing happened'")
    assert "append-only" in raw_sql.refused("UPDATE alias_history SET to_gen = :g", g=g1.id)
    assert "append-only" in raw_sql.refused("DELETE FROM alias_history WHERE id = :i", i=history[-1].id)
    assert "newest alias_history row" in raw_sql.refused(
        "UPDATE aliases SET generation_id = :g WHERE name = 'production'", g=g1.id
    )
    assert "newest alias_history row" in raw_sql.refused("UPDATE aliases SET name = 'prod2'")
    assert "never deleted" in raw_sql.refused("DELETE FROM aliases")
    if raw_sql.backend.name == "postgres":
        raw_sql.refused("TRUNCATE alias_history CASCADE")
        raw_sql.refused("TRUNCATE aliases CASCADE")
    assert ready.alias_history() == history and ready.get_alias() == g2.id
    # What the registry itself does is allowed: append a move, then point the alias at it.
    raw_sql.run(
        "INSERT INTO alias_history (alias, from_gen, to_gen, at, actor, reason, forced) "
        "VALUES ('production', :f, :t, CURRENT_TIMESTAMP, 'sql', 'by hand', :no)",
        f=g2.id, t=g1.id, no=False,
    )
    raw_sql.run("UPDATE aliases SET generation_id = :g WHERE name = 'production'", g=g1.id)
    assert ready.get_alias() == g1.id and len(ready.alias_history()) == 3


def test_readers_refuse_an_alias_edited_behind_its_history(
    ready: Registry, make_gen, passing_report, raw_sql
) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    ready.move_alias(g1.id, actor="t", reason="first", gate_report_id=passing_report(g1).id)
    ready.move_alias(g2.id, actor="t", reason="second", gate_report_id=passing_report(g2).id)
    raw_sql.drop_trigger("aliases_follow_history", "aliases")  # someone with full access to the database
    raw_sql.run("UPDATE aliases SET generation_id = :g WHERE name = 'production'", g=g1.id)
    expected = (
        f"alias 'production' points at generation {g1.id} but its history's last move is to generation {g2.id}: "
        f"the registry was edited outside upgrader; restore it from a backup "
        f"(upgrader refuses to serve or move it until they agree)"
    )
    with pytest.raises(AliasTampered) as err:
        ready.get_alias()
    assert str(err.value) == expected
    with pytest.raises(AliasTampered):
        ready.check_alias()
    with pytest.raises(AliasTampered):
        ready.get_generation("production")
    with pytest.raises(AliasTampered):
        ready.move_alias(g1.id, actor="ops", reason="fix it", forced=True)
    for gen in (g1, g2):  # either could be taken to serve: neither's artifact may change
        with pytest.raises(ConstraintViolation, match="serves production"):
            ready.update_artifact(gen.id, "/m/x.onnx", "x" * 64, {})
    assert len(ready.alias_history()) == 2
    raw_sql.run("UPDATE aliases SET generation_id = :g WHERE name = 'production'", g=g2.id)  # restored
    ready.check_alias()
    assert ready.get_alias() == g2.id


def test_an_alias_row_without_history_is_refused(ready: Registry, make_gen, raw_sql) -> None:
    g1 = make_gen("g1")
    raw_sql.run("INSERT INTO aliases (name, generation_id, updated_at) VALUES ('canary', :g, CURRENT_TIMESTAMP)", g=g1.id)
    with pytest.raises(AliasTampered, match="'canary' points at generation .* but has no history of moves"):
        ready.get_alias("canary")
    with pytest.raises(AliasTampered):
        ready.get_generation("canary")
    assert ready.get_alias() is None  # other aliases are unaffected
    ready.check_alias("never-set")
    with pytest.raises(UnknownGeneration):
        ready.get_generation("never-set")
