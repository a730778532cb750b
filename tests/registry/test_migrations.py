"""Migrations own the schema: upgrade, downgrade, metadata parity, and refusing foreign schemas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from registry import Registry, SchemaFromFuture, SchemaOutOfDate, WorkspaceNotFound
from registry.db import make_engine
from registry.migrations import alembic_config, downgrade, head_revision, script_location, upgrade
from registry.schema import Base

REPO = Path(__file__).resolve().parents[2]


def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _version(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_one_head_and_no_package_shadowing_alembic() -> None:
    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1
    # An __init__.py in the top-level alembic/ folder would shadow the alembic library.
    assert not (script_location() / "__init__.py").exists()


def test_upgrade_empty_database_matches_orm_metadata(backend) -> None:
    if backend.name == "sqlite":
        (Path(backend.location) / "registry.db").touch()  # an empty file
    assert Registry.upgrade(backend.location) == head_revision()
    assert _diff(backend.url) == []
    assert {"generations", "gallery_items", "alias_history", "probe_items"} <= _tables(backend.url)


def test_downgrade_to_base_and_up_again(backend) -> None:
    assert upgrade(backend.url) == head_revision()
    with Registry.open(backend.location) as reg:
        reg.set_interface(8)
    assert downgrade(backend.url, "base") == "base"
    assert _tables(backend.url) <= {"alembic_version"}
    with pytest.raises(SchemaOutOfDate, match="migrate its schema to this version"):
        Registry.open(backend.location)
    assert Registry.upgrade(backend.location) == head_revision()
    assert _diff(backend.url) == []
    with Registry.open(backend.location) as reg:
        assert reg.set_interface(8).embedding_dim == 7


def test_schema_one_step_behind_is_refused_with_the_remedy(migrated) -> None:
    downgrade(migrated.url, "-1")
    with pytest.raises(SchemaOutOfDate) as err:
        Registry.open(migrated.location)
    assert "older than" in str(err.value) and "migrate its schema to this version" in str(err.value)
    assert "\n" not in str(err.value)


def test_schema_from_the_future_is_refused_and_left_alone(migrated) -> None:
    engine = make_engine(migrated.url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    with pytest.raises(SchemaFromFuture, match="install a newer release of the package"):
        Registry.open(migrated.location)
    with pytest.raises(SchemaFromFuture):
        Registry.open(migrated.location, create=True)
    with pytest.raises(SchemaFromFuture):
        Registry.upgrade(migrated.location)
    assert _version(migrated.url) == "9999_from_the_future"


def test_missing_workspace_says_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceNotFound, match=r"no workspace registry at .*; create a workspace there first"):
        Registry.open(tmp_path / "nowhere")
    # A directory that exists but holds no registry: refused, and no empty database left behind.
    with pytest.raises(WorkspaceNotFound):
        Registry.open(tmp_path)
    assert not (tmp_path / "registry.db").exists()
    with pytest.raises(WorkspaceNotFound):
        Registry.upgrade(tmp_path / "nowhere")


def test_create_makes_directory_and_home_env_is_the_default(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "a" / "b"
    monkeypatch.setenv("UPGRADER_HOME", str(home))
    with Registry.open(create=True) as reg:
        assert reg.home == home.resolve()
        assert reg.url.endswith("registry.db")
        reg.set_interface(4)
    with Registry.open() as reg:
        assert reg.interface().num_classes == 4


def test_unmigrated_postgres_database_is_not_a_workspace(backend) -> None:
    if backend.name != "postgres":
        pytest.skip("an empty SQLite directory is covered by test_missing_workspace_says_to_create_one")
    with pytest.raises(WorkspaceNotFound):
        Registry.open(backend.location)


def test_alembic_command_line_from_an_ini(tmp_path: Path) -> None:
    (tmp_path / ".upgrader").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "upgrade", "head"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a bound for a hang
    )
    assert proc.returncode == 0, proc.stderr
    with Registry.open(tmp_path / ".upgrader") as reg:
        assert reg.set_interface(3).embedding_dim == 2


def test_counts_table_is_filled_from_the_items_already_stored(migrated, ready, make_gen, unit_rows) -> None:
    # A workspace at 0002 has items but no counts table: 0003 must count what is there.
    g1, g2 = make_gen("g1"), make_gen("g2")
    ready.add_gallery_items(g1.id, [f"a{i}" for i in range(5)], unit_rows(5, seed=1), labels=["a", "a", None, "", "b"])
    ready.add_gallery_items(g2.id, ["b0", "b1"], unit_rows(2, seed=2), labels=["a", None])
    before = ready.gallery_label_counts()
    assert downgrade(migrated.url, "0002_gallery_generation_label") == "0002_gallery_generation_label"
    assert "gallery_label_counts" not in _tables(migrated.url)
    assert upgrade(migrated.url) == head_revision()
    assert ready.gallery_label_counts() == before == {
        (g1.id, "a"): 2, (g1.id, None): 1, (g1.id, ""): 1, (g1.id, "b"): 1, (g2.id, "a"): 1, (g2.id, None): 1,
    }


def _columns(url: str, table: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {c["name"] for c in inspect(conn).get_columns(table)}
    finally:
        engine.dispose()


def test_0004_binds_rows_of_a_0003_registry_to_current_artifacts_and_adds_triggers(
    migrated, ready, make_gen, passing_report, unit_rows, raw_sql
) -> None:
    import numpy as np

    g1, g2 = make_gen("g1"), make_gen("g2", checkpoint_sha256="c" * 64)
    q = ready.add_probe_items("query", np.zeros((2, 4, 4, 3), np.uint8), ["a", "b"])
    gl = ready.add_probe_items("gallery", np.zeros((1, 4, 4, 3), np.uint8), ["a"])
    for seed, gen in enumerate((g1, g2)):
        ready.put_probe_embeddings(gen.id, "query", q, unit_rows(2, seed=seed))
        ready.put_probe_embeddings(gen.id, "gallery", gl, unit_rows(1, seed=seed))
    ready.record_evaluations([(g1.id, g1.id, {"m": 0.5}), (g2.id, g1.id, {"m": 0.6})])
    ready.move_alias(g1.id, actor="t", reason="first", gate_report_id=passing_report(g1).id)

    assert downgrade(migrated.url, "0003_gallery_label_counts") == "0003_gallery_label_counts"
    assert "artifact_sha256" not in _columns(migrated.url, "probe_embeddings")
    assert not {"query_sha256", "gallery_sha256"} & _columns(migrated.url, "evaluations")
    assert "checkpoint_sha256" not in _columns(migrated.url, "generations")
    assert raw_sql.triggers() == set()
    # Rows written while at 0003 (no sha columns) are bound by the upgrade too.
    raw_sql.run(
        "INSERT INTO evaluations (query_gen, gallery_gen, metrics, created_at) "
        "VALUES (:q, :g, '{\"m\": 0.3}', CURRENT_TIMESTAMP)", q=g1.id, g=g2.id,
    )

    assert upgrade(migrated.url) == head_revision()
    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1
    assert _diff(migrated.url) == []
    with Registry.open(migrated.location) as reg:
        assert reg.has_probe_embeddings(g1.id) and reg.has_probe_embeddings(g2.id)
        np.testing.assert_array_equal(reg.get_probe_embeddings(g2.id, "query")[1], unit_rows(2, seed=1))
        evs = reg.evaluations()
        assert [(e.query_gen, e.gallery_gen) for e in evs] == [(g1.id, g1.id), (g1.id, g2.id), (g2.id, g1.id)]
        shas = {g1.id: g1.onnx_sha256, g2.id: g2.onnx_sha256}
        assert all((e.query_sha256, e.gallery_sha256) == (shas[e.query_gen], shas[e.gallery_gen]) for e in evs)
        assert reg.get_generation(g2.id).checkpoint_sha256 is None  # dropped by the downgrade: unknown now
        assert reg.get_alias() == g1.id
    assert "append-only" in raw_sql.refused("DELETE FROM alias_history")
    assert "newest alias_history row" in raw_sql.refused("UPDATE aliases SET generation_id = :g", g=g2.id)


def test_0005_versions_the_rows_of_a_0004_registry_and_stores_calibrations(
    migrated, ready, make_gen, unit_rows, raw_sql
) -> None:
    import numpy as np

    g1, g2 = make_gen("g1"), make_gen("g2")
    ready.add_gallery_items(g1.id, [f"a{i}" for i in range(5)], unit_rows(5, seed=1), labels=list("xxyyz"))
    ready.add_gallery_items(g2.id, ["b0", "b1"], unit_rows(2, seed=2))
    ready.reembed_gallery_items(["a1"], g2.id, unit_rows(1, seed=3))
    ready.delete_gallery_items(["a3"])  # a gap in the row ids
    cal = ready.add_gate_report(g1.id, g1.onnx_sha256, True, "promote", {}, calibration={"k": 1})
    ready.move_alias(g1.id, actor="t", reason="first", gate_report_id=cal.id)

    assert downgrade(migrated.url, "0004_artifact_binding") == "0004_artifact_binding"
    assert not {"gallery_clock", "gallery_tombstones"} & _tables(migrated.url)
    assert "version" not in _columns(migrated.url, "gallery_items")
    assert "calibration" not in _columns(migrated.url, "gate_reports")
    # A row written at 0004 (no version column), after the others.
    raw_sql.run(
        "INSERT INTO gallery_items (external_id, label, source_uri, generation_id, embedding) "
        "SELECT 'old', label, source_uri, generation_id, embedding FROM gallery_items WHERE external_id = 'a0'"
    )
    ids = {str(e): int(i) for i, e in raw_sql.run("SELECT id, external_id FROM gallery_items")}

    assert upgrade(migrated.url) == head_revision()
    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1
    assert _diff(migrated.url) == []
    # Backfilled: version = id, the clock at the largest id; new writes carry on above it.
    assert {str(e): int(v) for e, v in raw_sql.run("SELECT external_id, version FROM gallery_items")} == ids
    with Registry.open(migrated.location) as reg:
        assert reg.gallery_version() == max(ids.values())
        everything = reg.gallery_changes(0)
        assert everything.upserts.external_ids == sorted(ids, key=ids.__getitem__)
        np.testing.assert_array_equal(everything.upserts.matrix, reg.load_gallery().matrix)
        assert everything.deleted_row_ids.size == 0 and everything.version == max(ids.values())
        assert reg.get_gate_report(cal.id).calibration is None  # dropped with the column by the downgrade
        assert reg.serving_calibration() is None
        reg.add_gallery_items(g1.id, ["new"], unit_rows(1, seed=4))
        reg.delete_gallery_items(["old"])
        ch = reg.gallery_changes(everything.version)
        assert ch.upserts.external_ids == ["new"] and ch.deleted_row_ids.tolist() == [ids["old"]]
        assert ch.version == max(ids.values()) + 2


def test_0005_on_an_empty_gallery_starts_the_clock_at_zero(migrated, ready, make_gen, unit_rows) -> None:
    assert downgrade(migrated.url, "0004_artifact_binding") == "0004_artifact_binding"
    assert upgrade(migrated.url) == head_revision()
    with Registry.open(migrated.location) as reg:
        assert reg.gallery_version() == 0
        reg.add_gallery_items(make_gen("g1").id, ["a"], unit_rows(1))
        assert reg.gallery_version() == 1
