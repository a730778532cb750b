"""The training form's backbone fields (issue 17): the architecture is free text (a built-in, a name a
package registers, or the user's ``package.module:function``) with suggestions, checked by the same
torch-free checks as the CLI before "Start training"; backbone arguments, initial weights, their key
mapping and freezing reach the request; user text is shown as typed; it all fits 80x24.

Training itself is replaced by a recorder (the app's ``start_training``): what is asserted is which
plan the form hands over, not a run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pilot import frozen_time, settle, text_of, wait_until
from textual.widgets import Checkbox, Input

from tui.app import DashboardApp
from tui.modals import ConfirmModal, TrainFormModal
from upgrader.core.errors import InvalidRequest
from upgrader.core.vocabulary import ARCHITECTURES, BackboneUnavailable
from upgrader.services import dashboard_model as dashboard
from upgrader.services.workspace import open_workspace

MISSING = "nosuchpkg_h17.mod:fn"  # well formed; no package of that name is installed


def recording_app(home: Path) -> tuple[DashboardApp, list[dashboard.TrainingPlan]]:
    """The dashboard with training replaced by a list of the plans it was asked to start."""
    app = DashboardApp(home, time_format=frozen_time)
    started: list[dashboard.TrainingPlan] = []
    app.start_training = started.append  # type: ignore[method-assign]
    return app, started


async def open_form(pilot, **fields: str) -> TrainFormModal:  # type: ignore[no-untyped-def]
    """Open the replacement form and type ``fields`` (widget id -> text)."""
    await settle(pilot)
    await pilot.press("n")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, TrainFormModal), "the training form")
    form = pilot.app.screen
    for widget_id, value in fields.items():
        form.query_one(f"#{widget_id}", Input).value = value
    return form


async def review(pilot, form: TrainFormModal) -> str:  # type: ignore[no-untyped-def]
    """Press Review…; the form's error once the check answered ("" when it closed and the review opened)."""
    await pilot.click("#confirm")

    def answered() -> bool:
        if pilot.app.screen is not form:
            return True
        said = text_of(form.query_one("#form-error")).strip()
        return bool(said) and not said.startswith("checking")

    await wait_until(pilot, answered, "the form's check")
    await settle(pilot)
    if pilot.app.screen is not form:  # closed with a checked plan: the review is open
        assert isinstance(pilot.app.screen, ConfirmModal)
        return ""
    return " ".join(text_of(form.query_one("#form-error")).split())


def test_the_backbone_fields_reach_the_request(fresh_ws: Path, tmp_path: Path) -> None:
    weights = tmp_path / "resnet.pt"
    weights.write_bytes(b"not read before training")
    form = dashboard.TrainForm(kind="replacement", classes="0-1", arch="small_cnn", arch_kwargs='{"width": 12}',
                               init_weights=str(weights), init_prefix="module.", freeze_backbone=True)
    with open_workspace(fresh_ws) as ws:
        plan = dashboard.plan_training(ws, form)
        default = dashboard.TrainForm(kind="replacement", classes="0-1", arch="resnet_narrow")
        plain = dashboard.plan_training(ws, default)
    req = plan.request
    assert (req.arch, req.arch_kwargs, req.init_weights, req.init_prefix, req.freeze_backbone) == (
        "small_cnn", {"width": 12}, str(weights), "module.", True)
    said = " ".join(line.plain for line in plan.describe())
    assert 'backbone arguments {"width": 12}' in said and f"weights in {weights}, keys mapped by module." in said
    assert "backbone frozen" in said
    req = plain.request  # nothing typed: the defaults, and nothing about the backbone said
    assert (req.arch, req.arch_kwargs, req.init_weights, req.init_prefix, req.freeze_backbone) == (
        "resnet_narrow", {}, None, None, False)
    assert not any("backbone" in line.plain or "pretrained" in line.plain for line in plain.describe())


@pytest.mark.parametrize("arch, arch_kwargs, error, said", [
    ("9bad", "", InvalidRequest, "unknown architecture '9bad'"),
    (MISSING, "", BackboneUnavailable, "needs module 'nosuchpkg_h17', which is not installed here"),
    ("small_cnn", '{"width": ', InvalidRequest, "backbone arguments are not JSON"),
    ("small_cnn", "[6]", InvalidRequest, "must be a JSON object"),
])
def test_plan_training_refuses_what_the_cli_refuses(fresh_ws: Path, arch: str, arch_kwargs: str,
                                                    error: type[Exception], said: str) -> None:
    form = dashboard.TrainForm(kind="replacement", classes="0-1", arch=arch, arch_kwargs=arch_kwargs)
    with open_workspace(fresh_ws) as ws, pytest.raises(error, match=said):
        dashboard.plan_training(ws, form)


async def test_a_missing_backbone_package_is_refused_on_the_form_and_nothing_trains(fresh_ws: Path) -> None:
    app, started = recording_app(fresh_ws)
    async with app.run_test(size=(100, 30)) as pilot:
        form = await open_form(pilot, classes="0-1", arch=MISSING)
        said = await review(pilot, form)
        assert said == (f"backbone '{MISSING}' needs module 'nosuchpkg_h17', which is not installed here; install the "
                        "package that provides it in this environment, or put its folder on PYTHONPATH")
        await pilot.press("enter")  # submitting from a field checks again: still refused
        await settle(pilot)
        assert app.screen is form and started == []
        form.query_one("#arch", Input).value = "[b]x"  # markup look-alike: quoted as typed
        assert "unknown architecture '[b]x'" in await review(pilot, form)
        assert app.screen is form and started == []


async def test_a_built_in_with_the_backbone_fields_reaches_start_training(fresh_ws: Path, tmp_path: Path) -> None:
    weights = tmp_path / "[b]w.pt"
    weights.write_bytes(b"")
    app, started = recording_app(fresh_ws)
    async with app.run_test(size=(100, 30)) as pilot:
        form = await open_form(pilot, classes="0-1", arch="resnet_narrow", arch_kwargs='{"tag": "[/]x"}',
                               init_weights=str(weights), init_prefix="[/]=m.")
        form.query_one("#freeze_backbone", Checkbox).value = True
        assert await review(pilot, form) == ""
        body = text_of(app.screen.query_one("#dialog-text"))
        assert 'backbone arguments {"tag": "[/]x"}' in body and "keys mapped by [/]=m." in body
        assert str(weights) in " ".join(body.split()) and "backbone frozen" in body
        await pilot.click("#confirm")  # "Start training"
        await wait_until(pilot, lambda: bool(started), "start_training")
    req = started[0].request
    assert (req.kind, req.arch, req.arch_kwargs, req.init_weights, req.init_prefix, req.freeze_backbone) == (
        "replacement", "resnet_narrow", {"tag": "[/]x"}, str(weights), "[/]=m.", True)


async def test_the_architecture_field_suggests_built_ins_and_registered_names(
    fresh_ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "site" / "h17_nets-1.0.dist-info"  # an installed package that registers a backbone name
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: h17-nets\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[upgrader.backbones]\nh17net = h17_absent_pkg.nets:build\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert dashboard.architecture_choices() == (*ARCHITECTURES, "h17net")
    app, started = recording_app(fresh_ws)
    async with app.run_test(size=(100, 30)) as pilot:
        form = await open_form(pilot, classes="0-1")
        field = form.query_one("#arch", Input)
        assert field.value == "small_cnn"  # a replacement names its architecture; the built-in smallest first
        assert field.suggester is not None
        for arch in ARCHITECTURES:
            assert await field.suggester.get_suggestion(arch[:-1]) == arch
        assert await field.suggester.get_suggestion("h17") == "h17net"
        field.value = "h17net"  # registered, but its package is not installed: refused by its module's name
        assert "needs module 'h17_absent_pkg'" in await review(pilot, form)
        assert started == []


async def test_the_form_fits_80x24_with_a_long_error(fresh_ws: Path) -> None:
    app, _ = recording_app(fresh_ws)
    async with app.run_test(size=(80, 24)) as pilot:
        form = await open_form(pilot, classes="0-1", arch=MISSING)
        assert await review(pilot, form)  # three lines at this width
        dialog = form.query_one("#form").region
        assert dialog.bottom <= 24
        inner = form.query_one("#form").content_region
        for fixed in ("#form-error", "#confirm", "#cancel"):  # the error and the buttons stay on screen
            assert inner.contains_region(form.query_one(fixed).region), fixed
        body = form.query_one("#form-body")
        for widget_id in ("kind", "arch", "arch_kwargs", "init_weights", "init_prefix", "freeze_backbone", "name"):
            widget = form.query_one(f"#{widget_id}")
            widget.focus()  # the fields scroll: each one comes into view when it has the focus
            await settle(pilot)
            assert body.region.contains_region(widget.region), widget_id
