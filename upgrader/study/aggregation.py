"""Aggregation of study runs: mean ± std over seeds per scenario and method, and the study's targets."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from upgrader.core.jsonable import jsonable
from upgrader.core.vocabulary import HOC_METHODS
from upgrader.study.records import RunRecord

#: What the study sets out to show (README, "Compatibility study"); checked and reported, never enforced.
TARGETS = {
    "hoc_ac_short": 1.0,  # hoc AC on short, every seed
    "hoc_ac_long": 0.95,  # hoc AC on long, every seed
    "hoc_am_over_er_points": 15.0,  # AM(hoc) - AM(er), percentage points
    "mixed_vs_reindex_points": 3.0,  # |mixed - re-index| after the last hoc promotion, points
    # The search users get (held-out queries, served index; upgrader.study.served_search), hoc methods:
    "served_vs_reindex_short": 2.0,  # calibrated, nothing re-embedded, after every step, every seed: points
    "served_vs_reindex_long": 3.0,
    "backfill_fraction": 0.1,  # a backfill of this fraction, in the gain policy's order ...
    "backfill_vs_reindex_points": 1.0,  # ... within this many points of a re-index, and above random
}


def served_value(step: dict[str, Any], key: str) -> float | None:
    """A served figure of one step record: raw | calibrated | reindex, or ``<policy>@<fraction>``
    (calibrated top-1 after that backfill), or ``gap`` (calibrated - reindex); None when not measured."""
    served = step.get("served")
    if not served:
        return None
    if key == "gap":
        return served["calibrated"] - served["reindex"]
    if "@" in key:
        policy, frac = key.split("@")
        for f, _, acc in served.get("backfill", {}).get(policy, []):
            if abs(f - float(frac)) < 1e-9:
                return acc
        return None
    return served.get(key)


def served_keys() -> tuple[str, ...]:
    """The served figures aggregated per step, in the report's column order."""
    return ("raw", "calibrated", "gain@0.05", "gain@0.1", "gain@0.2", "oldest@0.1", "random@0.1", "reindex", "gap")


def _as_stood_change(step: dict[str, Any]) -> float | None:
    """New production's served top-1 on the gallery as it stood minus the previous production's."""
    a, b = step.get("served_as_stood"), step.get("served_before")
    return None if a is None or b is None else a - b

#: The authors' released runs (docs/design.md), for the report: CIFAR-100 training, CIFAR-10 template top-1.
REFERENCE = {
    "d-Simplex-HOC": {"7 tasks": {"AC": 0.95, "AM": 68.90}, "31 tasks": {"AC": 0.65, "AM": 68.07}},
    "ER": {"7 tasks": {"AC": 0.00, "AM": 35.18}, "31 tasks": {"AC": 0.00, "AM": 30.32}},
}


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Summary statistics over the values that are present.

    Args:
        values: one value per seed; None and NaN count as missing.

    Returns:
        {"mean", "std" (population, 0 for one value), "n", "min", "max"}; all None (n 0) when nothing is present.
    """
    xs = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if len(xs) == 0:
        return {"mean": None, "std": None, "n": 0, "min": None, "max": None}
    return {"mean": float(xs.mean()), "std": float(xs.std()), "n": int(len(xs)), "min": float(xs.min()), "max": float(xs.max())}


def mean_matrix(matrices: Sequence[Sequence[Sequence[float]]]) -> list[list[float | None]]:
    """Element-wise mean of square matrices of possibly different sizes.

    Args:
        matrices: one compatibility matrix per run; a shorter chain is padded with NaN, which the mean skips.

    Returns:
        The mean matrix as nested lists, None where no run has a value.
    """
    if not matrices:
        return []
    size = max(len(m) for m in matrices)
    stack = np.full((len(matrices), size, size), np.nan)
    for i, m in enumerate(matrices):
        if len(m):
            arr = np.array(m, dtype=np.float64)
            stack[i, : arr.shape[0], : arr.shape[1]] = arr
    with np.errstate(invalid="ignore"):
        counts = np.sum(~np.isnan(stack), axis=0)
        mean = np.where(counts > 0, np.nansum(stack, axis=0) / np.maximum(counts, 1), np.nan)
    return jsonable(mean)


def _per_step(runs: Sequence[RunRecord], key: str | Callable[[dict[str, Any]], float | None]) -> list[dict[str, Any]]:
    """mean/std of a StepResult field (or of a function of the step record) at every step over runs."""
    read = key if callable(key) else (lambda step: step.get(key))
    steps = max((len(r.steps) for r in runs), default=0)
    return [mean_std([read(r.steps[i]) for r in runs if i < len(r.steps)]) for i in range(steps)]


def _gap(mixed: float | None, reindex: float | None) -> float | None:
    return None if mixed is None or reindex is None else mixed - reindex


def _method_summary(done: Sequence[RunRecord], failed: int) -> dict[str, Any]:
    """The summary of one (scenario, method) over its finished runs; ``failed`` counts the others."""
    return {
        "runs": len(done),
        "failed": failed,
        "seeds": [r.seed for r in done],
        "ac": mean_std([r.ac for r in done]),
        "am": mean_std([r.am for r in done]),
        "final_self_test": mean_std([r.final_self_test for r in done]),
        "final_mixed": mean_std([r.final_mixed for r in done]),
        "final_reindex": mean_std([r.final_reindex for r in done]),
        "mixed_minus_reindex": mean_std([_gap(r.final_mixed, r.final_reindex) for r in done]),
        "final_mixed_items": mean_std([r.final_mixed_items for r in done]),
        "final_reindex_items": mean_std([r.final_reindex_items for r in done]),
        "mixed_minus_reindex_items": mean_std([_gap(r.final_mixed_items, r.final_reindex_items) for r in done]),
        "self_test_rises_all_seeds": bool(done) and all(r.self_test_rises for r in done),
        "refused_steps": {str(r.seed): r.refused_steps for r in done},
        "matrix_mean": mean_matrix([r.matrix for r in done]),
        "self_test_by_step": _per_step(done, "self_test"),
        "mixed_by_step": _per_step(done, "mixed_template"),
        "reindex_by_step": _per_step(done, "reindex_template"),
        "mixed_items_by_step": _per_step(done, "mixed_accuracy"),
        "gate_mixed_estimate_by_step": _per_step(done, "gate_mixed_estimate"),
        "reindex_items_by_step": _per_step(done, "reindex_accuracy"),
        "served_by_step": {k: _per_step(done, lambda st, k=k: served_value(st, k)) for k in served_keys()},
        "as_stood_change_by_step": _per_step(done, _as_stood_change),
        "backfill_curve": _final_curves(done),
        "gate_passed_by_step": [
            [r.steps[i]["gate_passed"] for r in done if i < len(r.steps)]
            for i in range(max((len(r.steps) for r in done), default=0))
        ],
        "seconds": mean_std([r.seconds for r in done]),
    }


def _final_curves(runs: Sequence[RunRecord]) -> dict[str, list[dict[str, Any]]]:
    """policy -> [{fraction, accuracy mean/std}] of the backfill curve after the last step, over runs."""
    out: dict[str, list[dict[str, Any]]] = {}
    lasts = [r.steps[-1]["served"] for r in runs if r.steps and r.steps[-1].get("served")]
    for policy in (lasts[0].get("backfill", {}) if lasts else {}):
        points = lasts[0]["backfill"][policy]
        out[policy] = [{"fraction": f, **mean_std([c["backfill"][policy][i][2] for c in lasts
                                                   if policy in c.get("backfill", {})])}
                       for i, (f, _, _) in enumerate(points)]
    return out


def summarise(runs: Sequence[RunRecord]) -> dict[str, dict[str, Any]]:
    """Aggregate runs over seeds.

    Args:
        runs: every run so far, finished or failed.

    Returns:
        ``{scenario: {method: summary}}`` in the order the runs came, each summary holding mean ± std of AC,
        AM, the final self-test and mixed vs re-index accuracy, the mean matrix and the per-step curves.
    """
    out: dict[str, dict[str, Any]] = {}
    for scenario in dict.fromkeys(r.scenario for r in runs):
        out[scenario] = {}
        for method in dict.fromkeys(r.method for r in runs if r.scenario == scenario):
            mine = [r for r in runs if r.scenario == scenario and r.method == method]
            done = [r for r in mine if r.status == "done"]
            out[scenario][method] = _method_summary(done, len(mine) - len(done))
    return out


#: Records one target: (name, wanted, measured, met).
Check = Callable[[str, str, str, bool | None], None]


def _hoc_checks(add: Check, scenario: str, wanted: float, hoc: Sequence[RunRecord]) -> None:
    """The targets on hoc's own runs: AC, self-test rises, mixed gallery close to a re-index."""
    acs = [r.ac for r in hoc]
    add(f"hoc AC on {scenario}, every seed", f">= {wanted:.2f}", ", ".join(f"s{r.seed}: {r.ac:.3f}" for r in hoc),
        all(a is not None and a >= wanted for a in acs))
    add(f"hoc self-test rises at every promotion ({scenario})", "every seed",
        ", ".join(f"s{r.seed}: {'yes' if r.self_test_rises else 'no'}" for r in hoc), all(r.self_test_rises for r in hoc))
    points = TARGETS["mixed_vs_reindex_points"]
    for protocol, pairs in (("templates", [(r.seed, r.final_mixed, r.final_reindex) for r in hoc]),
                            ("items", [(r.seed, r.final_mixed_items, r.final_reindex_items) for r in hoc])):
        add(f"mixed gallery within {points:.0f} points of re-index after the last hoc promotion ({scenario}, {protocol})",
            f"<= {points:.0f} points",
            ", ".join(f"s{s}: {100 * (m - x):+.1f}" for s, m, x in pairs if m is not None and x is not None),
            all(m is not None and x is not None and 100 * (x - m) <= points for _, m, x in pairs))


def _served_checks(add: Check, scenario: str, runs: Sequence[RunRecord]) -> None:
    """The targets on the search users get (held-out queries through the served index)."""
    if not any(st.get("served") for r in runs for st in r.steps):
        return
    points = TARGETS.get(f"served_vs_reindex_{scenario}", TARGETS["served_vs_reindex_long"])
    gaps = {r.seed: [served_value(st, "gap") for st in r.steps if st.get("promoted")] for r in runs}
    worst = {seed: min((g for g in gs if g is not None), default=None) for seed, gs in gaps.items()}
    add(f"served top-1, calibrated, nothing re-embedded, within {points:.0f} points of a re-index after every step "
        f"({scenario}, {runs[0].method})", f">= -{points:.0f} points",
        ", ".join(f"s{s}: worst {100 * w:+.1f}" for s, w in worst.items() if w is not None),
        all(w is not None and 100 * w >= -points for w in worst.values()))
    frac, within = TARGETS["backfill_fraction"], TARGETS["backfill_vs_reindex_points"]
    rows = [(r.seed, served_value(r.steps[-1], f"gain@{frac}"), served_value(r.steps[-1], f"random@{frac}"),
             served_value(r.steps[-1], "reindex")) for r in runs if r.steps]
    rows = [(s, g, rnd, x) for s, g, rnd, x in rows if g is not None and x is not None]
    if rows:
        add(f"backfill of {100 * frac:.0f}% (gain policy) within {within:.0f} point of a re-index after the last step "
            f"({scenario}, {runs[0].method})", f">= -{within:.0f} point",
            ", ".join(f"s{s}: {100 * (g - x):+.1f}" for s, g, _, x in rows), all(100 * (g - x) >= -within for s, g, _, x in rows))
        add(f"the gain policy beats random at {100 * frac:.0f}% ({scenario}, {runs[0].method})", "gain > random",
            ", ".join(f"s{s}: {100 * g:.1f} vs {100 * rnd:.1f}" for s, g, rnd, _ in rows if rnd is not None),
            all(rnd is not None and g > rnd for _, g, rnd, _ in rows))
    drops = [(r.seed, st["step"], _as_stood_change(st)) for r in runs for st in r.steps
             if st.get("gate_passed") and _as_stood_change(st) is not None]
    add(f"no promotion the gate passed lowers served top-1 on the gallery as it stood ({scenario}, {runs[0].method})",
        ">= 0 points", ", ".join(f"s{s} step {i}: {100 * d:+.1f}" for s, i, d in drops) or "no promotion onto a gallery",
        all(d >= 0 for _, _, d in drops) if drops else None)


def check_targets(runs: Sequence[RunRecord], summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Check the study's targets on its runs.

    Args:
        runs: every run so far.
        summary: :func:`summarise` of those runs.

    Returns:
        One entry per target: its name, what is wanted, what was measured, and whether it is met (None: not measured).
    """
    checks: list[dict[str, Any]] = []

    def add(name: str, target: str, measured: str, met: bool | None) -> None:
        checks.append({"target": name, "wanted": target, "measured": measured, "met": met})

    for scenario, wanted in (("short", TARGETS["hoc_ac_short"]), ("long", TARGETS["hoc_ac_long"])):
        hoc = [r for r in runs if r.scenario == scenario and r.method == "hoc" and r.status == "done"]
        if hoc:
            _hoc_checks(add, scenario, wanted, hoc)
        for method in HOC_METHODS:
            mine = [r for r in runs if r.scenario == scenario and r.method == method and r.status == "done"]
            if mine:
                _served_checks(add, scenario, mine)
        methods = summary.get(scenario, {})
        if "hoc" in methods and "er" in methods and methods["hoc"]["am"]["mean"] is not None and methods["er"]["am"]["mean"] is not None:
            diff = 100 * (methods["hoc"]["am"]["mean"] - methods["er"]["am"]["mean"])
            add(f"AM(hoc) - AM(er) on {scenario}", f">= {TARGETS['hoc_am_over_er_points']:.0f} points", f"{diff:+.1f} points",
                diff >= TARGETS["hoc_am_over_er_points"])
        for method in ("er", "ce"):
            rs = [r for r in runs if r.scenario == scenario and r.method == method and r.status == "done"]
            if rs:
                add(f"the gate refuses {method} generations that break compatibility ({scenario})", "refusals recorded",
                    ", ".join(f"s{r.seed}: steps {r.refused_steps or 'none'}" for r in rs),
                    all(r.refused_steps for r in rs))
    return checks
