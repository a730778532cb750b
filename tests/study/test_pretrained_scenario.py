"""The study's pretrained scenario: a replacement that starts from a backbone pretrained on other classes."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from upgrader.cli import app
from upgrader.services.workspace import open_workspace
from upgrader.study.pretraining import pretrained_path

TINY = ["--methods", "hoc", "--seeds", "1", "--epochs", "1", "--replacement-epochs", "1", "--train-per-class", "40",
        "--probe-per-class", "5", "--gallery-per-class", "10", "--num-classes", "16", "--device", "cpu"]


def test_the_replacement_starts_from_the_backbone_pretrained_on_classes_the_lineage_never_sees(tmp_path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["study", "--scenario", "pretrained", *TINY, "--out", str(out), "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, (res.stdout, res.stderr)
    data = json.loads((out / "results.json").read_text())
    run = data["runs"][0]
    assert run["status"] == "done" and [s["kind"] for s in run["steps"]] == ["initial", "finetune", "replacement"]
    weights = pretrained_path(out, "resnet_wide", 0)
    pretrained = torch.load(weights, map_location="cpu", weights_only=True)
    assert pretrained["arch"] == "resnet_wide" and pretrained["meta"]["method"] == "ce"  # plain CE, no lineage
    with open_workspace(run["workspace"]) as ws:
        gen = ws.registry.get_generation(run["steps"][2]["generation_id"])
        assert gen.train_config["init_weights"] == str(weights) and gen.train_config["init_prefix"] == "backbone."
        assert gen.train_config["classes"] == ["Coat", "Sandal"] and len(gen.train_config["vertices"]) == 6  # 0-5 only
    assert "| pretrained | hoc |" in (out / "report.md").read_text()
