"""Formatting shared by the dashboard's views: badges, percentages, sizes, heatmap colours, the lineage tree.

Pure functions over entities and numbers; Rich renderables out. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timezone

from rich.color import Color
from rich.style import Style
from rich.text import Text

from upgrader.services.status import GenerationSummary

#: How the dashboard prints a timestamp; tests pass a fixed one so snapshots do not change.
TimeFormat = Callable[[datetime], str]

STATUS_STYLES: dict[str, str] = {
    "candidate": "bold black on yellow",
    "verified": "bold black on green",
    "rejected": "bold white on red",
    "production": "bold white on dark_green",
    "retired": "dim",
}


def local_time(dt: datetime) -> str:
    """A timestamp in the local zone, to the minute (registry times are UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone().strftime("%Y-%m-%d %H:%M")


def human_bytes(n: int | None, *, compact: bool = False) -> str:
    """1536 -> '1.5 KiB' ('1.5K' compact); None -> 'missing'."""
    if n is None:
        return "missing"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            if compact:
                return f"{size:.0f}{unit[0]}" if size >= 100 or unit == "B" else f"{size:.1f}{unit[0]}"
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def status_badge(status: str) -> Text:
    """The status as a coloured badge (production in reverse green)."""
    return Text(f" {status} ", style=STATUS_STYLES.get(status, ""))


def heat_style(value: float, low: float = 0.0, high: float = 1.0) -> Style:
    """Background colour of a heatmap cell: red (low) through amber to green (high), readable text.

    The colours are absolute (not theme variables) so a cell means the same in light and dark themes.
    """
    if value is None or math.isnan(value):
        return Style(color="grey50")
    span = max(high - low, 1e-9)
    t = min(max((value - low) / span, 0.0), 1.0)
    # Hue from 0 (red) to 120 (green) degrees, moderate saturation and lightness.
    r, g, b = _hsl_to_rgb(t * 120.0, 0.55, 0.38)
    return Style(bgcolor=Color.from_rgb(r, g, b), color="white")


def _hsl_to_rgb(h: float, s: float, lum: float) -> tuple[int, int, int]:
    c = (1 - abs(2 * lum - 1)) * s
    x = c * (1 - abs((h / 60.0) % 2 - 1))
    m = lum - c / 2
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return round((r + m) * 255), round((g + m) * 255), round((b + m) * 255)


def lineage_order(rows: list[GenerationSummary]) -> list[tuple[GenerationSummary, str]]:
    """Rows in tree order (children under their parent, by id) with a tree prefix for the name.

    A generation whose parent is unknown starts a new root, so nothing is ever left out.
    """
    ids = {r.generation.id for r in rows}
    children: dict[int | None, list[GenerationSummary]] = {}
    for r in sorted(rows, key=lambda r: r.generation.id):
        parent = r.generation.parent_id if r.generation.parent_id in ids else None
        children.setdefault(parent, []).append(r)
    out: list[tuple[GenerationSummary, str]] = []

    def walk(parent: int | None, indent: str) -> None:
        kids = children.get(parent, [])
        for i, r in enumerate(kids):
            last = i == len(kids) - 1
            prefix = "" if parent is None else indent + ("└─" if last else "├─")
            out.append((r, prefix))
            walk(r.generation.id, "" if parent is None else indent + ("  " if last else "│ "))

    walk(None, "")
    return out


def bar(value: int, maximum: int, width: int) -> str:
    """A horizontal bar of block characters, eighths included."""
    if maximum <= 0 or value <= 0:
        return ""
    eighths = round(width * 8 * value / maximum)
    full, part = divmod(eighths, 8)
    return "█" * full + ("" if part == 0 else " ▏▎▍▌▋▊▉"[part])
