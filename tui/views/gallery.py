"""The Gallery view: items per generation as a bar chart, the total, and the share on old generations."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from upgrader.services.dashboard_model import GallerySummary

from tui.render import bar, human_bytes

#: Narrow enough that a default generation name ("g2-finetune-small_cnn-hoc"), its bar, count and share
#: fit 80 columns.
BAR_WIDTH = 24


def render_gallery(summary: GallerySummary) -> Group:
    """Header figures and one bar per generation (production highlighted)."""
    head = Text.assemble(
        ("items ", "bold"), f"{summary.total}", "   ",
        ("embeddings ", "bold"), f"{human_bytes(summary.embedding_bytes)} ({summary.embedding_dim}-d {summary.embedding_dtype})", "   ",
        ("on old generations ", "bold"), (f"{100 * summary.share_on_old:.1f} %", "bold yellow" if summary.share_on_old else "bold green"),
    )
    if summary.total == 0:
        return Group(head, Text(""), Text("The gallery is empty: add items with `upgrader gallery add`.", style="dim"))
    chart = Table.grid(padding=(0, 1))
    chart.add_column(no_wrap=True)
    chart.add_column(no_wrap=True)
    chart.add_column(justify="right", no_wrap=True)
    chart.add_column(justify="right", no_wrap=True)
    biggest = max(n for _, n in summary.counts)
    for gen, n in summary.counts:
        is_prod = gen.id == summary.production
        chart.add_row(
            Text(f"{gen.id} {gen.name}{' ★' if is_prod else ''}", style="bold" if is_prod else ""),  # never cut
            Text(bar(n, biggest, BAR_WIDTH).ljust(BAR_WIDTH), style="green" if is_prod else "yellow"),
            str(n),
            f"{100 * n / summary.total:5.1f} %",
        )
    note = Text(
        "Items written by older generations are served as they are: no re-embedding (★ production, "
        "yellow: older generations).",
        style="dim",
    )
    return Group(head, Text(""), chart, Text(""), note)


class GalleryView(VerticalScroll):
    """The composition of the production gallery."""

    def compose(self):
        yield Static("Loading…", id="gallery-chart")

    def show(self, summary: GallerySummary) -> None:
        """Redraw the chart."""
        self.query_one("#gallery-chart", Static).update(render_gallery(summary))
