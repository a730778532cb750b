"""Modal screens: the confirmation every action goes through, and the training form."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import RenderableType
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Checkbox, Input, Label, Select, Static
from textual.worker import Worker, WorkerState

from registry.errors import RegistryError

from upgrader.core.errors import UpgraderError
from upgrader.core.markup import literal
from upgrader.core.vocabulary import METHODS
from upgrader.services.dashboard_model import TRAIN_KINDS, TrainForm, TrainingPlan, architecture_choices
from upgrader.services.training_plan import AUGMENTS, STEPS_PER_CLASS


@dataclass(frozen=True)
class Confirmed:
    """The person confirmed; ``reason`` is what they typed (empty when the modal asks for none)."""

    reason: str = ""


class ConfirmModal(ModalScreen[Confirmed | None]):
    """Shows exactly what an action will do; confirm (optionally with a reason) or cancel.

    With ``can_confirm=False`` it only explains (a refused promotion) and offers Close. The title and
    a ``str`` body are shown literally (they quote names and reasons); style a body with
    :func:`upgrader.core.markup.styled`.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        title: str,
        body: RenderableType,
        *,
        confirm_label: str = "Confirm",
        can_confirm: bool = True,
        ask_reason: str | None = None,
        default_reason: str = "",
        reason_required: str | None = None,
        variant: str = "primary",
    ) -> None:
        """Args:
        ask_reason: placeholder of a reason field (None: no field).
        reason_required: with ``ask_reason``, the reason may not be empty and this is what the modal
            says when it is (a forced move must say why: the alias history records it).
        """
        super().__init__()
        self.title_text = title
        self.body = body
        self.confirm_label = confirm_label
        self.can_confirm = can_confirm
        self.ask_reason = ask_reason
        self.default_reason = default_reason
        self.reason_required = reason_required
        self.variant = variant

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(literal(self.title_text), id="dialog-title")
            with VerticalScroll(id="dialog-body"):
                yield Static(literal(self.body) if isinstance(self.body, str) else self.body, id="dialog-text")
            if self.can_confirm and self.ask_reason is not None:
                yield Input(value=self.default_reason, placeholder=self.ask_reason, id="reason", compact=True)
                if self.reason_required is not None:
                    yield Static("", id="dialog-error")
            with Horizontal(id="dialog-buttons"):
                if self.can_confirm:
                    yield Button(self.confirm_label, variant=self.variant, id="confirm", compact=True)
                yield Button("Cancel" if self.can_confirm else "Close", id="cancel", compact=True)

    def on_mount(self) -> None:
        focus = "#reason" if self.can_confirm and self.ask_reason is not None else ("#confirm" if self.can_confirm else "#cancel")
        self.query_one(focus).focus()

    def _confirm(self) -> None:
        reason = self.query_one("#reason", Input).value.strip() if self.ask_reason is not None else ""
        if self.reason_required is not None and not reason:
            self.query_one("#dialog-error", Static).update(Text(self.reason_required, style="red"))
            self.query_one("#reason", Input).focus()
            return
        self.dismiss(Confirmed(reason))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "confirm":
            self._confirm()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._confirm()

    def action_cancel(self) -> None:
        self.dismiss(None)


class TrainFormModal(ModalScreen[TrainingPlan | None]):
    """The training form: kind, dataset, classes, architecture (a built-in, a registered name or the
    user's ``package.module:function``), its arguments, pretrained weights and freezing, length,
    method, augmentation, images per class, name.

    "Review…" checks the form against the workspace in a worker (``planner``: the dataset's classes,
    the architecture's form and whether its package is installed, the name...) and stays open showing
    what is wrong; it closes with the checked plan only, so nothing unknown reaches "Start training".
    The fields scroll when the terminal is short (80x24), so the error line and the buttons stay put.
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, kind: str, dataset: str, planner: Callable[[TrainForm], TrainingPlan],
                 default_classes: str = "") -> None:
        """Args:
        planner: checks a form and returns its plan, or raises what is wrong (run in a thread worker).
        """
        super().__init__()
        self.kind = kind
        self.dataset = dataset
        self.planner = planner
        self.default_classes = default_classes

    def compose(self) -> ComposeResult:
        with Vertical(id="form", classes="dialog"):
            yield Label("Train a new generation", id="dialog-title")
            with VerticalScroll(id="form-body"), Grid(id="form-grid"):
                yield Label("kind")
                yield Select([(k, k) for k in TRAIN_KINDS], value=self.kind, allow_blank=False, id="kind", compact=True)
                yield Label("dataset")
                yield Input(value=self.dataset, id="dataset", compact=True)
                yield Label("classes")
                yield Input(value=self.default_classes, placeholder="4-6 or 4,5 or names", id="classes", compact=True)
                yield Label("architecture")
                yield Input(value="small_cnn" if self.kind == "replacement" else "", id="arch", compact=True,
                            placeholder="parent's / small_cnn, or package.module:function",
                            suggester=SuggestFromList(architecture_choices(), case_sensitive=True))
                yield Label("backbone args")
                yield Input(value="", placeholder='none, or a JSON object, e.g. {"width": 64}', id="arch_kwargs", compact=True)
                yield Label("init weights")
                yield Input(value="", placeholder="none, or a state dict / .safetensors file", id="init_weights", compact=True)
                yield Label("init prefix")
                yield Input(value="", placeholder="none, or OLD[=NEW],... (e.g. module.)", id="init_prefix", compact=True)
                yield Label("freeze")
                yield Checkbox("backbone (only the projection learns)", id="freeze_backbone", compact=True)
                yield Label("steps")
                yield Input(value="", placeholder=f"{STEPS_PER_CLASS} per class trained on (new and rehearsed)", id="steps", type="integer", compact=True)
                yield Label("epochs")
                yield Input(value="", placeholder="from steps (given, overrides them)", id="epochs", type="integer", compact=True)
                yield Label("method")
                yield Select([(m, m) for m in METHODS], value="hoc", allow_blank=False, id="method", compact=True)
                yield Label("augmentation")
                yield Select([("default for the dataset", "")] + [(a, a) for a in AUGMENTS], value="", allow_blank=False,
                             id="augment", compact=True)
                yield Label("images/class")
                yield Input(value="", placeholder="all", id="per_class", type="integer", compact=True)
                yield Label("name")
                yield Input(value="", placeholder="default g<N>-<kind>-<arch>-<method>", id="name", compact=True)
            yield Static("", id="form-error")
            with Horizontal(id="dialog-buttons"):
                yield Button("Review…", variant="primary", id="confirm", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#classes", Input).focus()

    def _error(self, message: str) -> None:
        self.query_one("#form-error", Static).update(Text(message, style="red"))

    def _form(self) -> TrainForm | None:
        def text(widget_id: str) -> str:
            return self.query_one(f"#{widget_id}", Input).value.strip()

        numbers: dict[str, int | None] = {}
        for field, what in (("steps", "steps"), ("epochs", "epochs"), ("per_class", "images/class")):
            value = text(field)
            if value and (not value.isdigit() or int(value) < 1):
                self._error(f"{what} must be a whole number ≥ 1 (or empty)")
                return None
            numbers[field] = int(value) if value else None
        if numbers["steps"] is not None and numbers["epochs"] is not None:
            self._error("give steps or epochs, not both (epochs alone overrides the default steps)")
            return None
        if not text("classes"):
            self._error("name the classes to train on, e.g. 4-6")
            return None
        return TrainForm(
            kind=str(self.query_one("#kind", Select).value),
            classes=text("classes"),
            dataset=text("dataset"),
            arch=text("arch"),
            arch_kwargs=text("arch_kwargs"),
            init_weights=text("init_weights"),
            init_prefix=text("init_prefix"),
            freeze_backbone=self.query_one("#freeze_backbone", Checkbox).value,
            epochs=numbers["epochs"],
            steps=numbers["steps"],
            method=str(self.query_one("#method", Select).value),
            augment=str(self.query_one("#augment", Select).value or ""),
            per_class=numbers["per_class"],
            name=text("name"),
        )

    def _review(self) -> None:
        form = self._form()
        if form is None:
            return
        self.query_one("#form-error", Static).update(Text("checking…", style="dim"))
        self.run_worker(functools.partial(self.planner, form), thread=True, group="plan", exclusive=True,
                        exit_on_error=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The check finished: close with the plan, or say what is wrong and stay open."""
        if event.worker.group != "plan":
            return
        if event.state == WorkerState.SUCCESS:
            self.dismiss(event.worker.result)
        elif event.state == WorkerState.ERROR:
            exc = event.worker.error
            known = isinstance(exc, (UpgraderError, RegistryError))
            self._error(str(exc) if known else f"{type(exc).__name__}: {exc}")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "confirm":
            self._review()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._review()

    def action_cancel(self) -> None:
        self.dismiss(None)
