"""The Compatibility view: the matrix C[query gen][gallery gen] as a coloured heatmap, with AC and AM."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from upgrader.core.formatting import pct
from upgrader.services.matrix import MatrixView

from tui.render import heat_style

LEGEND = Text.assemble(
    ("✓", "bold"), " M(t,j) > M(j,j): compatible   ",
    ("✗", "bold"), " fails the criterion   ",
    ("◆", "bold"), " self-test   ",
    ("↑", "bold"), " old queries on a newer gallery (rollback)   ★ production   ● live",
    style="dim",
)


class CompatibilityView(Vertical):
    """Heatmap of the compatibility matrix; ``l`` switches between live generations and all of them."""

    def compose(self) -> ComposeResult:
        yield Static("Computing the compatibility matrix…", id="matrix-summary")
        table: DataTable = DataTable(id="matrix", cursor_type="cell", show_cursor=False)
        table.border_title = "rows: query generation · columns: gallery generation"
        yield table
        yield Static(LEGEND, id="matrix-legend")

    def show_pending(self, live_only: bool) -> None:
        """Say what is being computed."""
        scope = "live generations" if live_only else "the generations `upgrader matrix` shows"
        self.query_one("#matrix-summary", Static).update(f"Computing the matrix over {scope}…")

    def show(self, view: MatrixView, live_only: bool) -> None:
        """Fill the heatmap. Lower triangle: the gate's own verdict per pair (``view.passes``); diagonal: self-tests."""
        table = self.query_one(DataTable)
        table.clear(columns=True)
        gens, m = view.generations, view.matrix
        ids = ", ".join(str(g.id) for g in gens) or "none"
        scope = (f"over the live generations {ids} (l: the default set)" if live_only
                 else f"over generations {ids}, the set `upgrader matrix` shows (l: live only)")
        summary = Text.assemble(  # the numbers worded as `upgrader matrix` words them (MatrixView)
            ("AC ", "bold"), (view.ac_text(), "bold cyan"), "   ",
            ("AM ", "bold"), (view.am_text(), "bold cyan"), "   ",
            f"{scope} · metric {view.metric} (%)",
        )
        self.query_one("#matrix-summary", Static).update(summary)
        if not gens:
            table.add_column("no generations to compare")
            return
        table.add_column("query \\ gallery", key="row")
        for g in gens:
            table.add_column(Text(f"{g.id}{'★' if g.id == view.production else ''}", justify="center"), key=str(g.id))
        for t, gt in enumerate(gens):
            cells = []
            for j in range(len(gens)):
                v = float(m[t, j])
                if j == t:
                    mark = "◆"
                elif j < t:
                    mark = "✓" if view.passes[t][j] else "✗"
                else:
                    mark = "↑"
                cells.append(Text(f" {pct(v):>5} {mark} ", style=heat_style(v)))
            label = Text.assemble(
                (f"{gt.id} ", "bold"), gt.name, (" ★" if gt.id == view.production else ""),  # whole: → scrolls
                (" ●" if gt.id in view.live else "", "cyan"),
            )
            table.add_row(label, *cells, key=str(gt.id))

    def show_error(self, message: str) -> None:
        """The matrix could not be computed."""
        self.query_one("#matrix-summary", Static).update(Text(message, style="red"))
