"""How numbers read for people, the same in the CLI, the dashboard and the study's report."""

from __future__ import annotations

import math


def pct(x: float | None) -> str:
    """A [0, 1] metric as a percentage with one decimal; '-' when missing (None or NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}"
