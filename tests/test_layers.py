"""The layout's import contracts hold on the real tree, and the check catches each kind of breach."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from layers import read_tree, violations  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tree() -> dict[str, str]:
    return read_tree(ROOT)


def test_the_tree_keeps_the_import_contracts(tree: dict[str, str]) -> None:
    assert violations(tree) == []


def _with(tree: dict[str, str], **extra: str) -> list[str]:
    """Violations of the real tree plus the given modules (``a__b`` names module ``a.b``)."""
    return violations({**tree, **{name.replace("__", "."): src for name, src in extra.items()}})


def test_a_lazy_torch_import_below_training_is_caught(tree: dict[str, str]) -> None:
    bad = _with(tree, upgrader__compat__sneaky="def f():\n    import torch\n    return torch\n")
    assert any(v.startswith("upgrader.compat.sneaky reaches torch: upgrader.compat.sneaky -> torch") for v in bad)


def test_torch_reached_through_another_module_is_caught(tree: dict[str, str]) -> None:
    bad = _with(tree, upgrader__runtime__fast="from upgrader.runtime.helper import go\n",
                upgrader__runtime__helper="import torch.nn\n\ndef go():\n    return 1\n")
    assert "upgrader.runtime.fast reaches torch: upgrader.runtime.fast -> upgrader.runtime.helper -> torch" in bad


def test_an_upward_import_is_caught(tree: dict[str, str]) -> None:
    bad = _with(tree, upgrader__services__up="def f():\n    from upgrader.training import loop\n")
    assert any("upgrader.services may not import upgrader.training" in v for v in bad)
    bad = _with(tree, registry__up="from upgrader.core.errors import UpgraderError\n")
    assert any("registry may not import upgrader.core" in v for v in bad)


def test_compat_stays_off_the_registry_and_the_runtimes(tree: dict[str, str]) -> None:
    bad = _with(tree, upgrader__compat__odd="import faiss\n")
    assert "upgrader.compat.odd reaches faiss: upgrader.compat.odd -> faiss" in bad


def test_the_schema_and_session_stay_inside_the_registry(tree: dict[str, str]) -> None:
    bad = _with(tree, upgrader__services__raw="from registry.db import UnitOfWork\n")
    assert any("only registry/ uses its schema and session" in v for v in bad)


def test_the_uis_reach_training_only_lazily_through_the_pipeline(tree: dict[str, str]) -> None:
    eager = _with(tree, tui__eager="from upgrader.training.pipeline import train_and_register\n")
    assert any("tui.eager:1 imports upgrader.training.pipeline.train_and_register: the UIs reach training" in v
               for v in eager)
    loop = _with(tree, upgrader__cli__loop="def f():\n    from upgrader.training.loop import train_generation\n")
    assert any("upgrader.cli.loop:2" in v and "only through upgrader.training.pipeline" in v for v in loop)
    assert not [v for v in _with(tree, tui__ok="def f():\n    from upgrader.training import pipeline\n")
                if v.startswith("tui.ok")]
    sql = _with(tree, tui__sql="import sqlalchemy\n")
    assert any("tui.sql:1 imports sqlalchemy: the UIs import no sqlalchemy" in v for v in sql)
