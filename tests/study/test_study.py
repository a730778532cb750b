"""The compatibility study end to end on a tiny configuration, and its aggregation on fixed numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from upgrader.cli import app
from upgrader.core.errors import InvalidRequest
from upgrader.services.workspace import open_workspace
from upgrader.study.aggregation import check_targets, mean_matrix, mean_std, summarise
from upgrader.study.records import RunRecord
from upgrader.study.runner import StudyConfig, registry_figures, validate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_results_hold_matrix_and_metrics_for_every_method_and_seed(tiny_study) -> None:
    out, data, stdout = tiny_study
    assert data["status"] == "finished" and data["runs_done"] == 2 and data["runs_failed"] == 0
    assert json.loads(stdout) == data  # --json prints results.json's content
    runs = {(r["method"], r["seed"]): r for r in data["runs"]}
    assert set(runs) == {("hoc", 0), ("er", 0)}
    for r in runs.values():
        t = len(r["generation_ids"])
        assert t == 4  # short: four generations, refused ones forced into the chain
        assert len(r["matrix"]) == t and all(len(row) == t for row in r["matrix"])
        assert 0.0 <= r["ac"] <= 1.0 and 0.0 <= r["am"] <= 1.0
        assert len(r["steps"]) == 4
        for s in r["steps"]:  # both protocols of the mixed gallery, next to their re-index bounds
            assert all(0.0 <= s[k] <= 1.0 for k in ("mixed_accuracy", "reindex_accuracy", "mixed_template", "reindex_template"))
        # the gate's mixed-gallery estimate is recorded at every step; before anything is stored it is the re-index
        assert all(s["gate_mixed_estimate"] is not None and s["gate_reindex_estimate"] is not None for s in r["steps"])
        assert r["steps"][0]["gate_mixed_estimate"] == r["steps"][0]["gate_reindex_estimate"]
        # "self-test rises" = each promoted generation beat production's self-test on its own classes
        assert r["steps"][0]["previous_self_test"] is None
        assert r["self_test_rises"] == all(
            s["previous_self_test"] is None or s["self_test"] > s["previous_self_test"] for s in r["steps"] if s["promoted"])
        assert Path(r["workspace"]) == out / "workspaces" / f"short-{r['method']}-s0"
    for method in ("hoc", "er"):
        s = data["summary"]["short"][method]
        assert s["runs"] == 1 and s["ac"]["mean"] == runs[(method, 0)]["ac"] and s["ac"]["std"] == 0.0


def test_figures_are_written_non_empty_pngs(tiny_study) -> None:
    out, data, _ = tiny_study
    assert set(data["figures"]) == {"matrix_short_hoc.png", "matrix_short_er.png", "self_test_short.png", "gallery_short.png",
                                    "served_short.png", "backfill_short.png"}
    for name in data["figures"]:
        blob = (out / name).read_bytes()
        assert blob[:8] == PNG_MAGIC and len(blob) > 5000, name
        assert f"![{name}]({name})" in (out / "report.md").read_text()


def test_report_ac_am_equal_the_registry(tiny_study) -> None:
    out, data, _ = tiny_study
    report = (out / "report.md").read_text()
    for r in data["runs"]:
        again = registry_figures(r["workspace"], r["generation_ids"])  # compatibility_matrix on the kept workspace
        assert again["ac"] == r["ac"] and math.isclose(again["am"], r["am"], abs_tol=1e-12)
        np.testing.assert_allclose(again["matrix"], r["matrix"], atol=1e-12)
        assert r["registry"]["ac"] == r["ac"]
        row = f"| short | {r['method']} | 0 | {r['ac']:.3f} | {100 * r['am']:.1f} |"
        assert row in report
        summary_row = f"| short | {r['method']} | 1 | {r['ac']:.3f} ± 0.000 | {100 * r['am']:.1f} ± 0.0 |"
        assert summary_row in report


def test_gate_refusal_of_an_er_generation_is_recorded(tiny_study) -> None:
    _, data, _ = tiny_study
    er = next(r for r in data["runs"] if r["method"] == "er")
    assert er["refused_steps"], "the gate let every er generation through"
    assert er["forced_steps"] == er["refused_steps"]  # forced so the chain went on
    for step in er["steps"]:
        if step["step"] in er["refused_steps"]:
            assert not step["gate_passed"] and step["forced"] and step["gate_reasons"]
    # ... and the registry itself says so: a failing gate report and a forced move of production.
    with open_workspace(er["workspace"]) as ws:
        for step in er["refused_steps"]:
            gid = er["steps"][step - 1]["generation_id"]
            assert any(not rep.passed for rep in ws.registry.gate_reports(gid))
            assert any(m.forced and m.to_gen == gid for m in ws.registry.alias_history())
    assert set(er["registry"]["forced_moves"]) == {er["steps"][s - 1]["generation_name"] for s in er["refused_steps"]}
    assert any(t["target"].startswith("the gate refuses er") and t["met"] for t in data["targets"])


def test_unknown_method_is_a_usage_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["study", "--methods", "hoc,xyz", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "xyz" in res.stderr
    assert not (tmp_path / "o").exists()


def test_a_dataset_with_too_few_classes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "three.npz"
    np.savez(path, images=np.zeros((30, 28, 28), dtype=np.uint8), labels=np.repeat(np.arange(3), 10))
    with pytest.raises(InvalidRequest, match="classes"):
        validate(StudyConfig(out=str(tmp_path / "o"), dataset=str(path)))


def _record(method: str, seed: int, ac: float, am: float, matrix: list[list[float]], refused: list[int]) -> RunRecord:
    steps = [{"step": i + 1, "self_test": 0.5 + 0.1 * i, "mixed_accuracy": 0.5, "reindex_accuracy": 0.82,
              "mixed_template": 0.8, "reindex_template": 0.82, "gate_passed": (i + 1) not in refused}
             for i in range(len(matrix))]
    return RunRecord(scenario="short", method=method, seed=seed, status="done", workspace=None, ac=ac, am=am,
                     matrix=matrix, final_self_test=0.8, final_mixed=0.8, final_reindex=0.82, final_mixed_items=0.5,
                     final_reindex_items=0.82, self_test_rises=True, refused_steps=refused, steps=steps)


def test_aggregation_mean_std_and_targets() -> None:
    assert mean_std([0.5, 1.0, None]) == {"mean": 0.75, "std": 0.25, "n": 2, "min": 0.5, "max": 1.0}
    assert mean_matrix([[[1.0, 0.0], [0.5, 1.0]], [[0.0]]]) == [[0.5, 0.0], [0.5, 1.0]]  # a shorter chain pads
    runs = [_record("hoc", 0, 1.0, 0.70, [[0.6, 0.1], [0.7, 0.8]], []),
            _record("hoc", 1, 0.5, 0.60, [[0.6, 0.1], [0.5, 0.8]], []),
            _record("er", 0, 0.0, 0.40, [[0.6, 0.1], [0.1, 0.8]], [2])]
    summary = summarise(runs)
    assert summary["short"]["hoc"]["ac"]["mean"] == 0.75 and summary["short"]["hoc"]["ac"]["std"] == 0.25
    np.testing.assert_allclose(summary["short"]["hoc"]["matrix_mean"], [[0.6, 0.1], [0.6, 0.8]])
    checks = {c["target"]: c["met"] for c in check_targets(runs, summary)}
    assert checks["hoc AC on short, every seed"] is False  # seed 1 has 0.5
    assert checks["AM(hoc) - AM(er) on short"] is True  # 65 - 40 = 25 points
    assert checks["the gate refuses er generations that break compatibility (short)"] is True
    # the mixed gallery is held to the target on both protocols: 2 points below on templates, 32 on items
    assert checks["mixed gallery within 3 points of re-index after the last hoc promotion (short, templates)"] is True
    assert checks["mixed gallery within 3 points of re-index after the last hoc promotion (short, items)"] is False


def _served(raw: float, cal: float, reindex: float, gain10: float, random10: float) -> dict:
    curve = lambda at10: [[0.0, 0, cal], [0.05, 5, (cal + at10) / 2], [0.1, 10, at10], [1.0, 100, reindex]]  # noqa: E731
    return {"raw": raw, "calibrated": cal, "reindex": reindex,
            "backfill": {"gain": curve(gain10), "oldest": curve(random10), "random": curve(random10)}}


def test_served_figures_aggregate_and_meet_or_miss_their_targets() -> None:
    def run(seed: int, steps: list[dict]) -> RunRecord:
        return RunRecord(scenario="short", method="hoc", seed=seed, status="done", workspace=None, ac=1.0, am=0.8,
                         steps=steps)

    ok = [{"step": 1, "promoted": True, "gate_passed": True, "served": _served(0.8, 0.8, 0.8, 0.8, 0.8),
           "served_as_stood": None, "served_before": None},
          {"step": 2, "promoted": True, "gate_passed": True, "served": _served(0.70, 0.79, 0.80, 0.80, 0.78),
           "served_as_stood": 0.82, "served_before": 0.80}]
    bad = [dict(ok[0]), {**ok[1], "served": _served(0.60, 0.75, 0.80, 0.785, 0.79), "served_as_stood": 0.78}]
    runs = [run(0, ok), run(1, bad)]
    summary = summarise(runs)["short"]["hoc"]
    by = summary["served_by_step"]
    assert by["calibrated"][1]["mean"] == pytest.approx(0.77) and by["gap"][1]["mean"] == pytest.approx(-0.03)
    assert by["gain@0.1"][1]["mean"] == pytest.approx(0.7925) and by["random@0.1"][1]["n"] == 2
    assert summary["as_stood_change_by_step"][1]["mean"] == pytest.approx(0.0)
    assert [p["fraction"] for p in summary["backfill_curve"]["gain"]] == [0.0, 0.05, 0.1, 1.0]
    checks = {c["target"]: c for c in check_targets(runs, summarise(runs))}
    within = checks["served top-1, calibrated, nothing re-embedded, within 2 points of a re-index after every step (short, hoc)"]
    assert within["met"] is False and "s1: worst -5.0" in within["measured"]  # seed 1 is 5 points below
    assert checks["backfill of 10% (gain policy) within 1 point of a re-index after the last step (short, hoc)"]["met"] is False
    assert checks["the gain policy beats random at 10% (short, hoc)"]["met"] is False  # 78.5 < 79.0 on seed 1
    regress = checks["no promotion the gate passed lowers served top-1 on the gallery as it stood (short, hoc)"]
    assert regress["met"] is False and "s1 step 2: -2.0" in regress["measured"]
    good = {c["target"]: c["met"] for c in check_targets([run(0, ok)], summarise([run(0, ok)]))}
    assert all(v for k, v in good.items() if "served" in k or "backfill" in k or "gain policy" in k)
