"""`dashboard`: open the Textual dashboard on a workspace."""

from __future__ import annotations

from typing import Annotated

import typer

from upgrader.compat import gate
from upgrader.compat.metrics import DEFAULT_PRIMARY_METRIC
from upgrader.cli.common import HomeOption, handle_errors, workspace


def register(app: typer.Typer) -> None:
    """Attach this module's command."""
    app.command("dashboard")(dashboard)


@handle_errors
def dashboard(
    home: HomeOption = None,
    margin: Annotated[float, typer.Option(help="Gate margin for verify / promote / rollback (metric units, 0..1).")] = 0.0,
    metric: Annotated[str, typer.Option(help="Primary metric: template_top1, recall_at_1 or mean_ap.")] = DEFAULT_PRIMARY_METRIC,
    waive_improvement: Annotated[bool, typer.Option(help="Promotion need not beat production's self-test.")] = False,
) -> None:
    """Open the dashboard: lineage, compatibility heatmap, gallery, history, and the actions on them.

    Example: upgrader dashboard --home ./ws
    """
    try:
        config = gate.GateConfig(margin=margin, primary_metric=metric, require_improvement=not waive_improvement)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with workspace(home) as ws:  # fail here, with the CLI's message, if there is no workspace
        root = ws.home
    from tui.app import DashboardApp

    DashboardApp(root, gate_config=config).run()
