"""Figures of the compatibility study (matplotlib, Agg backend: no display needed).

Reads only the results.json content, so the figures can be redrawn from a finished (or partial) study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

METHOD_COLOURS = {"hoc": "tab:green", "hoc-paper": "tab:olive", "bct": "tab:blue", "ce": "tab:orange", "er": "tab:red"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _arr(stats: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if s[key] is None else s[key] for s in stats], dtype=np.float64)


def _panels(n: int) -> tuple[Any, Any, Any]:
    """(pyplot, figure, one row of ``n`` axes sharing y) for the per-method figures."""
    plt = _plt()
    fig, axes = plt.subplots(1, max(n, 1), figsize=(max(3.4 * n, 6.5), 3.6), dpi=110, sharey=True, squeeze=False)
    return plt, fig, axes[0]


def _finish(plt: Any, fig: Any, axes: Any, ylabel: str, title: str, path: Path, legend_loc: str) -> None:
    """Label the first panel, title the figure, save it and free it."""
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=7, loc=legend_loc)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def matrix_figure(scenario: str, method: str, s: dict[str, Any], path: Path) -> None:
    """Heatmap of the seed-mean compatibility matrix, violations (C[t][j] <= C[j][j]) outlined."""
    plt = _plt()
    m = np.array([[np.nan if v is None else v for v in row] for row in s["matrix_mean"]], dtype=np.float64)
    t = m.shape[0]
    lower = np.where(np.tril(np.ones_like(m, dtype=bool)), m, np.nan)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * t, 0.8 + 0.65 * t), dpi=110)
    im = ax.imshow(100 * lower, cmap="viridis", vmin=0, vmax=100)
    for r in range(t):
        for c in range(r + 1):
            if np.isnan(m[r, c]):
                continue
            ax.text(c, r, f"{100 * m[r, c]:.0f}", ha="center", va="center", fontsize=8,
                    color="white" if m[r, c] < 0.6 else "black")
            if c < r and m[r, c] <= m[c, c]:
                ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    ax.set_xticks(range(t), [f"g{j + 1}" for j in range(t)])
    ax.set_yticks(range(t), [f"g{j + 1}" for j in range(t)])
    ax.set_xlabel("gallery generation j")
    ax.set_ylabel("query generation t")
    ac, am = s["ac"], s["am"]
    ax.set_title(f"{scenario} / {method}: AC {ac['mean']:.2f}, AM {100 * am['mean']:.1f}\n(mean of {s['runs']} seeds; red = violation)",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="template top-1 %")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def self_test_figure(scenario: str, methods: dict[str, Any], path: Path) -> None:
    """Self-test accuracy M(t, t) per generation, mean +- std over seeds; refused steps marked with x."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for method, s in methods.items():
        mean, std = 100 * _arr(s["self_test_by_step"], "mean"), 100 * _arr(s["self_test_by_step"], "std")
        x = np.arange(1, len(mean) + 1)
        colour = METHOD_COLOURS.get(method)
        ax.plot(x, mean, marker="o", label=method, color=colour)
        ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=colour)
        refused = [i for i, passed in enumerate(s["gate_passed_by_step"]) if not all(passed)]
        if refused:
            ax.scatter(x[refused], mean[refused], marker="x", s=80, color="black", zorder=5)
    steps = max((len(s["self_test_by_step"]) for s in methods.values()), default=0)
    ax.set_xticks(np.arange(1, steps + 1))
    ax.scatter([], [], marker="x", color="black", label="gate refused (some seed)")
    ax.set_xlabel("generation (scenario step)")
    ax.set_ylabel("self-test template top-1 %")
    ax.set_title(f"{scenario}: self-test accuracy per generation (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def gallery_figure(scenario: str, methods: dict[str, Any], path: Path) -> None:
    """Mixed-gallery search accuracy after each promotion next to the full re-index upper bound."""
    plt, fig, axes = _panels(len(methods))
    for ax, (method, s) in zip(axes, methods.items()):
        mixed, reidx = 100 * _arr(s["mixed_by_step"], "mean"), 100 * _arr(s["reindex_by_step"], "mean")
        mstd, rstd = 100 * _arr(s["mixed_by_step"], "std"), 100 * _arr(s["reindex_by_step"], "std")
        x = np.arange(1, len(mixed) + 1)
        colour = METHOD_COLOURS.get(method)
        ax.errorbar(x, mixed, yerr=mstd, marker="o", color=colour, capsize=3, label="mixed gallery (no re-index)")
        ax.errorbar(x, reidx, yerr=rstd, marker="s", ls="--", color="gray", capsize=3, label="full re-index")
        estimate = 100 * _arr(s.get("gate_mixed_estimate_by_step", []), "mean")
        if len(estimate) == len(x) and np.isfinite(estimate).any():  # what the gate predicted before promoting
            ax.plot(x, estimate, marker="x", ls="none", color="black", label="gate's estimate (probe set)")
        if s.get("mixed_items_by_step"):  # item-level top-1, the harsher protocol, in lighter lines
            ax.plot(x, 100 * _arr(s["mixed_items_by_step"], "mean"), marker=".", ls=":", color=colour, alpha=0.6,
                    label="mixed, nearest item")
            ax.plot(x, 100 * _arr(s["reindex_items_by_step"], "mean"), marker=".", ls=":", color="gray", alpha=0.6,
                    label="re-index, nearest item")
        ax.set_title(method)
        ax.set_xlabel("after step")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
    _finish(plt, fig, axes, "probe template top-1 on the gallery %",
            f"{scenario}: search on the mixed gallery vs full re-index\n(mean ± std over seeds)", path, "lower left")


POLICY_STYLES = {"gain": ("tab:green", "o", "-"), "oldest": ("tab:purple", "s", "--"), "random": ("gray", "^", ":")}


def backfill_figure(scenario: str, methods: dict[str, Any], path: Path) -> None:
    """Served top-1 against the fraction of the gallery backfilled, after the last step, per policy."""
    shown = {m: s for m, s in methods.items() if s.get("backfill_curve")}
    plt, fig, axes = _panels(len(shown))
    for ax, (method, s) in zip(axes, shown.items()):
        for policy, points in s["backfill_curve"].items():
            colour, marker, ls = POLICY_STYLES.get(policy, ("black", ".", "-"))
            x = 100 * np.array([p["fraction"] for p in points])
            y, e = 100 * _arr(points, "mean"), 100 * _arr(points, "std")
            ax.errorbar(x, y, yerr=e, marker=marker, ls=ls, color=colour, capsize=2, label=policy)
        ax.set_title(method)
        ax.set_xlabel("% of the gallery re-embedded")
        ax.grid(alpha=0.3)
    _finish(plt, fig, axes, "served top-1 % (held-out queries)",
            f"{scenario}: backfill after the last step (calibrated; mean ± std over seeds)", path, "lower right")


def served_figure(scenario: str, methods: dict[str, Any], path: Path) -> None:
    """Served top-1 after each step: raw, calibrated, 10% backfill and re-index, per method."""
    plt, fig, axes = _panels(len(methods))
    lines = (("raw", "raw cosine", ":", "x"), ("calibrated", "calibrated", "-", "o"),
             ("gain@0.1", "+10% backfill", "-.", "^"), ("reindex", "full re-index", "--", "s"))
    for ax, (method, s) in zip(axes, methods.items()):
        by = s.get("served_by_step", {})
        colour = METHOD_COLOURS.get(method)
        for key, label, ls, marker in lines:
            if key not in by:
                continue
            y, e = 100 * _arr(by[key], "mean"), 100 * _arr(by[key], "std")
            ax.errorbar(np.arange(1, len(y) + 1), y, yerr=e, ls=ls, marker=marker, capsize=2, label=label,
                        color="gray" if key == "reindex" else colour, alpha=0.6 if key == "raw" else 1.0)
        ax.set_title(method)
        ax.set_xlabel("after step")
        ax.grid(alpha=0.3)
    _finish(plt, fig, axes, "served top-1 % (held-out queries)",
            f"{scenario}: the search users get on the mixed gallery (mean ± std over seeds)", path, "lower left")


def write_figures(data: dict[str, Any], out: str | Path) -> list[str]:
    """Write every figure of a results.json content into ``out``; return their file names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    for scenario, methods in data["summary"].items():
        done = {m: s for m, s in methods.items() if s["runs"]}
        if not done:
            continue
        for method, s in done.items():
            name = f"matrix_{scenario}_{method}.png"
            matrix_figure(scenario, method, s, out / name)
            names.append(name)
        for name, draw in ((f"served_{scenario}.png", served_figure), (f"backfill_{scenario}.png", backfill_figure),
                           (f"self_test_{scenario}.png", self_test_figure), (f"gallery_{scenario}.png", gallery_figure)):
            draw(scenario, done, out / name)
            names.append(name)
    return names
