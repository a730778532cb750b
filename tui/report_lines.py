"""A gate report's item-level search, as lines of text: what ``verify``/``promote`` print and the
dashboard's report view shows, from the report body alone (stored reports included).

Rich ``Text`` out; stored values are escaped into the templates (:func:`upgrader.core.markup.styled`).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from upgrader.compat.mixed import ranges
from upgrader.core.formatting import pct
from upgrader.core.markup import styled


def ci(iv: dict[str, Any] | None, points: bool = False) -> str:
    """``78.2 [75.6, 80.8]`` (a value with its 95% interval, in %), or signed points for a difference."""
    if not iv or iv.get("value") is None:
        return "-"
    if points:
        return f"{100 * iv['value']:+.1f} [{100 * iv['low']:+.1f}, {100 * iv['high']:+.1f}]"
    return f"{pct(iv['value'])} [{pct(iv['low'])}, {pct(iv['high'])}]"


def _verdict_tag(checks: list[dict[str, Any]], kind: str) -> str:
    found = [c for c in checks if c.get("kind") == kind]
    if not found:
        return ""
    return "[green]ok[/]" if all(c["passed"] for c in found) else "[red]FAIL[/]"


def item_lines(body: dict[str, Any]) -> list[Text]:
    """A report body's item-level search after the move as printed lines (none when it has none).

    Fits 80 columns: a 3 x 2 grid (calibrated, raw, re-index; Recall@1, mAP) with 95% intervals,
    then the gap to a re-index and the no-regression comparison, each with its verdict.
    """
    served = body.get("served")
    if not served:
        return []
    checks = body.get("checks", [])
    metric = "recall@1" if served["metric"] == "recall_at_1" else "mAP"
    out = [styled("[bold]item-level search after the move[/]: {} probe queries of gen {} (%, 95% CI)",
                  served["queries"], served["candidate"]),
           Text(f"{'':10}  {'calibrated':<18}  {'raw':<18}  re-index")]
    for key, name in (("recall_at_1", "recall@1"), ("map", "mAP")):
        cells = [ci(served[s][key]).ljust(18) for s in ("calibrated", "raw", "reindex")]
        out.append(Text(f"  {name:<8}  " + "  ".join(cells).rstrip()))
    tol = body.get("mixed_tolerance")
    rule = f"tolerance {100 * tol:.1f}: {_verdict_tag(checks, 'mixed')}" if tol is not None else "no tolerance set"
    out.append(styled(f"  gap to a re-index ({{}}): {{}} points ({rule})", metric, ci(served["gap"], points=True)))
    reg = served.get("regression")
    if reg is None:
        out.append(styled("  no regression: {}", served.get("why_no_regression", "")))
        return out
    key = served["metric"]
    verdict = "waived" if body.get("allow_regression") else _verdict_tag(checks, "regression")
    out.append(styled(f"  no regression ({{}}) on the gallery as it stands, classes {{}}: {verdict}", metric,
                      _classes(reg["classes"])))
    out.append(styled("    gen {} {} vs production gen {} {}", served["candidate"],
                      pct(reg["candidate"][key]["value"]), reg["production"], pct(reg["production_now"][key]["value"])))
    tell = "" if reg["distinguishable"] else "; the probe set cannot tell them apart"
    out.append(styled("    difference {} points{}", ci(reg["difference"], points=True), tell))
    return out


def _classes(vs: list[int]) -> str:
    return ranges(vs) if vs else "none"
