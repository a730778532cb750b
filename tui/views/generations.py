"""The Generations view: the lineage table and the details of the highlighted generation."""

from __future__ import annotations

import json

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static

from upgrader.compat.metrics import METRIC_NAMES
from upgrader.core.markup import literal
from upgrader.services.dashboard_model import DashboardSnapshot, GenerationDetails

from tui.report_lines import item_lines
from tui.render import TimeFormat, human_bytes, lineage_order, status_badge
from upgrader.core.formatting import pct

COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "id"),
    ("generation", "name"),
    ("status", "status"),
    ("kind", "kind"),
    ("arch", "arch"),
    ("method", "method"),
    ("self %", "self"),
    ("size", "size"),
    ("created", "created"),
)


class GenerationsView(Vertical):
    """Lineage table on top, details below; the highlighted row is the one actions act on."""

    class Selected(Message):
        """The highlighted generation changed."""

        def __init__(self, gen_id: int) -> None:
            super().__init__()
            self.gen_id = gen_id

    def __init__(self, time_format: TimeFormat, **kwargs) -> None:
        super().__init__(**kwargs)
        self.time_format = time_format
        self._placed = False
        self._force: int | None = None

    def compose(self) -> ComposeResult:
        table: DataTable = DataTable(id="lineage", cursor_type="row", zebra_stripes=True)
        table.border_title = "Lineage (★ production)"
        yield table
        with VerticalScroll(id="details-scroll") as scroll:
            scroll.border_title = "Details"
            yield Static("Select a generation.", id="details")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label, key in COLUMNS:
            table.add_column(label, key=key)

    @property
    def selected_id(self) -> int | None:
        """Id of the highlighted generation (None when the table is empty)."""
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key
        return int(key.value) if key.value is not None else None

    def select_after_show(self, gen_id: int) -> None:
        """Highlight ``gen_id`` after the next :meth:`show` (a generation just trained)."""
        self._force = gen_id

    def show(self, snap: DashboardSnapshot) -> None:
        """Fill the table, keeping the highlighted generation (production on first load)."""
        table = self.query_one(DataTable)
        keep = self.selected_id if self._placed else (snap.production.id if snap.production else None)
        if self._force is not None:
            keep, self._force = self._force, None
        table.clear()
        for row, prefix in lineage_order(snap.rows):
            g = row.generation
            name = Text(prefix, style="dim") + Text(("★ " if row.is_production else "") + g.name, style="bold" if row.is_production else "")
            table.add_row(
                Text(str(g.id), justify="right"),
                name,
                status_badge(g.status),
                literal(g.kind),  # Text, not str: the DataTable parses str cells as markup
                literal(g.architecture),
                literal(g.method),
                Text(pct(row.self_test), justify="right"),
                Text(human_bytes(row.artifact_bytes, compact=True), justify="right"),
                literal(self.time_format(g.created_at)),
                key=str(g.id),
            )
        if keep is not None and str(keep) in table.rows:
            table.move_cursor(row=table.get_row_index(str(keep)))
        self._placed = True
        if table.row_count == 0:
            self.query_one("#details", Static).update("No generations yet: press t to train one, or use `upgrader train`.")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(self.Selected(int(event.row_key.value)))

    def show_details(self, details: GenerationDetails) -> None:
        """Render one generation's details."""
        self.query_one("#details", Static).update(render_details(details, self.time_format))


def _kv(table: Table, key: str, value: RenderableType | str) -> None:
    table.add_row(Text(key, style="bold"), value if not isinstance(value, str) else Text(value))


def _mapping(values: dict) -> Text:
    if not values:
        return Text("—", style="dim")
    return Text("\n".join(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(values.items())))


def render_details(d: GenerationDetails, time_format: TimeFormat) -> RenderableType:
    """Training config, data fingerprint, artifact path and sha256, metadata and gate reports."""
    g = d.row.generation
    head = Text.assemble(
        (g.name, "bold"), "  ", status_badge(g.status), "  ",
        (f"id {g.id} · {g.kind} · {g.architecture} · {g.method}", ""),
        ("   ★ production" if d.row.is_production else "", "bold green"),
    )
    info = Table.grid(padding=(0, 2))
    info.add_column(no_wrap=True)
    info.add_column(overflow="fold")  # a sha256 or a path folds onto the next line at 80 columns, never ends in "…"
    _kv(info, "parent", d.parent.name if d.parent else "— (root of the lineage)")
    _kv(info, "children", ", ".join(c.name for c in d.children) or "—")
    _kv(info, "created", time_format(g.created_at))
    _kv(info, "self-test", f"{pct(d.row.self_test)} % (probe, template top-1)")
    _kv(info, "gallery items", str(d.row.gallery_items))
    _kv(info, "artifact", f"{g.onnx_path}  ({human_bytes(d.row.artifact_bytes)})")
    _kv(info, "sha256", g.onnx_sha256)
    _kv(info, "checkpoint", g.checkpoint_path or "— (imported artifact: cannot be fine-tuned)")
    _kv(info, "data fingerprint", g.data_fingerprint or "—")
    _kv(info, "training config", _mapping(g.train_config))
    _kv(info, "metrics", _mapping(g.metrics))
    _kv(info, "ONNX metadata", _mapping(g.onnx_metadata))
    parts: list[RenderableType] = [head, info, Text("")]
    if not d.gate_reports:
        parts.append(Text("gate reports: none yet (press v to verify)", style="dim"))
    else:
        parts.append(Text(f"gate reports ({len(d.gate_reports)}, newest first)", style="bold underline"))
        for rep in d.gate_reports:
            parts.append(render_report_line(rep, d.names, time_format))
    return Group(*parts)


def render_report_line(rep, names: dict[int, str], time_format: TimeFormat) -> RenderableType:
    """One stored gate report: verdict, time, the checks, failing reasons and the item-level search after
    the move (calibrated, raw, re-index, no regression: what ``verify`` prints)."""
    body = rep.report
    verdict = Text(" PASSED ", style="bold black on green") if rep.passed else Text(" REFUSED ", style="bold white on red")
    title = Text.assemble(f"#{rep.id} {rep.kind} ", verdict, f"  {time_format(rep.created_at)}  sha {rep.artifact_sha256[:12]}")
    return Group(title, *render_checks(body, names), *item_lines(body))


#: The checks scored in the verdict's primary metric unless saturation moved them to another.
_PAIRWISE = ("compatibility", "improvement", "rollback")


def render_checks(body: dict, names: dict[int, str]) -> list[Text]:
    """A gate report body's checks (✓/✗ each) and its failing reasons, one line each, all literal text.

    A rollback report's first check is its ground (why the target may serve again, or that it has
    none): it carries its own sentence in ``line`` and no numbers.
    """
    lines: list[Text] = []
    for check in body.get("checks", []):
        ok = check.get("passed")
        mark = ("   ✓ " if ok else "   ✗ ", "green" if ok else "red")
        if check.get("line"):
            lines.append(Text.assemble(mark, f"{check.get('kind')}: {check['line']}"))
            continue
        lines.append(Text.assemble(
            mark,
            f"{check.get('kind')}: gen {names.get(check.get('query_gen'), check.get('query_gen'))} queries on "
            f"gen {names.get(check.get('gallery_gen'), check.get('gallery_gen'))} gallery "
            f"{pct(check.get('value'))} {check.get('comparison')} {pct(check.get('threshold'))}"
            + (f" ({METRIC_NAMES[check['metric']]})" if check.get("kind") in _PAIRWISE  # saturation: mAP decided
               and check.get("metric") in METRIC_NAMES else ""),
        ))
        if check.get("note"):
            lines.append(Text(f"     {check['note']}", style="dim"))
    for reason in body.get("reasons", []):
        lines.append(Text(f"   – {reason}", style="red"))
    return lines
