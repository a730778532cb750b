"""A new user's own data with the defaults (issue 16): the README's "Your own data" tour, run as it is
written, on a small synthetic .npz, passes the gate; and what it relies on: probe sizes chosen from the
smallest class, a held-out gallery split that training never touches, numbers that agree, tables
that fit 80 and 100 columns.

The dataset is made here with a fixed seed: ten classes of 28x28 grey images, each class a glyph of
its own drawn at a random place over clutter made of pieces of the other glyphs, so a small CNN has
something to learn and more training keeps paying (about 1,000 images; class 3 is the smallest).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from typer.testing import CliRunner

from upgrader.cli import app
from upgrader.data.readers import save_npz

README = Path(__file__).resolve().parents[2] / "README.md"


class CliResult:
    """Exit code and both output streams of one CLI run."""

    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr

    def json(self):  # type: ignore[no-untyped-def]
        return json.loads(self.stdout)


def run_cli(*args: str, home: Path | None = None) -> CliResult:
    """The CLI in-process (module-scoped fixtures cannot take the function-scoped ``invoke``)."""
    res = CliRunner().invoke(app, [*args, *(["--home", str(home)] if home is not None else [])], catch_exceptions=False)
    return CliResult(res.exit_code, res.stdout, res.stderr)
PER_CLASS = {c: 100 for c in range(10)} | {3: 90}
SIZE, GLYPH = 28, 9
#: How the classes differ (share of a glyph's cells unlike a shared base) and how each image strays from
#: its class's glyph (share of its cells flipped): what keeps a class from being recognised at a glance.
CLASS_DIFFERENCE, IMAGE_FLIPS = 0.1, 0.15


def synthetic_images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 28, 28, 1], labels [N]): a glyph per class at a random offset, over clutter."""
    shapes = np.random.default_rng(1234)
    base = shapes.random((GLYPH, GLYPH)) < 0.45
    glyphs = [base ^ (shapes.random((GLYPH, GLYPH)) < CLASS_DIFFERENCE) for _ in PER_CLASS]
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, count in PER_CLASS.items():
        for _ in range(count):
            glyph = (glyphs[label] ^ (rng.random((GLYPH, GLYPH)) < IMAGE_FLIPS)).astype(np.float32)
            img = np.zeros((SIZE, SIZE), np.float32)
            for _ in range(4):  # clutter: 4x4 pieces of any glyph
                piece = glyphs[rng.integers(len(glyphs))].astype(np.float32)
                y, x = rng.integers(0, SIZE - 4, 2)
                oy, ox = rng.integers(0, GLYPH - 4, 2)
                img[y:y + 4, x:x + 4] = np.maximum(img[y:y + 4, x:x + 4], 0.6 * piece[oy:oy + 4, ox:ox + 4])
            y, x = np.clip((SIZE - GLYPH) // 2 + rng.integers(-6, 7, 2), 0, SIZE - GLYPH)
            img[y:y + GLYPH, x:x + GLYPH] = np.maximum(img[y:y + GLYPH, x:x + GLYPH], glyph)
            img = img * rng.uniform(140, 255) + rng.normal(0, 30, (SIZE, SIZE))
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(label)
    order = rng.permutation(len(labels))
    return np.stack(images)[order][..., None], np.array(labels)[order]


def readme_tour() -> list[list[str]]:
    """The commands of the README's "Your own data" npz block, as argument lists (without `upgrader`)."""
    section = README.read_text().split("## Your own data", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("upgrader "):
            commands.append(shlex.split(line)[1:])
    return commands


def readme_home() -> str:
    section = README.read_text().split("## Your own data", 1)[1]
    found = re.search(r"export UPGRADER_HOME=(\S+)", section)
    assert found, "the README's own-data block sets UPGRADER_HOME"
    return found.group(1)


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CliResult]:
    """The README tour run once, as written, in a folder holding own.npz; its results by command."""
    where = tmp_path_factory.mktemp("own")
    images, labels = synthetic_images()
    save_npz(where / "own.npz", images, labels)
    results: dict[str, CliResult] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(where)
        mp.setenv("UPGRADER_HOME", readme_home())
        for args in readme_tour():
            res = run_cli(*args)
            results[" ".join(args)] = res
            assert res.exit_code == 0, (args, res.stdout, res.stderr)
    results["home"] = CliResult(0, str((where / readme_home()).resolve()), "")
    return results


@pytest.fixture
def home(tour: dict[str, CliResult], tmp_path: Path) -> Path:
    """A private copy of the toured workspace (the dataset stays where the tour left it)."""
    return Path(shutil.copytree(tour["home"].stdout, tmp_path / "ws"))


def _result(tour: dict[str, CliResult], prefix: str, nth: int = 0) -> CliResult:
    return [r for cmd, r in tour.items() if cmd.startswith(prefix)][nth]


def test_the_readme_tour_on_own_data_passes_the_gate_with_default_flags(tour: dict[str, CliResult]) -> None:
    assert [c[0] for c in readme_tour()] == ["init", "train", "promote", "gallery", "train", "promote", "status"]
    home = Path(tour["home"].stdout)
    moves = run_cli("history", "--json", home=home).json()
    assert [(m["to_gen"], m["forced"]) for m in moves] == [(1, False), (2, False)]  # both by the gate's word
    rows = {r["generation"]["name"]: r for r in run_cli("generations", "--json", home=home).json()}
    assert rows["g2-finetune-small_cnn-hoc"]["is_production"]
    assert rows["g1-initial-small_cnn-hoc"]["self_test"] > 0.8  # the defaults give a useful model
    for name, steps in (("g1-initial-small_cnn-hoc", 500), ("g2-finetune-small_cnn-hoc", 1000)):
        cfg = rows[name]["generation"]["train_config"]  # sized to the data: 100 steps a class, new and rehearsed
        assert (cfg["steps"], cfg["batch_size"], cfg["augmentation"], cfg["memory_per_class"]) == (steps, 32, "crop", 1000)


def test_init_sizes_the_probe_from_the_smallest_class_and_says_how_to_change_it(tour: dict[str, CliResult]) -> None:
    status = run_cli("status", "--json", home=Path(tour["home"].stdout)).json()
    assert status["probe_sizing"].startswith("probe set: 9 queries + 9 gallery items per class, chosen from")
    assert status["gallery_split_kind"] == "held-out"
    out = " ".join(_result(tour, "init").stdout.split())
    assert ("probe set: 9 queries + 9 gallery items per class, chosen from the smallest class ('3', 90 items); "
            "change with --probe-queries/--probe-gallery") in out
    assert "gallery split: 158 items held out at init (14-16 per class, never trained on)" in out


def test_a_probe_too_large_for_a_class_names_its_true_count_and_the_flags(tour: dict[str, CliResult], tmp_path: Path) -> None:
    npz = Path(tour["home"].stdout).parent / "own.npz"
    res = run_cli("init", "--dataset", str(npz), "--probe-queries", "50", "--probe-gallery", "50", home=tmp_path / "ws")
    assert res.exit_code == 2
    assert ("class '3' has 90 items, fewer than the 100 the probe set asks for (50 queries + 50 gallery "
            "items per class), and 2 more must stay for the gallery and training; ask for at most 44 of each, or "
            "leave the sizes out to have them chosen from the smallest class (--probe-queries/--probe-gallery)"
            ) in " ".join(res.stderr.split())
    assert not (tmp_path / "ws").exists()


def _held_out(home: Path) -> set[str]:
    return set(json.loads((home / "splits.json").read_text())["gallery"]["digests"])


def test_the_held_out_split_is_never_trained_on_nor_probed_and_is_what_the_gallery_gets(home: Path) -> None:
    from upgrader.data.dataset import pixel_digests
    from upgrader.data.readers import load_npz
    from upgrader.services.workspace import open_workspace
    from upgrader.services.workspace_init import probe_pixels

    held = _held_out(home)
    with open_workspace(home) as ws:
        probe = set(pixel_digests(probe_pixels(ws)))
        gens = {g.name: g for g in ws.registry.list_generations()}
        gallery = ws.registry.gallery_sources()
        ds = load_npz(ws.config.dataset)
    assert len(held) == 158 and not held & probe
    digests = np.array(ds.item_digests())
    first = np.isin(ds.labels, range(5))
    g1 = gens["g1-initial-small_cnn-hoc"].metrics
    # every image of classes 0-4 is a probe item, a held-out item or a training image, never two of them
    assert (g1["probe_items_left_out"], g1["heldout_items_left_out"]) == (90, int(np.isin(digests[first], list(held)).sum()))
    assert g1["train_images"] + g1["probe_items_left_out"] + g1["heldout_items_left_out"] == int(first.sum())
    # the gallery holds exactly the held-out items of classes 0-4, named as held-out items
    assert len(gallery) == g1["heldout_items_left_out"]
    assert all(item.external_id.startswith("heldout-") for item in gallery)
    stored = {item.source_uri.rsplit("#", 1)[1] for item in gallery}
    assert stored == set(digests[first]) & held


def test_gallery_add_reports_what_a_per_class_cap_could_not_get_and_refuses_an_unknown_split(home: Path) -> None:
    from upgrader.core.errors import InvalidRequest
    from upgrader.services.gallery import add_dataset
    from upgrader.services.workspace import open_workspace

    with open_workspace(home) as ws:
        done = add_dataset(ws, ws.config.dataset, classes="2-4", per_class=16, skip_other_generations=True)  # a resume
        assert (done.added, done.skipped, done.shortfall) == (0, 46, {"3": 14})
        assert done.notes == ("46 of the 48 items asked for (3 classes x 16): class '3' has only 14 held-out items",)
        train = add_dataset(ws, ws.config.dataset, split="train", classes="5", per_class=3)
        assert train.added == 3 and "generations train on them" in train.notes[0]
        images, labels = synthetic_images(seed=5)
        save_npz(home / "new-photos.npz", images[:12], labels[:12])  # images of the same kind, not the workspace's
        other = add_dataset(ws, str(home / "new-photos.npz"))
        assert other.added == 12 and "has no test split and init held none of its items out" in other.notes[0]
        with pytest.raises(InvalidRequest, match="unknown split 'validation'") as refused:
            add_dataset(ws, ws.config.dataset, split="validation")
        assert refused.value.subject == "split"
        ids = ws.registry.load_gallery().external_ids
    assert sum(e.startswith("train-") for e in ids) == 3 and sum(e.startswith("test-") for e in ids) == 12


def test_a_workspace_made_before_held_out_splits_keeps_working_and_says_it_has_none(home: Path) -> None:
    from upgrader.services.gallery import add_dataset
    from upgrader.services.workspace import open_workspace

    (home / "splits.json").unlink()  # what a workspace made before the record looks like
    status = run_cli("status", home=home)
    assert status.exit_code == 0
    assert "none (the workspace was made before init drew one)" in " ".join(status.stdout.split())
    assert run_cli("status", "--json", home=home).json()["gallery_split_kind"] == "none"
    with open_workspace(home) as ws:
        done = add_dataset(ws, ws.config.dataset, classes="9", per_class=5)
    assert done.added == 5 and "no held-out gallery split" in done.notes[0]


def test_the_progress_bar_and_the_summary_give_one_training_accuracy(tour: dict[str, CliResult]) -> None:
    for nth in (0, 1):
        res = _result(tour, "train", nth)
        bar = re.findall(r"acc (\d+\.\d)%", res.stderr)
        summary = re.search(r"train acc (\d+\.\d)% \(last (\d+) steps\)", " ".join(res.stdout.split()))
        assert bar and summary, (res.stdout, res.stderr)
        assert bar[-1] == summary.group(1)


def test_an_under_trained_warning_quotes_the_self_test_the_matrix_shows(home: Path) -> None:
    from upgrader.cli.common import warning_line
    from upgrader.services.status import generation_rows
    from upgrader.services.training_plan import TrainingLength, undertrained_warnings
    from upgrader.services.workspace import open_workspace

    length = TrainingLength(500, 32, 10, "steps", 320)
    with open_workspace(home) as ws:
        g1, g2 = ws.registry.list_generations()
        table = {r.generation.id: r.self_test for r in generation_rows(ws)}
        still = undertrained_warnings(ws, g1, None, length, 0.60, 0.80, 10)
        # g1 as if it were g2's child: its self-test on g2's classes it learnt is below g2's there?
        below = undertrained_warnings(ws, g2, g1, length, None, 0.99, 10)
    assert [w.reason for w in still] == ["still-rising"]
    assert warning_line(still[0]) == ("training accuracy was still rising at the end (60.0% -> 80.0% over the last 20 "
                                      "steps): it looks under-trained; train longer, e.g. --steps 1000")
    for w in below:  # g2 below g1 on g1's classes would be said with g1's own self-test, the table's number
        assert w.details["parent_value"] == f"{100 * table[g1.id]:.1f}"


def test_a_mistyped_generation_gets_a_suggestion(home: Path) -> None:
    res = run_cli("promote", "g2-finetune-small_cnn-ho", home=home)
    assert res.exit_code == 2
    assert "; did you mean g2-finetune-small_cnn-hoc" in res.stderr


def test_known_classes_are_said_before_a_fine_tune_and_not_refused(home: Path) -> None:
    from upgrader.services.training_plan import TrainRequest, request_warnings, validate_request
    from upgrader.services.workspace import open_workspace

    with open_workspace(home) as ws:
        req = TrainRequest(kind="finetune", classes=("3-6",))
        parent, _, _ = validate_request(ws, req)
        words = [w.message for w in request_warnings(ws, req, parent)]
    assert words == ["classes '3', '4', '5', '6' are known to g2-finetune-small_cnn-hoc already: they train again "
                     "as new data, next to their rehearsal memory"]


@pytest.mark.parametrize("width", [80, 100])
def test_generations_and_history_never_cut_what_a_user_types(home: Path, width: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from upgrader.cli import common

    monkeypatch.setattr(common.console, "width", width)
    names = [r["generation"]["name"] for r in run_cli("generations", "--json", home=home).json()]
    for command in ("generations", "history"):
        out = run_cli(command, home=home).stdout
        lines = out.splitlines()
        assert all(len(line) <= width for line in lines), (command, out)
        assert "…" not in out, out
        for name in names:  # each name whole on one line, so it can be copied as typed
            assert any(name in line for line in lines), (command, name, out)
    table = run_cli("generations", home=home).stdout
    assert "self-test %" in table and ("left out at" in table) == (width < 120)
