"""The help of the training commands offers what the product can build: every architecture and method."""

from __future__ import annotations

import pytest

from upgrader.core.vocabulary import ARCHITECTURES, METHODS


@pytest.mark.parametrize("command", ["train", "replace"])
def test_training_help_lists_every_architecture_and_method(invoke, command: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", "250")  # one line per option: names are not split by wrapping
    res = invoke(command, "--help")
    assert res.exit_code == 0, res.stderr
    for name in (*ARCHITECTURES, *METHODS):
        assert name in res.stdout, name
    assert "resnet_wide" in res.stdout  # the one the help used to leave out
