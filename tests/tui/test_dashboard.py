"""The dashboard driven as a person would (Textual Pilot) on real workspaces."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from pilot import HANG_SECONDS, frozen_time, rows_of, select_generation, settle, text_of, wait_until
from textual.command import CommandList
from textual.widgets import DataTable, Input

from tui.app import DashboardApp
from tui.modals import ConfirmModal, TrainFormModal
from upgrader.compat.gate import GateConfig
from upgrader.core.vocabulary import ARCHITECTURES
from upgrader.services.dashboard_model import alias_history
from upgrader.services.workspace import open_workspace

ROOT = Path(__file__).resolve().parents[2]


def production_of(home: Path) -> str | None:
    """Production as the services see it (not as the dashboard shows it)."""
    with open_workspace(home) as ws:
        moves = alias_history(ws)
    return moves[-1].to_name if moves else None


def notes(app: DashboardApp) -> list[tuple[str, str]]:
    """(severity, message) of every notification shown so far."""
    return [(n.severity, n.message) for n in app._notifications]


async def test_views_show_the_workspace(snapshot_ws: Path) -> None:
    app = DashboardApp(snapshot_ws, time_format=frozen_time)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        rows = rows_of(app.query_one("#lineage", DataTable))
        assert [r[0] for r in rows] == ["1", "2", "3"]
        assert rows[1][1] == "└─★ g2-finetune" and rows[1][2].strip() == "production"  # marked, child of g1
        assert rows[2][1].strip() == "└─g3-replacement" and rows[2][2].strip() == "rejected"
        assert "production: g2-finetune" in app.sub_title

        await pilot.press("2")
        await settle(pilot)
        matrix = rows_of(app.query_one("#matrix", DataTable))
        assert len(matrix) == 2 and len(matrix[0]) == 3  # label + one column per generation (g3 was rejected)
        assert "✗" in matrix[1][1]  # g2 queries on g1's gallery fail the criterion
        assert "◆" in matrix[0][1]
        summary = " ".join(text_of(app.query_one("#matrix-summary")).split())
        assert "AC" in summary and "AM" in summary and "over generations 1, 2, the set `upgrader matrix` shows" in summary
        await pilot.press("l")  # live generations only: g1 and g2 wrote the gallery
        await settle(pilot)
        assert len(rows_of(app.query_one("#matrix", DataTable))) == 2
        assert "over the live generations 1, 2" in " ".join(text_of(app.query_one("#matrix-summary")).split())

        await pilot.press("3")
        await settle(pilot)
        chart = text_of(app.query_one("#gallery-chart"))
        assert "items 30" in chart and "66.7 %" in chart  # 20 of 30 items still on g1
        assert "1 g1-initial" in chart and "2 g2-finetune ★" in chart

        await pilot.press("4")
        await settle(pilot)
        history = rows_of(app.query_one("#history-view", DataTable))
        assert history[0][1] == "g1-initial\n→ g2-finetune" and history[0][5] == "alice"
        assert history[0][2].strip() == "FORCED" and history[0][3] == "adds classes 4-5"
        assert history[1][1] == "—\n→ g1-initial"
        assert not [n for n in notes(app) if n[0] == "error"]


async def test_selecting_a_generation_shows_its_details(snapshot_ws: Path) -> None:
    app = DashboardApp(snapshot_ws, time_format=frozen_time)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        details = text_of(app.query_one("#details"))
        assert details.startswith("g2-finetune")  # production is highlighted on start
        await pilot.press("down")
        await settle(pilot)
        details = text_of(app.query_one("#details"))
        with open_workspace(snapshot_ws) as ws:
            g3 = ws.registry.get_generation("g3-replacement")
        assert details.startswith("g3-replacement")
        assert "parent            g2-finetune" in details
        assert g3.onnx_sha256 in details and "artifacts/g3-replacement/model.onnx" in details
        assert "imported_from: g3-replacement.onnx" in details  # training config
        assert "embedding_dim: 15" in details  # ONNX metadata
        assert "gate reports (1, newest first)" in details and "REFUSED" in details
        assert "compatibility: gen g3-replacement queries on gen g1-initial gallery" in details


async def test_promoting_an_incompatible_candidate_is_refused(snapshot_ws: Path) -> None:
    app = DashboardApp(snapshot_ws, time_format=frozen_time)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await select_generation(pilot, "g3-replacement")
        await pilot.press("p")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmModal)
        body = text_of(app.screen.query_one("#dialog-text"))
        assert "Promotion of g3-replacement refused by the compatibility gate" in body
        assert "Production stays on g2-finetune" in body and "✗ compatibility" in body
        assert not app.screen.query("#confirm")  # nothing to confirm: only Close
        assert ("error", "Promotion of g3-replacement refused: production stays on g2-finetune.") in notes(app)
        await pilot.press("escape")
        await settle(pilot)
        assert app.snapshot.production.name == "g2-finetune"
    assert production_of(snapshot_ws) == "g2-finetune"


async def test_promoting_a_compatible_candidate_moves_production(fresh_ws: Path) -> None:
    app = DashboardApp(fresh_ws, time_format=frozen_time)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await select_generation(pilot, "g2-finetune")
        await pilot.press("p")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmModal)
        body = text_of(app.screen.query_one("#dialog-text"))
        assert "passed" in body and "production: g1-initial → g2-finetune" in body
        app.screen.query_one("#reason", Input).value = "better self-test"
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.production.name == "g2-finetune"
        await pilot.press("4")
        await settle(pilot)
        newest = rows_of(app.query_one("#history-view", DataTable))[0]
        assert newest[1] == "g1-initial\n→ g2-finetune" and newest[2] == "no" and newest[3] == "better self-test"
    assert production_of(fresh_ws) == "g2-finetune"


async def _fill_training_form(pilot, *, classes: str, epochs: str, per_class: str) -> None:
    app = pilot.app
    await pilot.press("n")  # a replacement: the imported generations have no checkpoint to fine-tune
    await wait_until(pilot, lambda: isinstance(app.screen, TrainFormModal), "the training form")
    form = app.screen
    form.query_one("#arch", Input).value = "small_cnn"
    form.query_one("#classes", Input).value = classes
    form.query_one("#epochs", Input).value = epochs
    form.query_one("#per_class", Input).value = per_class
    await pilot.click("#confirm")  # the request is checked in a worker, then the review opens
    await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal) or text_of(form.query_one("#form-error")).strip()
                     not in ("", "checking…"), "the form's check")
    assert isinstance(app.screen, ConfirmModal), text_of(form.query_one("#form-error"))


class HeldTraining:
    """The real trainer, held at its first progress report until the test releases it.

    The report reaches the panel first (the original callback runs), then the training thread
    waits on ``release``: what the test asserts about a running training cannot race its end.
    """

    def __init__(self, monkeypatch) -> None:  # type: ignore[no-untyped-def]
        from upgrader.training import pipeline  # what the dashboard's training action calls (torch)

        self.started = threading.Event()
        self.release = threading.Event()
        real = pipeline.train_and_register

        def train_and_register(ws, req, *, progress=None, cancel=None):  # type: ignore[no-untyped-def]
            def held(p) -> None:  # type: ignore[no-untyped-def]
                if progress is not None:
                    progress(p)
                self.started.set()
                if not self.release.wait(timeout=HANG_SECONDS):
                    raise TimeoutError("the test never released the training")

            return real(ws, req, progress=held, cancel=cancel)

        monkeypatch.setattr(pipeline, "train_and_register", train_and_register)


async def test_training_from_the_form_streams_progress_and_registers_a_candidate(fresh_ws: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    held = HeldTraining(monkeypatch)
    app = DashboardApp(fresh_ws, time_format=frozen_time)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        seen: list[tuple[int, int, float]] = []
        panel = app.query_one("#training")
        original = panel.update_progress
        panel.update_progress = lambda name, p: (seen.append((p.epoch, p.step, p.loss)), original(name, p))
        await _fill_training_form(pilot, classes="0-1", epochs="1", per_class="20")
        plan = text_of(app.screen.query_one("#dialog-text"))
        assert "train g3-replacement-small_cnn-hoc" in plan and "production does not move" in plan
        await pilot.click("#confirm")
        await wait_until(pilot, held.started.is_set, "the first progress report")
        assert panel.display and app.workers  # training runs in a worker ...
        assert "training g3-replacement-small_cnn-hoc" in text_of(panel.query_one("#train-status"))  # ... on screen ...
        await pilot.press("4")  # ... while the UI still answers
        await wait_until(pilot, lambda: app.query_one("#views").active == "history", "the history view")
        held.release.set()
        await settle(pilot)
        assert not panel.display
        assert seen and all(s[0] == 1 for s in seen)
        assert any("g3-replacement-small_cnn-hoc registered as a candidate" in m for _, m in notes(app))
        rows = rows_of(app.query_one("#lineage", DataTable))
        assert rows[-1][1].endswith("g3-replacement-small_cnn-hoc") and rows[-1][2].strip() == "candidate"
        assert app.query_one("#lineage", DataTable).cursor_row == len(rows) - 1  # the new one is highlighted


async def test_cancel_stops_training_and_writes_nothing(fresh_ws: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    held = HeldTraining(monkeypatch)
    app = DashboardApp(fresh_ws, time_format=frozen_time)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await _fill_training_form(pilot, classes="0-9", epochs="20", per_class="")
        await pilot.click("#confirm")
        await wait_until(pilot, held.started.is_set, "the first progress report")  # training is under way
        await pilot.press("x")
        held.release.set()  # the next step sees the cancel
        await settle(pilot)
        assert ("warning", "Training cancelled; nothing was written.") in notes(app)
        assert len(rows_of(app.query_one("#lineage", DataTable))) == 2
    assert not (fresh_ws / "artifacts" / "g3-replacement-small_cnn-hoc").exists()


async def test_service_errors_are_notifications(snapshot_ws: Path) -> None:
    app = DashboardApp(snapshot_ws, time_format=frozen_time)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("v")  # production is highlighted: there is nothing to verify it against
        await pilot.press("enter")
        await settle(pilot)
        assert any(s == "error" and "production already" in m for s, m in notes(app))
        await select_generation(pilot, "g1-initial")
        await pilot.press("b")  # roll back to g1: it cannot read the items g2 wrote
        await settle(pilot)
        assert "Rollback of production to g1-initial refused" in text_of(app.screen.query_one("#dialog-text"))
        assert any(s == "error" and "Rollback to g1-initial refused" in m for s, m in notes(app))
        await pilot.press("escape")
        await settle(pilot)
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, TrainFormModal), "the training form")
        app.screen.query_one("#classes", Input).value = "0-1"
        app.screen.query_one("#arch", Input).value = ""  # a replacement without an architecture
        await pilot.click("#confirm")
        form = app.screen
        await wait_until(pilot, lambda: "a replacement needs an architecture" in text_of(form.query_one("#form-error")),
                         "the refusal on the form")
        await settle(pilot)
        assert app.screen is form  # refused on the form itself, which stays open
        assert app.is_running
    assert production_of(snapshot_ws) == "g2-finetune"


async def test_refresh_picks_up_changes_made_elsewhere(snapshot_ws: Path) -> None:
    from upgrader.services.promotion import promote

    app = DashboardApp(snapshot_ws, time_format=frozen_time)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        with open_workspace(snapshot_ws) as ws:  # what `upgrader promote --force` in another terminal does
            promote(ws, "g3-replacement", force=True, reason="from the CLI", actor="bob")
        await pilot.press("r")
        await settle(pilot)
        assert app.snapshot.production.name == "g3-replacement"
        assert rows_of(app.query_one("#history-view", DataTable))[0][5] == "bob"


async def test_palette_themes_and_footer(snapshot_ws: Path) -> None:
    app = DashboardApp(snapshot_ws, time_format=frozen_time)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        for action in ("Verify selected generation", "Promote selected generation", "Roll back production",
                       "Fine-tune production", "Train a replacement", "Cancel training", "Refresh",
                       "Show compatibility matrix", "Toggle light / dark theme"):
            assert action in titles
        keys = {k for k, b in app.active_bindings.items() if b.binding.show and b.enabled}
        assert {"v", "p", "b", "t", "n", "question_mark", "q"} <= keys  # r and d: in the help and the palette
        assert app.query_one("#lineage").region.bottom <= 24
        await pilot.press("d")
        assert app.theme == "textual-light"
        await pilot.press("d")
        assert app.theme == "textual-dark"
        await pilot.press("ctrl+p")
        await pilot.press(*"gallery")
        await settle(pilot)  # the palette's search runs in a worker
        await wait_until(pilot, lambda: any("gallery" in str(o.prompt).lower()
                                            for o in app.screen.query_one(CommandList).options), "a gallery hit")
        await pilot.press("enter")
        await settle(pilot)
        assert app.query_one("#views").active == "gallery"


def test_the_dashboard_imports_no_torch() -> None:
    code = "import sys, tui.app; bad = [m for m in ('torch',) if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    for path in (ROOT / "tui").glob("*.py"):
        source = path.read_text()
        assert "import torch" not in source and "sqlalchemy" not in source and ".registry" not in source, path


async def test_the_heatmap_is_decided_at_the_dashboards_margin(fresh_ws: Path) -> None:
    app = DashboardApp(fresh_ws, time_format=frozen_time, gate_config=GateConfig(margin=0.25))
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        assert app.matrix is not None and app.matrix.margin == 0.25  # the gate's verdicts at this margin ...
        cells = rows_of(app.query_one("#matrix", DataTable))
        for t, row in enumerate(app.matrix.passes):  # ... are what each cell shows
            for j, passed in enumerate(row):
                if passed is not None:
                    assert ("✓" if passed else "✗") in cells[t][j + 1], cells


async def test_the_training_form_offers_every_architecture(fresh_ws: Path) -> None:
    app = DashboardApp(fresh_ws, time_format=frozen_time)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, TrainFormModal), "the training form")
        suggester = app.screen.query_one("#arch", Input).suggester
        assert suggester is not None
        offered = {await suggester.get_suggestion(arch[:-1]) for arch in ARCHITECTURES}
        assert offered == set(ARCHITECTURES) and "resnet_wide" in offered


async def test_the_dashboard_and_the_cli_show_one_ac_and_am_over_one_set(snapshot_ws: Path) -> None:
    from typer.testing import CliRunner

    from upgrader.cli import app as cli

    printed = CliRunner().invoke(cli, ["matrix", "--json", "--home", str(snapshot_ws)])
    assert printed.exit_code == 0, printed.output
    by_cli = __import__("json").loads(printed.stdout)
    app = DashboardApp(snapshot_ws, time_format=frozen_time)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await settle(pilot)
        assert [g.id for g in app.matrix.generations] == [g["id"] for g in by_cli["generations"]]
        summary = " ".join(text_of(app.query_one("#matrix-summary")).split())
        assert f"AC {by_cli['ac']:.3f}" in summary and f"AM {100 * by_cli['am']:.1f} %" in summary

