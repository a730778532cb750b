"""Stored text is shown as typed, never read as markup (issue 14, item 6).

A name ``[/]evil``, a reason ``[/]why``, an actor ``[b]mallory``, a name ending in a backslash and a
gallery item ``[/]x`` (the ``hostile`` workspace, see ``builders.make_hostile``) must not crash any
view, modal or notification, and each must appear exactly as stored.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from builders import HOSTILE
from pilot import HANG_SECONDS, frozen_time, rows_of, select_generation, settle, text_of, wait_until
from textual.widgets import DataTable, Input, Label

from tui.app import DashboardApp
from tui.modals import ConfirmModal, TrainFormModal
from upgrader.core.markup import literal, styled
from upgrader.services import dashboard_model as dashboard
from upgrader.services.workspace import open_workspace

G1, G3 = HOSTILE["g1-initial"], HOSTILE["g3-replacement"]


def dashboard_app(home: Path) -> DashboardApp:
    """The dashboard, with notifications that stay up until the test has read them."""
    app = DashboardApp(home, time_format=frozen_time)
    app.NOTIFICATION_TIMEOUT = HANG_SECONDS
    return app


def toasts(app: DashboardApp) -> list[str]:
    """What the notification toasts on screen show (rendering each, as a repaint would; the tests
    run with ``notifications=True``, which ``run_test`` turns off by default)."""
    return [toast.render().plain for toast in app.screen.query("Toast")]


def modal_text(app: DashboardApp) -> tuple[str, str]:
    """(title, body) of the open confirmation modal, as plain text."""
    assert isinstance(app.screen, ConfirmModal), type(app.screen)
    return text_of(app.screen.query_one("#dialog-title", Label)).strip(), text_of(app.screen.query_one("#dialog-text"))


def test_styled_keeps_the_templates_styles_and_the_values_text() -> None:
    for value in ("[/]x", "[b]y", "x\\", "x\\\\", "a\\[b]c", "{}", "[bold red]z[/]"):
        for template, plain in (("{} done", f"{value} done"), ("[b]{}[/b]", value),
                                ("[red]a [b]{0}[/b] and {0}[/] end", f"a {value} and {value} end")):
            text = styled(template, value)
            assert text.plain == plain, (template, value)
        bold = styled("[b]{}[/b]!", value)
        assert [(s.start, s.end, str(s.style)) for s in bold.spans] == [(0, len(value), "bold")]
    assert literal("[/]x").plain == "[/]x" and not literal("[b]x").spans


async def test_views_show_markup_lookalikes_as_typed(hostile_ws: Path) -> None:
    app = dashboard_app(hostile_ws)
    async with app.run_test(size=(120, 36), notifications=True) as pilot:
        await settle(pilot)
        lineage = rows_of(app.query_one("#lineage", DataTable))
        assert [r[1].strip() for r in lineage] == [G1, "└─★ g2-finetune", f"└─{G3}"]
        await select_generation(pilot, G3)
        details = text_of(app.query_one("#details"))
        assert details.startswith(G3) and f"gen {G3} queries on gen {G1} gallery" in details

        await pilot.press("2")
        await settle(pilot)
        labels = [r[0] for r in rows_of(app.query_one("#matrix", DataTable))]
        assert labels[0].startswith(f"1 {G1}") and len(labels) == 2  # G3, rejected, is not in `matrix`'s set

        await pilot.press("3")
        await settle(pilot)
        chart = text_of(app.query_one("#gallery-chart"))
        assert f"1 {G1}" in chart and "items 31" in chart  # the item with id [/]x counts too

        await pilot.press("4")
        await settle(pilot)
        history = rows_of(app.query_one("#history-view", DataTable))
        assert history[0][1] == f"{G1}\n→ g2-finetune" and history[0][3] == "back to g2 after [/]why"
        assert history[1][1] == f"g2-finetune\n→ {G1}"
        assert history[1][5] == HOSTILE["actor"] and history[1][3] == HOSTILE["reason"]
        app.export_screenshot()  # every visible widget painted
        assert app.is_running


async def test_gate_modals_and_notifications_quote_names_as_typed(hostile_ws: Path) -> None:
    app = dashboard_app(hostile_ws)
    async with app.run_test(size=(120, 36), notifications=True) as pilot:
        await settle(pilot)
        await select_generation(pilot, G3)
        await pilot.press("v")
        await settle(pilot)
        title, body = modal_text(app)
        assert title == f"Verify {G3}?" and f"Run the compatibility gate for {G3} (live generations: {G1}, g2-finetune" in body
        assert f"marks {G3} verified or rejected" in body
        await pilot.press("enter")
        await settle(pilot)
        title, body = modal_text(app)
        assert title == f"Gate refused: {G3}" and f"gen {G3} queries on gen {G1} gallery" in body
        assert any(f"Gate refused for {G3}: now rejected" in t for t in toasts(app)), toasts(app)
        await pilot.press("escape")
        await settle(pilot)

        await pilot.press("p")
        await settle(pilot)
        title, body = modal_text(app)
        assert title == f"Promotion refused: {G3}"
        assert f"Promotion of {G3} refused by the compatibility gate." in body and "Production stays on g2-finetune" in body
        assert any(f"Promotion of {G3} refused" in t for t in toasts(app))
        await pilot.press("escape")
        await settle(pilot)

        await select_generation(pilot, G1)
        await pilot.press("b")
        await settle(pilot)
        title, body = modal_text(app)
        assert title == f"Rollback refused: {G1}" and f"Rollback of production to {G1} refused by the gate." in body
        assert f"✓ {G1} held production from" in body  # its standing is fine; it cannot read g2's items
        assert f"gen {G1} queries on gen g2-finetune gallery" in body
        assert any(f"Rollback to {G1} refused" in t for t in toasts(app))
        app.screen.query_one("#reason", Input).value = "[/]forced"
        await pilot.press("enter")  # forced, with a reason that looks like markup
        await settle(pilot)
        assert app.snapshot.production.name == G1
        assert any(f"forced past the gate: g2-finetune → {G1}" in t for t in toasts(app))
        await pilot.press("4")
        await settle(pilot)
        newest = rows_of(app.query_one("#history-view", DataTable))[0]
        assert newest[1] == f"g2-finetune\n→ {G1}" and newest[2].strip() == "FORCED" and newest[3] == "[/]forced"
        app.export_screenshot()
        assert app.is_running


async def _open_training_form(pilot) -> TrainFormModal:  # type: ignore[no-untyped-def]
    await pilot.press("n")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, TrainFormModal), "the training form")
    form = pilot.app.screen
    form.query_one("#arch", Input).value = "small_cnn"
    return form


async def test_the_training_forms_refusals_quote_the_form_as_typed(hostile_ws: Path) -> None:
    app = dashboard_app(hostile_ws)
    async with app.run_test(size=(120, 36), notifications=True) as pilot:
        await settle(pilot)
        form = await _open_training_form(pilot)
        for field, value, said in (
            ("dataset", "/data/[/]set\\", "/data/[/]set\\: no such file or folder"),  # checked on the form ...
            ("classes", "[/]x, [b]y", "unknown class '[/]x'"),
            ("name", G3, G3),
        ):
            form.query_one("#dataset", Input).value = "fashion-mnist"
            form.query_one("#classes", Input).value = "0-1"
            form.query_one(f"#{field}", Input).value = value
            await pilot.click("#confirm")
            await wait_until(pilot, lambda: said in text_of(form.query_one("#form-error")), f"the refusal of {field}")
            await settle(pilot)  # the message may move the buttons: let the layout follow before the next click
            assert app.screen is form  # ... which stays open, saying what is wrong, as typed
        app.export_screenshot()
        assert app.is_running


def test_the_plan_description_shows_names_as_typed_and_keeps_its_styles(hostile_ws: Path) -> None:
    with open_workspace(hostile_ws) as ws:
        plan = dashboard.plan_training(ws, dashboard.TrainForm(kind="replacement", classes="0", arch="small_cnn"))
        parent = dashboard.generation_details(ws, G3).row.generation
    finetune = replace(plan.request, kind="finetune")
    lines = replace(plan, request=finetune, name="[b]new\\", parent=parent, anchored=True, classes=("[/]x", "[b]y"),
                    dataset="/data/[/]set\\").describe()
    plain = [line.plain for line in lines]
    assert ("data: classes [/]x, [b]y of /data/[/]set\\; 100 optimiser steps (100 for each of 1 class, new and "
            "rehearsed), augmentation crop") in plain
    assert plain[0] == "Fine-tune: train [b]new\\ (small_cnn, method hoc)"
    assert plain[1] == f"starting from the weights of {G3}, with its rehearsal memory"
    assert plain[2] == f"compatibility loss anchored on {G3} (frozen)"
    start = plain[0].index("[b]new")
    assert [(s.start, s.end, str(s.style)) for s in lines[0].spans] == [(start, start + len("[b]new\\"), "bold")]
