"""train / replace refusals: the training plan words them for every UI, the CLI names its flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrader.core.errors import InvalidRequest
from upgrader.services.training_plan import TrainRequest, validate_request
from upgrader.services.workspace import open_workspace


@pytest.fixture
def empty_ws(invoke, tmp_path: Path) -> Path:
    """A fresh workspace with no generation yet."""
    home = tmp_path / "ws"
    res = invoke("init", "--num-classes", "12", "--probe-queries", "2", "--probe-gallery", "2", home=home)
    assert res.exit_code == 0, res.stderr
    return home


def test_refusals_name_the_flag_to_change(invoke, empty_ws: Path, tmp_path: Path) -> None:
    cases = [
        (("train", "--classes", "0-3", "--epochs", "0"), "error: --epochs must be at least 1"),
        (("train", "--classes", "0-3", "--initial", "--parent", "g1"),
         "error: an initial generation has no parent; use `upgrader train --finetune` to start from one"),
        (("replace", "--arch", "", "--classes", "0-3"), "error: a replacement needs --arch (the new architecture)"),
        (("replace", "--arch", "small_cnn", "--classes", "0-3", "--init-weights", str(tmp_path / "none.pt")),
         f"error: --init-weights {tmp_path / 'none.pt'}: no such file"),
    ]
    for args, message in cases:
        res = invoke(*args, home=empty_ws)
        assert res.exit_code == 2, (args, res.stderr)
        assert message in " ".join(res.stderr.split()), (args, res.stderr)
    (empty_ws / "artifacts" / "taken").mkdir(parents=True)
    res = invoke("train", "--classes", "0-3", "--name", "taken", home=empty_ws)
    assert res.exit_code == 2 and "exists already; remove it or pass another --name" in " ".join(res.stderr.split())
    assert not list((empty_ws / "artifacts").glob("*/checkpoint.pt"))  # nothing trained


def test_the_plan_words_its_refusals_without_flags(empty_ws: Path) -> None:
    with open_workspace(empty_ws) as ws:
        for req, words in [
            (TrainRequest(kind="initial", classes=("0",), epochs=0), "a training run needs at least 1 epoch"),
            (TrainRequest(kind="replacement", classes=("0",)), "a replacement needs an architecture"),
            (TrainRequest(kind="initial", classes=("0",), parent="g1"), "an initial generation has no parent"),
        ]:
            with pytest.raises(InvalidRequest, match=words) as refused:
                validate_request(ws, req)
            assert "--" not in str(refused.value)
