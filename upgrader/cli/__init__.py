"""The ``upgrader`` command line: thin Typer commands over :mod:`upgrader` services."""

from __future__ import annotations

import typer

from upgrader.cli import dashboard_cmd, demo_cmd, gallery_cmds, gate_cmds, serve_cmd, study_cmd, train_cmds, workspace_cmds

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
demo_cmd.register(app)
dashboard_cmd.register(app)
study_cmd.register(app)
serve_cmd.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
