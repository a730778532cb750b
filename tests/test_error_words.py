"""Below the CLI, errors speak in the domain's words; the CLI adds its own flag or command."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from error_messages import error_messages, offending  # noqa: E402
from registry.errors import SchemaOutOfDate, WorkspaceNotFound  # noqa: E402
from upgrader.cli.common import cli_message  # noqa: E402
from upgrader.core.errors import InvalidRequest, NoProduction  # noqa: E402

UPGRADER = Path(__file__).resolve().parents[1] / "upgrader"
BELOW_THE_CLI = ("core", "compat", "data", "runtime", "services", "serving", "training", "study")


def _error_names() -> set[str]:
    """Every class in upgrader/ that derives, directly or not, from UpgraderError."""
    bases: dict[str, set[str]] = {}
    for path in UPGRADER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases.setdefault(node.name, set()).update(
                    b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases)
    names = {"UpgraderError"}
    while True:
        more = {c for c, bs in bases.items() if bs & names} - names
        if not more:
            return names
        names |= more


@pytest.mark.parametrize("package", BELOW_THE_CLI)
def test_no_message_below_the_cli_names_a_flag_or_a_command(package: str) -> None:
    messages = error_messages(UPGRADER / package, _error_names())
    assert offending(messages) == []


def test_the_scan_sees_the_errors_it_checks() -> None:
    names = _error_names()
    assert {"InvalidRequest", "GateRefused", "TrainingError", "BadImage"} <= names
    assert sum(len(error_messages(UPGRADER / p, names)) for p in BELOW_THE_CLI) > 100


def test_the_cli_adds_its_own_words_for_the_subject() -> None:
    err = InvalidRequest("K (the interface's class count) must be at least 2", subject="num_classes")
    assert cli_message(err) == "K (the interface's class count) must be at least 2 (-k/--num-classes)"
    assert cli_message(NoProduction("no production generation; promote one first", subject="production")).endswith(
        "(`upgrader promote GEN`)")
    assert cli_message(SchemaOutOfDate("the schema is older")).endswith("(`upgrader db upgrade` migrates it)")
    assert "upgrader init --home DIR" in cli_message(WorkspaceNotFound("no workspace registry at x"))
    assert cli_message(InvalidRequest("k must be 1..100")) == "k must be 1..100"  # no subject: as it is
