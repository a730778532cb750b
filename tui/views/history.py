"""The History view: every move of the production alias, newest first."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from upgrader.core.markup import literal
from upgrader.services.dashboard_model import HistoryEntry

from tui.render import TimeFormat


class HistoryView(DataTable):
    """Who moved production, when, from which generation to which, why, and whether it was forced.

    Every cell is a ``Text``: a plain ``str`` cell would be parsed as markup by the DataTable, and the
    actor and reason are free text.
    """

    def __init__(self, time_format: TimeFormat, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.time_format = time_format

    def on_mount(self) -> None:
        for label in ("#", "when", "from → to", "by", "report", "forced", "reason"):
            self.add_column(label, key=label)

    def show(self, entries: list[HistoryEntry]) -> None:
        """Refill, newest first."""
        self.clear()
        for e in reversed(entries):
            m = e.move
            self.add_row(
                str(m.id),
                literal(self.time_format(m.at)),
                Text.assemble((e.from_name or "—", "dim"), " → ", (e.to_name, "bold")),
                literal(m.actor),
                str(m.gate_report_id) if m.gate_report_id is not None else "—",
                Text(" FORCED ", style="bold white on red") if m.forced else Text("no", style="green"),
                literal(m.reason),
                key=str(m.id),
            )
