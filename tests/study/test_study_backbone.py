"""The study takes a user backbone for its replacements, checked before anything runs."""

from __future__ import annotations

from types import SimpleNamespace

from typer.testing import CliRunner

from upgrader.cli import app
from upgrader.study.runner import StudyConfig
from upgrader.study.scenario import SCENARIOS, _request


def _no_production_ws() -> SimpleNamespace:
    return SimpleNamespace(registry=SimpleNamespace(get_alias=lambda: None))


def test_every_replacement_of_the_study_trains_the_given_backbone_with_its_arguments(tmp_path) -> None:
    config = StudyConfig(out=str(tmp_path), replacement_arch="mynets:tiny", replacement_arch_kwargs={"width": 16})
    sc = config.scenario_config("hoc", 0)
    for i, step in enumerate(SCENARIOS["short"], 1):
        req, arch = _request(_no_production_ws(), step, i, ["a"], sc)
        if step.kind == "replacement":
            assert (req.arch, req.arch_kwargs, arch) == ("mynets:tiny", {"width": 16}, "mynets:tiny")
            assert req.name == "g3-replacement-tiny-hoc"  # a name the registry accepts
        elif step.kind == "initial":
            assert req.arch == "small_cnn" and req.arch_kwargs == {}


def test_a_backbone_that_is_not_installed_or_malformed_stops_the_study_before_it_runs(tmp_path) -> None:
    out = tmp_path / "out"
    missing = CliRunner().invoke(app, ["study", "--replacement-arch", "nosuchpkg_study.nets:tiny", "--out", str(out)])
    assert missing.exit_code == 1 and "nosuchpkg_study" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    malformed = CliRunner().invoke(app, ["study", "--replacement-arch", "9bad", "--out", str(out)])
    assert malformed.exit_code == 2
    bad_json = CliRunner().invoke(app, ["study", "--replacement-arch", "small_cnn", "--replacement-arch-kwargs", "[1]",
                                        "--out", str(out)])
    assert bad_json.exit_code == 2 and "--replacement-arch-kwargs" in bad_json.stderr
    assert not out.exists()  # nothing ran, nothing written
