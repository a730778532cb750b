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


def test_an_unknown_generation_is_a_usage_error_like_an_unknown_class(invoke, seeded: Path) -> None:
    # One rule: a value the user typed that names nothing known exits 2, whatever it names.
    for args in (("verify", "no-such-gen"), ("promote", "no-such-gen"), ("rollback", "no-such-gen"),
                 ("export", "no-such-gen"), ("generations", "rm", "no-such-gen"),
                 ("matrix", "--gen", "no-such-gen"), ("train", "--classes", "6", "--parent", "no-such-gen")):
        res = invoke(*args, home=seeded)
        assert res.exit_code == 2, (args, res.stderr)
        assert "no-such-gen" in res.stderr and "list them to check (`upgrader generations`)" in res.stderr, args
    unknown_class = invoke("train", "--classes", "Teapot", "--finetune", home=seeded)
    assert unknown_class.exit_code == 2 and "unknown class 'Teapot'" in unknown_class.stderr


def _files(home: Path) -> set[Path]:
    return {p for p in home.rglob("*") if p.is_file() and not p.name.startswith("registry.db")}


def test_generations_rm_deletes_a_never_served_generation_and_frees_its_name(invoke, seeded: Path) -> None:
    assert invoke("verify", "g3-er", home=seeded).exit_code == 3  # a report and evaluations to delete too
    res = invoke("generations", "rm", "g3-er", "--json", home=seeded)
    assert res.exit_code == 0, res.stderr
    body = res.json()
    assert body["deleted"] is True and body["generation"]["name"] == "g3-er"
    assert not (seeded / "artifacts" / "g3-er").exists()
    rows = invoke("generations", "--json", home=seeded).json()
    assert [r["generation"]["name"] for r in rows] == ["g1", "g2"]
    assert invoke("generations", "rm", "g3-er", home=seeded).exit_code == 2  # gone: names nothing now
    again = invoke("register", str(seeded / "artifacts" / "g2" / "model.onnx"), "--name", "g3-er", home=seeded)
    assert again.exit_code == 0, again.stderr  # the name is free again
    assert all(invoke(*cmd, home=seeded).exit_code == 0 for cmd in (("status",), ("matrix",), ("history",)))


def test_generations_rm_refuses_production_and_retires_a_former_one(invoke, seeded: Path) -> None:
    refused = invoke("generations", "rm", "g1", home=seeded)
    assert refused.exit_code == 2 and "serves production" in refused.stderr and "roll back" in refused.stderr
    # --allow-regression: the seeded g2 regresses item-level search on classes 0-3 (tests/cli/test_gate_cmds.py).
    assert invoke("promote", "g2", "--reason", "adds classes 4-5", "--allow-regression", home=seeded).exit_code == 0
    files = _files(seeded)
    res = invoke("generations", "rm", "g1", home=seeded)
    assert res.exit_code == 0 and "retired" in res.stdout, res.stderr
    by_name = {r["generation"]["name"]: r["generation"] for r in invoke("generations", "--json", home=seeded).json()}
    assert by_name["g1"]["status"] == "retired"
    assert _files(seeded) == files  # its files stay with its history
    assert [m["to_gen"] for m in invoke("history", "--json", home=seeded).json()] == [1, 2]


def test_training_records_the_checkpoints_sha256(invoke, seeded: Path) -> None:
    from upgrader.core.files import sha256_file

    for row in invoke("generations", "--json", home=seeded).json():
        gen = row["generation"]
        assert gen["checkpoint_sha256"] == sha256_file(seeded / gen["checkpoint_path"]), gen["name"]


def test_removing_a_never_served_generation_with_gallery_items_names_the_command_that_frees_it(seeded, invoke) -> None:
    import numpy as np

    from upgrader.services.workspace import open_workspace

    with open_workspace(seeded) as ws:  # a gallery write by a generation that never served (Python API)
        dim = ws.registry.interface().embedding_dim
        rows = np.eye(2, dim, dtype=np.float32)
        ws.registry.add_gallery_items("g2", ["by-g2-0", "by-g2-1"], rows, labels=["0", "1"])
    refused = invoke("generations", "rm", "g2", home=seeded)
    assert refused.exit_code == 2
    assert "still has 2 gallery items; `upgrader gallery rm --generation g2` deletes them" in refused.stderr
    assert invoke("gallery", "rm", "--generation", "g2", home=seeded).exit_code == 0
    done = invoke("generations", "rm", "g2", "--json", home=seeded)
    assert done.exit_code == 0 and done.json()["deleted"] is True
