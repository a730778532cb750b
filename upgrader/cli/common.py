"""Shared pieces of the CLI: options, error handling, JSON output and Rich rendering."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
}
#: Registry errors carry no subject (the registry imports nothing from upgrader): named by type here.
REGISTRY_SUBJECTS: dict[type[RegistryError], str] = {
    WorkspaceNotFound: "workspace", SchemaOutOfDate: "schema", UnknownGeneration: "generations",
}


#: Refusals that name their check (``reason``, e.g. the training plan's), said whole in the CLI's
#: words; ``{field}`` takes the refusal's ``details``.
REASON_WORDS: dict[str, str] = {
    "epochs": "--epochs must be at least 1",
    "initial-with-parent": "an initial generation has no parent; use `upgrader train --finetune` to start from one",
    "finetune-arch": "fine-tuning keeps the architecture ({parent_arch}); use `upgrader replace --arch {arch}` to change it",
    "replacement-arch": "a replacement needs --arch (the new architecture)",
    "init-weights": "--init-weights {init_weights}: no such file",
    "name-taken": "a generation named {name!r} exists already; pass another --name",
    "has-gallery-items": "generation {name} still has {items} gallery items; `upgrader gallery rm --generation {name}` "
                         "deletes them, then remove it",
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


def handle_errors(fn: F) -> F:
    """Turn the product's errors into one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GateRefused as exc:
            err_console.print(styled("[bold red]refused:[/] {}", exc), highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_GATE) from None
        except (InvalidRequest, *USAGE_REGISTRY_ERRORS) as exc:
            err_console.print(styled("[bold red]error:[/] {}", cli_message(exc)), highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None
        except (UpgraderError, RegistryError) as exc:
            err_console.print(styled("[bold red]error:[/] {}", cli_message(exc)), highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None

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


def usage_error(message: str) -> None:
    """Report a usage mistake found by the CLI itself (exit 2)."""
    raise InvalidRequest(message)
