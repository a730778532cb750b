"""Shared pieces of the CLI: options, error handling, JSON output and Rich rendering."""

from __future__ import annotations

import ast
import difflib
import functools
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from registry.errors import RegistryError, SchemaOutOfDate, UnknownGeneration, WorkspaceNotFound

from upgrader.core.jsonable import jsonable
from upgrader.core.markup import styled
from upgrader.core.errors import GateRefused, InvalidRequest, UpgraderError
from upgrader.services.workspace import Workspace, open_workspace

#: Exit codes (docs/design.md §5): 1 a failure of files, database or artifacts; 2 a usage error — a
#: value the user typed that is invalid or names nothing known; 3 the gate refused.
EXIT_ERROR, EXIT_USAGE, EXIT_GATE = 1, 2, 3

#: Registry errors that mean "the value you typed names nothing": usage errors (exit 2), like an
#: unknown class or architecture below the CLI (``InvalidRequest``).
USAGE_REGISTRY_ERRORS: tuple[type[RegistryError], ...] = (UnknownGeneration,)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", envvar="UPGRADER_HOME", help="Workspace folder (default ./.upgrader).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]

#: Markup is off: whatever a command prints is shown literally (names, ids and reasons are the user's
#: text, and ``[/]evil`` must print as typed). Styling goes through :func:`upgrader.core.markup.styled`.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)

F = TypeVar("F", bound=Callable[..., Any])


#: What the CLI adds to an error from below it: the flag or command a user types for the thing the
#: error's ``subject`` names. Services and the registry speak of the thing; only the CLI knows its flags.
SUBJECT_WORDS: dict[str, str] = {
    "num_classes": "-k/--num-classes",
    "classes": "--classes",
    "name": "--name",
    "dataset": "--dataset",
    "home": "--home",
    "workspace": "`upgrader init --home DIR` creates one; --home or UPGRADER_HOME opens one",
    "production": "`upgrader promote GEN`",
    "gallery": "`upgrader gallery add`",
    "artifact": "`upgrader export GEN` re-exports it",
    "schema": "`upgrader db upgrade` migrates it",
    "generations": "`upgrader generations`",
    "probe_sizes": "--probe-queries/--probe-gallery",
    "split": "--split",
    "steps": "--steps",
    "augment": "--augment",
    "batch_size": "--batch-size",
    "replacement_arch": "--replacement-arch", "arch": "--arch",
    "arch_kwargs": "--arch-kwargs",
    "init_weights": "--init-weights",
    "init_prefix": "--init-prefix",
    "backbone_lr_mult": "--backbone-lr-mult",
}
#: Registry errors carry no subject (the registry imports nothing from upgrader): named by type here.
REGISTRY_SUBJECTS: dict[type[RegistryError], str] = {
    WorkspaceNotFound: "workspace", SchemaOutOfDate: "schema", UnknownGeneration: "generations",
}


#: Refusals that name their check (``reason``, e.g. the training plan's), said whole in the CLI's
#: words; ``{field}`` takes the refusal's ``details``.
REASON_WORDS: dict[str, str] = {
    "epochs": "--epochs must be at least 1",
    "steps": "--steps must be at least 1",
    "steps-and-epochs": "give --steps or --epochs, not both (--epochs alone overrides the default --steps)",
    "batch-size": "--batch-size must be at least 2",
    "initial-with-parent": "an initial generation has no parent; use `upgrader train --finetune` to start from one",
    "finetune-arch": "fine-tuning keeps the architecture ({parent_arch}); use `upgrader replace --arch {arch}` to change it",
    "replacement-arch": "a replacement needs --arch (the new architecture)",
    "init-weights": "--init-weights {init_weights}: no such file",
    "name-taken": "a generation named {name!r} exists already; pass another --name",
    "has-gallery-items": "generation {name} still has {items} gallery items; `upgrader gallery rm --generation {name}` "
                         "deletes them, then remove it",
    "lowers-search": "re-embedding {budget} items is estimated to lower production's Recall@1 on the probe set from "
                     "{now}% to {after}% (the score calibration was fitted for the gallery as it is); pass "
                     "--budget {best} ({best_estimate}%), see `--dry-run`, or --allow-lower to re-embed anyway",
    "lowers-search-always": "re-embedding {budget} items is estimated to lower production's Recall@1 on the probe set "
                            "from {now}% to {after}%, and so does every smaller budget (the score calibration was "
                            "fitted for the gallery as it is); see `--dry-run`, or pass --allow-lower to re-embed anyway",
}


def cli_message(exc: Exception) -> str:
    """``exc``'s message in the CLI's words: the whole sentence for a refusal with a known ``reason``,
    else the message plus the flag or command for its ``subject`` when it has one."""
    wording = REASON_WORDS.get(getattr(exc, "reason", None) or "")
    if wording is not None:
        return wording.format(**getattr(exc, "details", {}))
    subject = getattr(exc, "subject", None) or REGISTRY_SUBJECTS.get(type(exc))
    words = SUBJECT_WORDS.get(subject or "")
    return f"{exc} ({words})" if words else str(exc)


#: The CLI's words for a training warning (``TrainWarning.reason``); ``{length_flag}`` is the flag
#: that trains longer, in the unit the run was sized in.
WARNING_WORDS: dict[str, str] = {
    "still-rising": "training accuracy was still rising at the end ({before}% -> {after}% over the last {over} "
                    "steps): it looks under-trained; train longer, e.g. {length_flag}",
    "below-parent": "self-test of {gen} on the {classes} classes {parent} learnt is {value}%, below {parent}'s "
                    "{parent_value}%: it looks under-trained; train longer, e.g. {length_flag}",
}


def warning_line(warning: Any) -> str:
    """A ``TrainWarning`` in the CLI's words (its own message when the CLI has none for it)."""
    words = WARNING_WORDS.get(warning.reason)
    if words is None:
        return warning.message
    d = warning.details
    flag = f"--steps {d['suggest_steps']}" if d.get("length_given") == "steps" else f"--epochs {d['suggest_epochs']}"
    return words.format(**d, length_flag=flag)


def print_warning(line: str) -> None:
    """One warning line on stderr (stdout stays clean for --json)."""
    err_console.print(styled("[bold yellow]warning:[/] {}", line), highlight=False, soft_wrap=True)


def did_you_mean(exc: Exception, home: Path | None) -> str:
    """For an unknown generation, the close names the workspace holds ("; did you mean a or b?"), or "".

    The reference typed is read from the registry's message (``... alias 'x'; list them``): the
    registry's errors carry no fields, and its wording is tested with this (tests/cli/test_own_data.py).
    """
    found = re.search(r"alias ('.*'|\".*\"); list them", str(exc))
    if found is None:
        return ""
    try:
        typed = str(ast.literal_eval(found.group(1)))
        with workspace(home) as ws:
            names = [g.name for g in ws.registry.list_generations()]
    except Exception:  # no workspace, no registry: no suggestion, the error itself still prints
        return ""
    close = difflib.get_close_matches(typed, names, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _fail(message: str, code: int, json_out: bool, *, label: str = "error") -> typer.Exit:
    """Print a failure (stderr; with --json also a JSON object on stdout) and the exit to raise."""
    err_console.print(styled(f"[bold red]{label}:[/] {{}}", message), highlight=False, soft_wrap=True)
    if json_out:
        sys.stdout.write(json.dumps({"error": message, "exit_code": code}) + "\n")
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn the product's errors into one line on stderr and the documented exit code; under --json
    also a JSON object ``{"error": ..., "exit_code": ...}`` on stdout, so a script reads why."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        json_out = bool(kwargs.get("json_out"))
        try:
            return fn(*args, **kwargs)
        except GateRefused as exc:  # promote and rollback print their own JSON verdict: no second object
            raise _fail(str(exc), EXIT_GATE, False, label="refused") from None
        except (InvalidRequest, *USAGE_REGISTRY_ERRORS) as exc:
            hint = did_you_mean(exc, kwargs.get("home")) if isinstance(exc, UnknownGeneration) else ""
            raise _fail(cli_message(exc) + hint, EXIT_USAGE, json_out) from None
        except (UpgraderError, RegistryError) as exc:
            raise _fail(cli_message(exc), EXIT_ERROR, json_out) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def workspace(home: Path | None) -> Iterator[Workspace]:
    """Open the workspace named by --home / UPGRADER_HOME for one command."""
    ws = open_workspace(home)
    try:
        yield ws
    finally:
        ws.close()


def print_json(obj: Any) -> None:
    """Write ``obj`` as JSON on stdout (plain print: no Rich markup or wrapping)."""
    sys.stdout.write(json.dumps(jsonable(obj), indent=2) + "\n")


def progress_bar(transient: bool = False) -> Progress:
    """The progress bar long commands share (stderr, so --json stdout stays clean)."""
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )


@dataclass(frozen=True)
class Col:
    """One column of a :func:`fitted_table`."""

    header: str
    priority: int = 0  # 0: always shown; the highest numbers are left out first when the terminal is narrow
    justify: Literal["left", "right", "center"] = "left"
    fold: bool = False  # what a user types (a name): folded onto more lines when it must be, never cut
    wrap: bool = False  # free text (a reason): wraps in the width left, at least WRAP_MIN


#: The narrowest a wrapping column (free text) is made before lower-priority columns are left out.
WRAP_MIN = 16


def fitted_table(title: str, cols: list[Col], rows: list[list[Any]], width: int | None = None) -> Table:
    """A table that fits ``width`` (the console's) without cutting what a user must type.

    Columns are shown in their order; when they do not all fit, the highest ``priority`` ones are left
    out (a caption names them and --json, which has them all), names fold rather than end in "…", and
    free text wraps. Cells are ``str`` (literal) or Rich ``Text``.
    """
    width = width or console.width
    natural = [max([cell_len(c.header)] + [_cell_width(r[i]) for r in rows]) for i, c in enumerate(cols)]
    need = [min(n, WRAP_MIN) if c.wrap else n for n, c in zip(natural, cols)]
    shown = [i for i, c in enumerate(cols) if c.priority == 0]
    for i in sorted((i for i, c in enumerate(cols) if c.priority > 0), key=lambda i: cols[i].priority):
        if sum(need[j] + 3 for j in shown + [i]) + 1 <= width:
            shown.append(i)
    shown.sort()
    hidden = [c.header for i, c in enumerate(cols) if i not in shown]
    caption = f"left out at {width} columns: {', '.join(hidden)} (widen the terminal, or --json)" if hidden else None
    fits = sum(need[j] + 3 for j in shown) + 1 <= width  # else names fold: essentials alone are too wide
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for i in shown:
        c = cols[i]
        # A name folds only when even the essential columns are too wide (Rich shares the squeeze
        # between every wrapping column, so a name that fits is kept whole by not letting it wrap).
        table.add_column(c.header, justify=c.justify, no_wrap=not (c.wrap or (c.fold and not fits)), overflow="fold",
                         min_width=need[i] if c.wrap else None)
    for r in rows:
        table.add_row(*(r[i] for i in shown))
    return table


def _cell_width(value: Any) -> int:
    """Terminal cells of a cell's longest line."""
    text = value.plain if isinstance(value, Text) else str(value)
    return max((cell_len(line) for line in text.split("\n")), default=0)


def usage_error(message: str) -> None:
    """Report a usage mistake found by the CLI itself (exit 2)."""
    raise InvalidRequest(message)
