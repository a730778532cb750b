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
        (("train", "--classes", "0-3", "--method", "ce", "--own-negatives"),
         "error: --own-negatives changes the compatibility loss of hoc and hoc-paper; method 'ce' has none"),
    ]
    for args, message in cases:
        res = invoke(*args, home=empty_ws)
        assert res.exit_code == 2, (args, res.stderr)
        assert message in " ".join(res.stderr.split()), (args, res.stderr)
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


def test_a_folder_a_killed_run_left_is_cleared_and_reused(invoke, empty_ws: Path) -> None:
    leftover = empty_ws / "artifacts" / "taken"
    leftover.mkdir(parents=True)
    (leftover / "model.onnx.partial").write_bytes(b"half an export")
    res = invoke("train", "--classes", "0-1", "--name", "taken", "--epochs", "1", "--per-class", "8", "--json",
                 home=empty_ws)
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in leftover.iterdir()) == ["checkpoint.pt", "memory.npz", "model.onnx"]


def _error_lines(stderr: str) -> list[str]:
    """stderr without the training progress bar's line: what the error itself printed."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("training ")]


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.name.startswith("registry.db")}


@pytest.mark.parametrize("name", ["../../x", "/tmp/upgrader-abs-name", "a/b", ".hidden", "..", "[/]x", "x" * 101, "42"])
def test_a_name_outside_the_pattern_is_refused_before_anything_is_written(
    invoke, seeded: Path, tmp_path: Path, name: str
) -> None:
    artifact = seeded / "artifacts" / "g2" / "model.onnx"
    before = _tree(seeded.parent)  # the workspace and the folder around it ("../../x" would land there)
    for args in (("register", str(artifact), "--name", name),
                 ("train", "--classes", "6", "--finetune", "--epochs", "1", "--name", name),
                 ("replace", "--arch", "small_cnn", "--classes", "6", "--epochs", "1", "--name", name)):
        res = invoke(*args, home=seeded)
        assert res.exit_code == 2, (args, res.stderr)
        assert "[A-Za-z0-9][A-Za-z0-9._-]{0,99}" in res.stderr and "(--name)" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert _tree(seeded.parent) == before
    assert not Path("/tmp/upgrader-abs-name").exists()


def test_generation_dir_refuses_a_folder_outside_the_artifacts(seeded: Path, tmp_path: Path) -> None:
    with open_workspace(seeded) as ws:
        assert ws.generation_dir("g2") == (seeded / "artifacts" / "g2").resolve()
        (ws.artifacts_dir / "link").symlink_to(tmp_path)  # a name that is fine, a folder that is not
        with pytest.raises(InvalidRequest, match="outside"):
            ws.generation_dir("link")


def _rewired(src: Path, dest: Path, defect: str) -> Path:
    """A copy of an exported artifact whose output is made degenerate by nodes added after it."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(src))
    graph = proto.graph
    out = graph.output[0]
    for node in graph.node:
        node.output[:] = ["raw" if o == out.name else o for o in node.output]
    dim = out.type.tensor_type.shape.dim[1].dim_value

    def const(name: str, value) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    if defect == "zeros":
        graph.node.append(helper.make_node("Mul", ["raw", const("z", np.zeros((1, dim), np.float32))], [out.name]))
    elif defect == "nan":
        graph.node.append(helper.make_node("Mul", ["raw", const("n", np.full((1, dim), np.nan, np.float32))], [out.name]))
    elif defect == "constant":
        unit = np.zeros((1, dim), np.float32)
        unit[0, 0] = 1.0
        graph.node.append(helper.make_node("Mul", ["raw", const("z", np.zeros((1, dim), np.float32))], ["zeroed"]))
        graph.node.append(helper.make_node("Add", ["zeroed", const("u", unit)], [out.name]))
    elif defect == "unnormalised":
        graph.node.append(helper.make_node("Mul", ["raw", const("two", np.full((1, dim), 2.0, np.float32))], [out.name]))
    elif defect == "width":
        graph.node.append(helper.make_node(
            "Slice", ["raw", const("s", np.array([0], np.int64)), const("e", np.array([dim - 1], np.int64)),
                      const("a", np.array([1], np.int64))], [out.name]))
        out.type.tensor_type.shape.dim[1].dim_value = dim - 1
    onnx.save(proto, str(dest))
    return dest


@pytest.mark.parametrize("defect, words", [
    ("zeros", "all-zero output"),
    ("nan", "non-finite output"),
    ("constant", "the same output for every image"),
    ("unnormalised", "not L2-normalised"),
    ("width", "outputs 14 values per image but its metadata says embedding_dim 15"),
])
def test_a_degenerate_artifact_is_refused_at_registration_and_leaves_nothing(
    invoke, seeded: Path, tmp_path: Path, defect: str, words: str
) -> None:
    bad = _rewired(seeded / "artifacts" / "g2" / "model.onnx", tmp_path / f"{defect}.onnx", defect)
    before = _tree(seeded)
    res = invoke("register", str(bad), "--name", f"bad-{defect}", home=seeded)
    assert res.exit_code == 1, res.stderr
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert _tree(seeded) == before
    assert [r["generation"]["name"] for r in invoke("generations", "--json", home=seeded).json()] == ["g1", "g2", "g3-er"]
    for read in (("verify", "g2"), ("matrix",), ("status",)):
        assert invoke(*read, home=seeded).exit_code in (0, 3), read


def test_register_reuses_a_folder_a_killed_run_left(invoke, seeded: Path) -> None:
    leftover = seeded / "artifacts" / "imported"
    leftover.mkdir()
    (leftover / ".model.onnx.tmp").write_bytes(b"half a copy")
    res = invoke("register", str(seeded / "artifacts" / "g2" / "model.onnx"), "--name", "imported", home=seeded)
    assert res.exit_code == 0, res.stderr
    assert [p.name for p in leftover.iterdir()] == ["model.onnx"]
    taken = invoke("register", str(seeded / "artifacts" / "g2" / "model.onnx"), "--name", "imported", home=seeded)
    assert taken.exit_code == 2 and "exists already" in taken.stderr
    assert (leftover / "model.onnx").is_file()  # the refusal left the registered generation's folder alone


def test_export_refuses_production_before_it_touches_the_artifact(invoke, seeded: Path) -> None:
    onnx = seeded / "artifacts" / "g1" / "model.onnx"
    before = (onnx.read_bytes(), onnx.stat().st_mtime_ns)
    res = invoke("export", "g1", home=seeded)
    assert res.exit_code == 2 and "serves production" in res.stderr, res.stderr
    assert (onnx.read_bytes(), onnx.stat().st_mtime_ns) == before
    assert sorted(p.name for p in onnx.parent.iterdir()) == ["checkpoint.pt", "memory.npz", "model.onnx"]


def test_export_re_embeds_the_probe_set_with_the_new_artifact(seeded: Path, monkeypatch) -> None:
    import numpy as np

    import upgrader.training.pipeline as pipeline
    from upgrader.runtime.embedder import Embedder

    # The re-export produces another model (g3-er's weights stand in for a changed exporter).
    other = pipeline.load_checkpoint(seeded / "artifacts" / "g3-er" / "checkpoint.pt")
    monkeypatch.setattr(pipeline, "load_checkpoint", lambda path, **kw: other)
    with open_workspace(seeded) as ws:
        reg = ws.registry
        old = reg.get_probe_embeddings("g2", "query")[1]
        gen = pipeline.reexport(ws, "g2")
        assert gen.status == "candidate" and reg.has_probe_embeddings(gen.id)
        actual = Embedder(ws.resolve(gen.onnx_path)).embed(reg.probe_set("query").images)
        stored = reg.get_probe_embeddings("g2", "query")[1]
        assert np.allclose(stored, actual, atol=1e-5)  # the gate judges the model that is on disk
        assert float((stored * old).sum(1).mean()) < 0.9
        assert not [e for e in reg.evaluations([gen.id]) if gen.id in (e.query_gen, e.gallery_gen)]


def test_a_checkpoint_that_changed_since_training_is_refused(invoke, seeded: Path) -> None:
    ckpt = seeded / "artifacts" / "g2" / "checkpoint.pt"
    ckpt.write_bytes((seeded / "artifacts" / "g3-er" / "checkpoint.pt").read_bytes())
    onnx = seeded / "artifacts" / "g2" / "model.onnx"
    before = onnx.read_bytes()
    for args in (("export", "g2"), ("train", "--classes", "6", "--parent", "g2", "--epochs", "1", "--name", "g9")):
        res = invoke(*args, home=seeded)
        assert res.exit_code == 1, (args, res.stderr)
        assert f"checkpoint of generation g2 at {ckpt}" in res.stderr and "restore the original file" in res.stderr
        assert len(_error_lines(res.stderr)) == 1
    assert onnx.read_bytes() == before and not (seeded / "artifacts" / "g9").exists()


def test_an_object_array_memory_is_a_one_line_error(invoke, seeded: Path) -> None:
    import numpy as np

    memory = seeded / "artifacts" / "g1" / "memory.npz"
    np.savez(memory, images=np.array([object(), object()], dtype=object), vertices=np.array([0, 1]))
    res = invoke("train", "--classes", "6", "--parent", "g1", "--epochs", "1", "--name", "g9", home=seeded)
    assert res.exit_code == 1, res.stderr
    assert f"{memory}: not a readable rehearsal memory (it holds object arrays)" in res.stderr
    assert len(_error_lines(res.stderr)) == 1 and not (seeded / "artifacts" / "g9").exists()


def test_a_reversed_class_range_says_it_is_reversed(invoke, empty_ws: Path) -> None:
    res = invoke("train", "--classes", "5-4", home=empty_ws)
    assert res.exit_code == 2
    assert "class range '5-4' is reversed; write it low to high (4-5)" in res.stderr, res.stderr
    assert "outside" not in res.stderr


def test_a_refusal_after_the_checks_prints_no_progress_bar_first(invoke, empty_ws: Path) -> None:
    res = invoke("train", "--classes", "0", "--per-class", "1", home=empty_ws)  # one image: nothing to train
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        "error: only 1 training images for classes ['T-shirt/top']; give more data"]


def test_json_errors_are_a_json_object_on_stdout_too(invoke, empty_ws: Path, tmp_path: Path) -> None:
    usage = invoke("train", "--classes", "5-4", "--json", home=empty_ws)
    assert usage.exit_code == 2 and usage.json() == {
        "error": "class range '5-4' is reversed; write it low to high (4-5)", "exit_code": 2}
    assert "error: class range '5-4' is reversed" in usage.stderr
    missing = invoke("status", "--json", home=tmp_path / "nowhere")
    assert missing.exit_code == 1 and missing.json()["exit_code"] == 1 and "upgrader init" in missing.json()["error"]


def test_steps_and_epochs_are_one_choice_and_augmentations_are_named(invoke, empty_ws: Path) -> None:
    both = invoke("train", "--classes", "0-1", "--steps", "10", "--epochs", "1", home=empty_ws)
    assert both.exit_code == 2 and "give --steps or --epochs, not both" in both.stderr
    for flag, value in (("--steps", "0"), ("--batch-size", "1")):
        res = invoke("train", "--classes", "0-1", flag, value, home=empty_ws)
        assert res.exit_code == 2 and f"{flag} must be at least" in res.stderr, res.stderr
    mirror = invoke("train", "--classes", "0-1", "--augment", "mirror", home=empty_ws)
    assert mirror.exit_code == 2
    assert "unknown augmentation 'mirror'; use one of none, crop, crop+flip (--augment)" in mirror.stderr
    assert not list((empty_ws / "artifacts").glob("*/checkpoint.pt"))


def test_a_run_sized_in_steps_records_its_length_and_augmentation(invoke, empty_ws: Path) -> None:
    res = invoke("train", "--classes", "0-1", "--steps", "3", "--per-class", "40", "--augment", "none", "--json",
                 home=empty_ws)
    assert res.exit_code == 0, res.stderr
    out = res.json()
    cfg = out["generation"]["train_config"]
    assert (cfg["steps"], cfg["batch_size"], cfg["augment"], cfg["augmentation"]) == (3, 16, False, "none")
    assert out["length"]["steps"] == 3 and out["generation"]["metrics"]["steps"] == 3
    assert out["generation"]["metrics"]["final_accuracy"] == out["final_accuracy"]
    fashion = invoke("train", "--classes", "2", "--steps", "2", "--per-class", "40", "--json", home=empty_ws).json()
    assert fashion["augment"] == "crop+flip"  # the default for Fashion-MNIST is unchanged
