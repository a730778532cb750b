"""What the gate commands say on a new user's first workspace (issue 16), on both registry backends:
the self-test a refusal quotes is the one `matrix` and `generations` show (a percentage with one
decimal, its class set named); `matrix` says n/a, not nan, and names the generation set; `verify` of
a first generation says there is nothing to compare it against and what it checked instead;
`gallery add` reports what a per-class cap could not get, in text and in --json.

No training: two untrained small CNNs exported to ONNX stand in for generations, on a small .npz of
ten classes (28x28) whose held-out gallery split init draws.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.data.backends import BACKENDS, database_url


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two untrained small CNNs (K = 16) exported to ONNX: they embed, and disagree with each other."""
    import torch

    from upgrader.training.export import export_onnx
    from upgrader.training.models import build_model

    folder = tmp_path_factory.mktemp("untrained")
    for seed, name in enumerate(("u1", "u2"), start=1):
        torch.manual_seed(seed)
        export_onnx(build_model("small_cnn", 16).eval(), folder / f"{name}.onnx", metadata={"generation_name": name})
    return folder


@pytest.fixture(params=BACKENDS)
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """An initialised workspace on a 10-class .npz (30 images a class), no generation yet."""
    from upgrader.data.readers import save_npz
    from upgrader.services.workspace_init import init_workspace

    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(10), 30)
    images = (rng.random((labels.size, 28, 28, 1)) * 60 + labels[:, None, None, None] * 19).astype(np.uint8)
    save_npz(tmp_path / "own.npz", images, labels)
    with database_url(request.param) as url:
        home = tmp_path / "ws"
        with init_workspace(home, dataset=str(tmp_path / "own.npz"), num_classes=16, db_url=url):
            pass
        yield home


def _import(home: Path, artifacts: Path, name: str, kind: str) -> None:
    from upgrader.services.registration import import_artifact
    from upgrader.services.workspace import open_workspace

    with open_workspace(home) as ws:
        import_artifact(ws, artifacts / f"{name}.onnx", name=name, kind=kind)


def test_matrix_of_a_workspace_without_generations_says_n_a_and_names_the_set(invoke, fresh: Path) -> None:
    res = invoke("matrix", home=fresh)
    assert res.exit_code == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert "nan" not in out.lower()
    assert "AC n/a AM n/a over no generations (none registered, or all rejected)" in out
    body = invoke("matrix", "--json", home=fresh).json()
    assert (body["ac"], body["am"], body["selection"]) == (None, None, "default")


def test_verify_of_a_first_generation_says_there_is_nothing_to_compare_and_what_it_checked(
    invoke, fresh: Path, untrained: Path
) -> None:
    _import(fresh, untrained, "u1", "initial")
    res = invoke("verify", "u1", home=fresh)
    assert res.exit_code == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert "┏" not in res.stdout  # no empty checks table
    assert ("nothing to compare u1 against: no other generation has gallery items and none is production, so there "
            "is no compatibility or improvement check to make") in out
    shown = invoke("generations", "--json", home=fresh).json()[0]["self_test"]
    assert re.search(rf"checked instead: its artifact matches the registered sha256 [0-9a-f]{{12}}\.\.\.; its "
                     rf"self-test on the classes it learnt, template top-1 {100 * shown:.1f}% \(what `matrix` and "
                     r"`generations` show\)", out), out
    # With one generation the matrix has its averages: AC 1 (T = 1) and AM its self-test, over that set.
    assert f"AC 1.000 AM {100 * shown:.1f} % over generations 1 (every one not rejected)" in " ".join(
        invoke("matrix", home=fresh).stdout.split())


def test_gallery_add_reports_the_shortfall_and_a_refusal_quotes_the_matrix_self_test(
    invoke, fresh: Path, untrained: Path
) -> None:
    _import(fresh, untrained, "u1", "initial")
    assert invoke("promote", "u1", home=fresh).exit_code == 0
    text = invoke("gallery", "add", "--classes", "0-1", "--per-class", "100", home=fresh)
    assert text.exit_code == 0, text.stderr
    held = invoke("gallery", "stats", "--json", home=fresh).json()["total"]
    per = held // 2
    words = (f"note: {held} of the 200 items asked for (2 classes x 100): class '0' has only {per} held-out items, "
             f"class '1' has only {per} held-out items")
    assert words in " ".join(text.stdout.split())
    body = invoke("gallery", "add", "--classes", "2", "--per-class", "100", "--json", home=fresh).json()
    assert body["shortfall"] == {"2": per} and any("class '2' has only" in n for n in body["notes"])

    _import(fresh, untrained, "u2", "replacement")
    refused = invoke("promote", "u2", home=fresh)
    assert refused.exit_code == 3
    diagonal = invoke("matrix", "--json", home=fresh).json()["matrix"][0][0]
    table = {r["generation"]["name"]: r["self_test"] for r in invoke("generations", "--json", home=fresh).json()}
    assert diagonal == pytest.approx(table["u1"])
    # The refusal quotes gen 1's self-test as the matrix and the lineage table print it, on its classes.
    assert f"<= self-test of gen 1 {100 * table['u1']:.1f}% on every probe class" in " ".join(refused.stderr.split())
    assert not re.search(r"self-test of gen 1 0\.\d{3}", refused.stderr)
