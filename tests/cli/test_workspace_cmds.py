"""init, status, generations, history, db upgrade: on a real SQLite workspace."""

from __future__ import annotations

from pathlib import Path



def test_init_creates_a_workspace_and_refuses_a_second(invoke, tmp_path: Path) -> None:
    home = tmp_path / "ws"
    res = invoke("init", "--num-classes", "12", "--probe-queries", "5", "--probe-gallery", "5", "--json", home=home)
    assert res.exit_code == 0, res.stderr
    st = res.json()
    assert (st["num_classes"], st["embedding_dim"]) == (12, 11)
    assert st["probe_counts"] == {"query": 50, "gallery": 50}
    assert (home / "registry.db").is_file() and (home / "workspace.json").is_file()

    again = invoke("init", "--num-classes", "12", home=home)
    assert again.exit_code == 1
    assert "already exists" in again.stderr


def test_init_refuses_k_smaller_than_the_class_count_and_writes_nothing(invoke, tmp_path: Path) -> None:
    home = tmp_path / "ws"
    res = invoke("init", "--num-classes", "4", home=home)
    assert res.exit_code == 2
    assert "--num-classes" in res.stderr
    assert not (home / "workspace.json").exists()


def test_missing_workspace_is_a_clear_error(invoke, tmp_path: Path) -> None:
    res = invoke("status", home=tmp_path / "nowhere")
    assert res.exit_code == 1
    assert "upgrader init" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_status_and_generations_describe_the_lineage(invoke, seeded: Path) -> None:
    st = invoke("status", "--json", home=seeded).json()
    assert st["production"]["name"] == "g1"
    assert st["gallery_total"] == 100
    rows = invoke("generations", "--json", home=seeded).json()
    by_name = {r["generation"]["name"]: r for r in rows}
    assert by_name["g1"]["is_production"] and by_name["g1"]["generation"]["status"] == "production"
    assert by_name["g2"]["generation"]["status"] == "candidate"
    assert by_name["g2"]["generation"]["parent_id"] == by_name["g1"]["generation"]["id"]
    assert 0.0 < by_name["g1"]["self_test"] <= 1.0
    table = invoke("generations", home=seeded)
    assert table.exit_code == 0 and "g2" in table.stdout


def test_history_lists_the_first_promotion(invoke, seeded: Path) -> None:
    moves = invoke("history", "--json", home=seeded).json()
    assert len(moves) == 1
    assert moves[0]["from_gen"] is None and moves[0]["reason"] == "first generation"
    assert moves[0]["forced"] is False and moves[0]["gate_report_id"] is not None


def test_db_upgrade_is_idempotent_on_a_current_workspace(invoke, seeded: Path) -> None:
    res = invoke("db", "upgrade", home=seeded)
    assert res.exit_code == 0, res.stderr
    assert "revision" in res.stdout
    assert invoke("status", "--json", home=seeded).exit_code == 0


def test_an_old_schema_is_refused_with_the_command_that_migrates_it(invoke, seeded: Path) -> None:
    from registry.migrations import downgrade

    downgrade(f"sqlite:///{seeded / 'registry.db'}", "-1")  # as a workspace made by the previous release
    res = invoke("status", home=seeded)
    assert res.exit_code == 1
    assert "older than" in res.stderr and "(`upgrader db upgrade` migrates it)" in res.stderr  # the CLI's words
    assert invoke("db", "upgrade", home=seeded).exit_code == 0
    assert invoke("status", "--json", home=seeded).exit_code == 0


def test_unknown_generation_is_an_error(invoke, seeded: Path) -> None:
    res = invoke("verify", "no-such-gen", home=seeded)
    assert res.exit_code == 1
    assert "no-such-gen" in res.stderr
