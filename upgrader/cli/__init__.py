"""The ``upgrader`` command line: thin Typer commands over :mod:`upgrader` services."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from upgrader import __version__
from upgrader.cli import backfill_cmd, dashboard_cmd, demo_cmd, gallery_cmds, gate_cmds, serve_cmd, study_cmd, train_cmds, workspace_cmds
from upgrader.cli.common import EXIT_ERROR, err_console, styled
from upgrader.core.extras import missing_extra

app = typer.Typer(
    name="upgrader",
    help="Upgrade the embedding model behind a retrieval service without re-indexing its gallery, "
    "with proof before it goes live.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
gallery_app = typer.Typer(help="The production gallery: add items, see its composition.", no_args_is_help=True)
db_app = typer.Typer(help="The registry database.", no_args_is_help=True)
app.add_typer(gallery_app, name="gallery")
app.add_typer(db_app, name="db")

workspace_cmds.register(app, db_app)
train_cmds.register(app)
gate_cmds.register(app)
gallery_cmds.register(app, gallery_app)
backfill_cmd.register(gallery_app)
demo_cmd.register(app)
dashboard_cmd.register(app)
study_cmd.register(app)
serve_cmd.register(app)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"upgrader {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the installed version and exit.")] = False,
) -> None:
    """Options of ``upgrader`` itself, before the command."""


def run(typer_app: typer.Typer, **kwargs: Any) -> None:
    """Run ``typer_app``; an extra's package found missing on the way is one line and exit 1.

    The commands import torch, matplotlib or a database driver only where they need them, so a
    server install (no extras) reaches the ``ImportError`` in the middle of a command: it is worded
    here, by :func:`upgrader.core.extras.missing_extra`, for every command at once.
    """
    try:
        typer_app(**kwargs)
    except ImportError as err:
        missing = missing_extra(err)
        if missing is None:
            raise
        err_console.print(styled("[bold red]error:[/] {}", missing), highlight=False, soft_wrap=True)
        sys.exit(EXIT_ERROR)


def main() -> None:
    """Console-script entry point."""
    run(app)
