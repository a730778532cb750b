"""Probe embeddings and evaluations are bound to the artifact that computed them (issue 14, defect 2),
and a registration writes its generation and probe embeddings all or nothing (defect 3)."""

from __future__ import annotations

import numpy as np
import pytest

from registry import (
    EmbeddingError,
    GateNotPassed,
    NewGeneration,
    ProbeSetError,
    Registry,
    UnknownGeneration,
)

K = 16
D = K - 1


def _probe(reg: Registry, nq: int = 3, ng: int = 2) -> tuple[np.ndarray, np.ndarray]:
    imgs = np.zeros((max(nq, ng), 4, 4, 3), dtype=np.uint8)
    return (
        reg.add_probe_items("query", imgs[:nq], ["a"] * nq),
        reg.add_probe_items("gallery", imgs[:ng], ["b"] * ng),
    )


def _new(name: str, sha: str, **kw: object) -> NewGeneration:
    fields: dict[str, object] = dict(name=name, kind="initial", method="hoc", architecture="small_cnn",
                                     onnx_path=f"/m/{name}.onnx", onnx_sha256=sha, num_classes=K)
    fields.update(kw)
    return NewGeneration(**fields)  # type: ignore[arg-type]


def _embed(reg: Registry, gen_id: int, q: np.ndarray, g: np.ndarray, rows, seed: int = 0) -> None:  # noqa: ANN001
    reg.put_probe_embeddings(gen_id, "query", q, rows(len(q), seed=seed))
    reg.put_probe_embeddings(gen_id, "gallery", g, rows(len(g), seed=seed + 1))


def test_has_probe_embeddings_answers_without_raising(ready: Registry, make_gen, unit_rows) -> None:
    g = make_gen("g1")
    assert ready.has_probe_embeddings(g.id) is False  # no probe set at all
    q, gl = _probe(ready)
    assert ready.has_probe_embeddings(g.id) is False  # nothing embedded
    ready.put_probe_embeddings(g.id, "query", q, unit_rows(3))
    assert ready.has_probe_embeddings(g.id) is False  # one split only
    ready.put_probe_embeddings(g.id, "gallery", gl[:1], unit_rows(1))
    assert ready.has_probe_embeddings("g1") is False  # fewer rows than the split has
    ready.put_probe_embeddings(g.id, "gallery", gl, unit_rows(2, seed=1))
    assert ready.has_probe_embeddings(g.id) is True
    with pytest.raises(UnknownGeneration):
        ready.has_probe_embeddings(999)


def test_embeddings_of_another_artifact_are_stale(ready: Registry, make_gen, unit_rows, raw_sql) -> None:
    g = make_gen("g1")
    q, gl = _probe(ready)
    _embed(ready, g.id, q, gl, unit_rows)
    # Embedded by an artifact the generation does not have: stored, but never read.
    ready.put_probe_embeddings(g.id, "gallery", gl, unit_rows(2, seed=5), artifact_sha256="e" * 64)
    with pytest.raises(ProbeSetError, match=r"no 'gallery' probe embeddings of its current artifact .*missing or stale; verify re-embeds") as err:
        ready.get_probe_embeddings(g.id, "gallery")
    assert "\n" not in str(err.value)
    assert ready.has_probe_embeddings(g.id) is False
    assert len(ready.get_probe_embeddings(g.id, "query")[0]) == 3
    # The generation's artifact changes behind the rows (as after a re-export in 0003 days).
    raw_sql.run("UPDATE generations SET onnx_sha256 = :s WHERE id = :g", s="f" * 64, g=g.id)
    with pytest.raises(ProbeSetError, match="missing or stale"):
        ready.get_probe_embeddings(g.id, "query")
    ready.put_probe_embeddings(g.id, "query", q, unit_rows(3, seed=7))  # default: the current artifact
    ready.put_probe_embeddings(g.id, "gallery", gl, unit_rows(2, seed=8), artifact_sha256="f" * 64)
    assert ready.has_probe_embeddings(g.id) is True
    np.testing.assert_array_equal(ready.get_probe_embeddings(g.id, "query")[1], unit_rows(3, seed=7))


def test_evaluations_count_only_for_both_current_artifacts(ready: Registry, make_gen, raw_sql) -> None:
    g1, g2 = make_gen("g1"), make_gen("g2")
    [ev] = ready.record_evaluations([(g2.id, g1.id, {"template_top1": 0.5})])
    assert (ev.query_sha256, ev.gallery_sha256) == (g2.onnx_sha256, g1.onnx_sha256)
    ready.record_evaluations([(g1.id, g1.id, {"template_top1": 0.4})])
    raw_sql.run("UPDATE generations SET onnx_sha256 = :s WHERE id = :g", s="9" * 64, g=g1.id)
    assert ready.evaluations() == []  # both rows name g1's earlier artifact
    ready.record_evaluations([(g2.id, g1.id, {"template_top1": 0.7})])  # re-recorded: replaces the pair
    [fresh] = ready.evaluations()
    assert (fresh.query_gen, fresh.gallery_gen, fresh.metrics) == (g2.id, g1.id, {"template_top1": 0.7})
    assert fresh.gallery_sha256 == "9" * 64
    assert raw_sql.run("SELECT COUNT(*) FROM evaluations") == [(2,)]  # one row per pair, the stale (g1, g1) kept


def test_update_artifact_drops_what_described_the_old_one(ready: Registry, make_gen, unit_rows, passing_report) -> None:
    g1 = make_gen("g1")
    g2 = make_gen("g2", checkpoint_path="/ck/g2.pt", checkpoint_sha256="c" * 64)
    assert g2.checkpoint_sha256 == "c" * 64 and g1.checkpoint_sha256 is None
    q, gl = _probe(ready)
    _embed(ready, g1.id, q, gl, unit_rows)
    _embed(ready, g2.id, q, gl, unit_rows, seed=3)
    pairs = [(a, b) for a in (g1.id, g2.id) for b in (g1.id, g2.id)]
    ready.record_evaluations([(a, b, {"m": 0.5}) for a, b in pairs])
    ready.set_status(g2.id, "verified")
    old_report = passing_report(g2)

    updated = ready.update_artifact(g2.id, "/m/g2b.onnx", "b" * 64, {"opset": "17"}, checkpoint_sha256="d" * 64)
    assert (updated.onnx_sha256, updated.status, updated.checkpoint_sha256) == ("b" * 64, "candidate", "d" * 64)
    assert ready.get_generation(g2.id) == updated
    assert ready.has_probe_embeddings(g2.id) is False and ready.has_probe_embeddings(g1.id) is True
    assert [(e.query_gen, e.gallery_gen) for e in ready.evaluations()] == [(g1.id, g1.id)]
    assert [r.id for r in ready.gate_reports(g2.id)] == [old_report.id]  # reports stay, naming the old sha
    with pytest.raises(GateNotPassed, match="re-run the gate"):
        ready.move_alias(g2.id, actor="t", reason="r", gate_report_id=old_report.id)
    # verify re-embeds and re-evaluates: everything counts again.
    _embed(ready, g2.id, q, gl, unit_rows, seed=9)
    ready.record_evaluations([(g2.id, g1.id, {"m": 0.6})])
    assert ready.has_probe_embeddings(g2.id) is True
    assert [(e.query_gen, e.gallery_gen) for e in ready.evaluations()] == [(g1.id, g1.id), (g2.id, g1.id)]
    # No checkpoint checksum given: the recorded one stays. A retired generation stays retired.
    assert ready.update_artifact(g2.id, "/m/g2c.onnx", "a" * 64, {}).checkpoint_sha256 == "d" * 64
    ready.set_status(g1.id, "retired")
    assert ready.update_artifact(g1.id, "/m/g1b.onnx", "1" * 64, {}).status == "retired"


def test_add_generation_with_probe_embeddings_is_all_or_nothing(ready: Registry, unit_rows) -> None:
    q, gl = _probe(ready)
    good = {"query": (q, unit_rows(3)), "gallery": (gl, unit_rows(2, seed=1))}
    nan = unit_rows(2, seed=1)
    nan[1, 0] = np.nan
    refused = [
        ({"query": good["query"], "gallery": (gl, nan)}, EmbeddingError, "NaN"),
        ({"query": good["query"], "gallery": (gl, np.ones((2, D + 1), np.float32))}, EmbeddingError, "dimension"),
        ({"query": good["query"], "gallery": (q, unit_rows(3))}, ProbeSetError, "not in the 'gallery' probe split"),
        ({"query": good["query"], "train": good["gallery"]}, ProbeSetError, "unknown probe split"),
    ]
    for splits, error, match in refused:
        with pytest.raises(error, match=match):
            ready.add_generation(_new("g1", "1" * 64), probe_embeddings=splits)
        assert ready.list_generations() == []  # not even the generation row
    gen = ready.add_generation(_new("g1", "1" * 64, checkpoint_sha256="2" * 64), probe_embeddings=good)
    assert gen.name == "g1" and gen.checkpoint_sha256 == "2" * 64
    assert ready.has_probe_embeddings(gen.id) is True
    ids, emb = ready.get_probe_embeddings("g1", "gallery")
    np.testing.assert_array_equal(ids, gl)
    np.testing.assert_array_equal(emb, good["gallery"][1])
