"""The History view: every move of the production alias, newest first."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from upgrader.core.markup import literal
from upgrader.services.dashboard_model import HistoryEntry

from tui.render import TimeFormat


#: What a person reads first comes first, so that at 80 columns forced and the reason are on screen
#: without scrolling (→ scrolls to the rest): from and to on two lines, the reason wrapped.
COLUMNS: tuple[str, ...] = ("#", "from → to", "forced", "reason", "when", "by", "report")
#: The reason's width: what 80 columns leave beside "#", two default generation names and "forced".
REASON_WIDTH = 34


class HistoryView(DataTable):
    """Who moved production, when, from which generation to which, why, and whether it was forced.

    Every cell is a ``Text``: a plain ``str`` cell would be parsed as markup by the DataTable, and the
    actor and reason are free text.
    """

    def __init__(self, time_format: TimeFormat, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.time_format = time_format

    def on_mount(self) -> None:
        for label in COLUMNS:
            self.add_column(label, key=label, width=REASON_WIDTH if label == "reason" else None)

    def show(self, entries: list[HistoryEntry]) -> None:
        """Refill, newest first."""
        self.clear()
        for e in reversed(entries):
            m = e.move
            self.add_row(
                str(m.id),
                Text.assemble((e.from_name or "—", "dim"), "\n→ ", (e.to_name, "bold")),
                Text(" FORCED ", style="bold white on red") if m.forced else Text("no", style="green"),
                literal(m.reason),
                literal(self.time_format(m.at)),
                literal(m.actor),
                str(m.gate_report_id) if m.gate_report_id is not None else "—",
                key=str(m.id),
                height=None,  # as many lines as the reason wraps to (from and to take two)
            )
