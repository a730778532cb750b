"""``python -m upgrader.server``: the ``upgrader serve`` command, run as a module.

The same Typer command as ``upgrader serve`` (one parser: :func:`upgrader.cli.serve_cmd.serve`), for
servers that start the service with ``python -m`` rather than through the console script. It imports
the CLI's serve command and the torch-free serving stack, never the training stack. It runs through
:func:`upgrader.cli.run`, as the console script does, so a missing extra's ``ImportError`` is one
line and exit 1 here too.
"""

from __future__ import annotations

import typer

from upgrader.cli import run
from upgrader.cli.serve_cmd import serve

PROG_NAME = "python -m upgrader.server"

# One command and no callback: Typer runs it directly, so the options follow the module name.
app = typer.Typer(name=PROG_NAME, pretty_exceptions_enable=False, add_completion=False)
app.command()(serve)


def main() -> None:
    """Run the serve command with this module's name in its usage line (a missing extra: one line, exit 1)."""
    run(app, prog_name=PROG_NAME)


if __name__ == "__main__":
    main()
