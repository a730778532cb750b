"""report.md of the compatibility study, rendered from the results.json content alone.

One function per part of the report (introduction, results, targets, reference, per-run table,
figures, footer); :func:`render_report` joins them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from upgrader.core.formatting import pct


def _fmt(stat: dict[str, Any], *, percent: bool = True, digits: int = 1) -> str:
    """``mean ± std`` of a :func:`upgrader.study.aggregation.mean_std` result, ``-`` when nothing was measured."""
    if stat.get("mean") is None:
        return "-"
    scale = 100.0 if percent else 1.0
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def _intro(data: dict[str, Any]) -> list[str]:
    """Title, configuration, code, status and what the metrics mean."""
    cfg = data["config"]
    code = data.get("code") or {}
    replacement_epochs = cfg["replacement_epochs"] if cfg["replacement_epochs"] is not None else 2 * cfg["epochs"]
    return [
        "# Compatibility study",
        "",
        f"Dataset `{cfg['dataset']}`, K = {cfg['num_classes']}; scenarios {', '.join(cfg['scenarios'])}; methods "
        f"{', '.join(cfg['methods'])}; seeds 0..{cfg['seeds'] - 1}; device `{cfg['device']}`.",
        f"Sizes: {cfg['train_per_class']} training images per new class, {cfg['epochs']} epochs "
        f"({replacement_epochs} for a replacement), "
        f"{cfg['memory_per_class']} rehearsal images per class, {cfg['gallery_per_class']} gallery items per new class, "
        f"probe set {cfg['probe_per_class']} queries + {cfg['probe_per_class']} gallery items per class"
        + ("; hoc methods trained with their own features of other classes as extra negatives (`--own-negatives`)."
           if cfg.get("own_negatives") else "."),
        f"Code: commit `{code.get('git_commit') or '?'}`"
        + (f", uncommitted: {', '.join(data['code']['uncommitted'])}" if code.get("uncommitted") else "") + ".",
        f"Status: {data['status']} — {data['runs_done']} of {data['runs_planned']} runs finished"
        + (f", {data['runs_failed']} failed" if data["runs_failed"] else "") + f"; {data['seconds']:.0f} s so far.",
        "",
        "Every run trained, exported, registered, gated (`promote`) and indexed through the product's services in its own "
        "workspace; refused generations were " + ("forced (recorded as forced in the alias history) so the chain goes on."
                                                  if cfg["force_refused"] else "left out of the chain."),
        "Metrics: AC / AM over the promoted chain (template top-1 on the probe set, each pair on the classes both generations learnt: docs/design.md §3 and README); self-test = M(t, t) of the last "
        "generation; mixed gallery = the production generation's probe queries searched on the stored gallery (items "
        "embedded by the generations that were production when they were added), scored with the two protocols of docs/design.md §3: "
        "templates (each class's items averaged, the primary metric) and items (the nearest item's label); re-index = "
        "the same after re-embedding every item with production. Mean ± std over seeds, in percent (AC as a fraction).",
        "",
    ]


#: Column heads of the served table, by :func:`upgrader.study.aggregation.served_keys` key.
SERVED_HEADS = {"raw": "raw", "calibrated": "calibrated", "gain@0.05": "+5% backfill", "gain@0.1": "+10%",
                "gain@0.2": "+20%", "oldest@0.1": "+10% oldest", "random@0.1": "+10% random", "reindex": "re-index",
                "gap": "calibrated − re-index"}


def _served_table(data: dict[str, Any]) -> list[str]:
    """The search users get, per scenario, method and step (mean ± std over seeds)."""
    rows = [(sc, m, s) for sc, methods in data["summary"].items() for m, s in methods.items()
            if any(st["n"] for st in s.get("served_by_step", {}).get("calibrated", []))]
    if not rows:
        return []
    keys = list(SERVED_HEADS)
    lines = [
        "## The search users get",
        "",
        "Held-out queries (test images in neither the gallery nor the probe set) embedded by production and searched "
        "through the served index on the gallery as it stands after each step: nearest-item top-1 %, raw cosine, with "
        "the stored calibration (what `upgrader serve` answers with), after re-embedding 5/10/20% of the gallery in the "
        "`gain` policy's order (and 10% oldest-first or at random), and after a full re-index. *as stood* = the new "
        "production's calibrated top-1 on the gallery before its own items joined, minus the previous production's.",
        "",
        "| scenario | method | step | " + " | ".join(SERVED_HEADS[k] for k in keys) + " | as stood: new − old |",
        "|---|---|---|" + "---|" * (len(keys) + 1),
    ]
    for sc, m, s in rows:
        by = s["served_by_step"]
        for i in range(len(by["calibrated"])):
            lines.append(f"| {sc} | {m} | {i + 1} | " + " | ".join(_fmt(by[k][i]) for k in keys)
                         + f" | {_fmt(s['as_stood_change_by_step'][i])} |")
    return lines + [""]


def _pretrained_table(data: dict[str, Any]) -> list[str]:
    """The replacement from a pretrained backbone against one from scratch, per method, when both ran."""
    pre, scratch = data["summary"].get("pretrained", {}), data["summary"].get("from-scratch", {})
    methods = [m for m in pre if m in scratch and pre[m]["runs"] and scratch[m]["runs"]]
    if not methods:
        return []
    lines = ["## Replacement by a pretrained model", "",
             "The lineage learns classes 0-5; its replacement (resnet_wide, step 3) starts from a backbone pretrained "
             "with cross-entropy on classes 6-9 (`pretrained`) or from random weights (`from-scratch`), same sizes.", "",
             "| method | replacement from | AC | AM | replacement self-test | served calibrated | served re-index |",
             "|---|---|---|---|---|---|---|"]
    for m in methods:
        for label, s in (("pretrained backbone", pre[m]), ("scratch", scratch[m])):
            by = s.get("served_by_step", {})
            lines.append(f"| {m} | {label} | {_fmt(s['ac'], percent=False, digits=3)} | {_fmt(s['am'])} | "
                         f"{_fmt(s['self_test_by_step'][-1])} | {_fmt((by.get('calibrated') or [{}])[-1])} | "
                         f"{_fmt((by.get('reindex') or [{}])[-1])} |")
    return lines + [""]


def _results_table(data: dict[str, Any]) -> list[str]:
    """Mean ± std per scenario and method."""
    lines = [
        "## Results",
        "",
        "| scenario | method | runs | AC | AM | final self-test | mixed gallery | full re-index | mixed − re-index "
        "| mixed vs re-index (items) | gate refusals (steps, per seed) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, methods in data["summary"].items():
        for method, s in methods.items():
            refusals = "; ".join(f"s{seed}: {','.join(map(str, st)) or '-'}" for seed, st in s["refused_steps"].items())
            lines.append(
                f"| {scenario} | {method} | {s['runs']}{' (' + str(s['failed']) + ' failed)' if s['failed'] else ''} | "
                f"{_fmt(s['ac'], percent=False, digits=3)} | {_fmt(s['am'])} | {_fmt(s['final_self_test'])} | "
                f"{_fmt(s['final_mixed'])} | {_fmt(s['final_reindex'])} | {_fmt(s['mixed_minus_reindex'])} | "
                f"{_fmt(s['final_mixed_items'])} vs {_fmt(s['final_reindex_items'])} | {refusals or '-'} |"
            )
    return lines


def _targets_table(data: dict[str, Any]) -> list[str]:
    """Each target, what was measured and whether it is met."""
    lines = ["", "## Targets", "", "| target | wanted | measured | met |", "|---|---|---|---|"]
    for c in data["targets"]:
        met = "-" if c["met"] is None else ("yes" if c["met"] else "**no**")
        lines.append(f"| {c['target']} | {c['wanted']} | {c['measured']} | {met} |")
    return lines


def _reference() -> list[str]:
    """The authors' released numbers (:data:`upgrader.study.aggregation.REFERENCE`) in words."""
    return [
        "",
        "Reference (the authors' released runs, CIFAR-100 training, CIFAR-10 retrieval): d-Simplex-HOC AC 0.95 / AM 68.90 "
        "over 7 tasks, AC 0.65 / AM 68.07 over 31; ER AC 0.00 / AM 35.18 (7) and 0.00 / 30.32 (31).",
    ]


def _run_row(r: dict[str, Any]) -> str:
    """One run's row of the per-run table."""
    if r["status"] != "done":
        return f"| {r['scenario']} | {r['method']} | {r['seed']} | failed: {r['error']} | | | | | {r['seconds']:.0f} | |"
    st = " → ".join(f"{100 * s['self_test']:.1f}" for s in r["steps"])
    gates = " ".join("pass" if s["gate_passed"] else ("FORCED" if s["forced"] else "REFUSED") for s in r["steps"])
    return (
        f"| {r['scenario']} | {r['method']} | {r['seed']} | {r['ac']:.3f} | {100 * r['am']:.1f} | {st} | {gates} | "
        f"{pct(r['final_mixed'])} / {pct(r['final_reindex'])}; {pct(r.get('final_mixed_items'))} / "
        f"{pct(r.get('final_reindex_items'))} | {r['seconds']:.0f} | "
        f"{Path(r['workspace']).name if r['workspace'] else '(removed)'} |"
    )


def _per_run_table(data: dict[str, Any]) -> list[str]:
    """Every run: AC, AM, self-test and gate verdict by step, final gallery accuracies, time, workspace."""
    return [
        "",
        "## Per run",
        "",
        "| scenario | method | seed | AC | AM | self-test by step | gate by step | mixed / re-index after the last step "
        "(templates; items) | s | workspace |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(_run_row(r) for r in data["runs"]),
    ]


def _figures(data: dict[str, Any]) -> list[str]:
    """The PNG figures, inlined; nothing when none were written."""
    if not data.get("figures"):
        return []
    lines = ["", "## Figures", ""]
    for fig in data["figures"]:
        lines += [f"![{fig}]({fig})", ""]
    return lines


def _footer() -> list[str]:
    """How to re-derive a run's numbers from its kept workspace."""
    return [
        "",
        "Re-derive any run's numbers from its kept workspace: `upgrader matrix --home <out>/workspaces/<run>` "
        "or `upgrader.study.runner.registry_figures(home, generation_ids)`.",
        "",
    ]


def render_report(data: dict[str, Any]) -> str:
    """Render report.md.

    Args:
        data: the results.json content (finished or partial).

    Returns:
        The Markdown text.
    """
    parts = (_intro(data), _served_table(data), _pretrained_table(data), _results_table(data), _targets_table(data), _reference(), _per_run_table(data),
             _figures(data), _footer())
    return "\n".join(line for part in parts for line in part)
