"""The compatibility matrix of registered generations, and the probe-set reads it shares with the gate.

``compatibility_matrix`` loads each generation's probe embeddings from the registry (embedding the
probe set first where it is missing), fills ``C[t][j] = M(t, j)`` with the gate's own evaluator and
marks each lower-triangle cell with the gate's own verdict for that pair, so the CLI table and the
dashboard's heatmap show what ``verify`` would decide rather than re-deriving the rule. AC counts those
same verdicts, and :meth:`MatrixView.averages` is the one wording of AC, AM and the generation set
they were computed over, for the CLI and the dashboard alike. No torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from registry import Generation
from registry.entities import PRODUCTION

from upgrader.compat.gate import GateConfig, compatibility_check
from upgrader.compat.matrix import PairEvaluator, average_multimodel_accuracy, matrix_from_pairs
from upgrader.compat.metrics import DEFAULT_PRIMARY_METRIC, METRICS
from upgrader.core.errors import InvalidRequest
from upgrader.core.formatting import pct
from upgrader.services.registration import embed_probe_set, known_classes
from upgrader.services.workspace import Workspace


Selection = Literal["default", "live", "named"]


@dataclass(frozen=True)
class MatrixView:
    """The compatibility matrix over some generations, with AC, AM and the gate's verdict per cell."""

    generations: list[Generation]  # row / column order
    matrix: np.ndarray  # float64 [T, T]; C[t][j] = M(query gen t, gallery gen j)
    metric: str
    average_compatibility: float
    average_multimodel_accuracy: float
    production: int | None
    live: list[int]
    # passes[t][j]: whether the gate's compatibility rule M(t, j) > M(j, j) + margin (on the classes
    # both learnt) holds, for the lower triangle j < t; None on and above the diagonal.
    passes: list[list[bool | None]]
    margin: float = 0.0  # the margin ``passes`` was decided with
    # Which generations: "default" (every one not rejected: what `upgrader matrix` and the dashboard
    # show unless told otherwise), "live" (those with gallery items) or "named" (chosen by the caller).
    selection: Selection = "default"

    def ac_text(self) -> str:
        """AC as a fraction with three decimals, ``n/a`` without generations."""
        ac = self.average_compatibility
        return f"{ac:.3f}" if math.isfinite(ac) else "n/a"

    def am_text(self) -> str:
        """AM as a percentage with one decimal (as every accuracy is shown), ``n/a`` without generations."""
        am = self.average_multimodel_accuracy
        return f"{pct(am)} %" if math.isfinite(am) else "n/a"

    def scope(self) -> str:
        """The generation set AC and AM were computed over, in words."""
        ids = ", ".join(str(g.id) for g in self.generations)
        if not ids:
            return {"default": "no generations (none registered, or all rejected)",
                    "live": "no live generations (the gallery is empty)", "named": "no generations"}[self.selection]
        return {"default": f"generations {ids} (every one not rejected)", "live": f"the live generations {ids}",
                "named": f"generations {ids} (as named)"}[self.selection]

    def averages(self) -> str:
        """``AC 1.000   AM 93.2 % over generations 1, 2 (every one not rejected)``: the CLI's caption."""
        return f"AC {self.ac_text()}   AM {self.am_text()} over {self.scope()}"


def probe_labels(ws: Workspace) -> tuple[np.ndarray, np.ndarray]:
    """The class vertex of each probe query and of each probe gallery item."""
    reg = ws.registry
    return reg.probe_set("query").vertices, reg.probe_set("gallery").vertices


def load_probe(ws: Workspace, gen_ids: Iterable[int]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Probe query and gallery embeddings of each generation, embedding them first where they are missing
    or stale (stored for another artifact than the generation's current one).

    Raises:
        ArtifactError: a generation to embed has a missing, changed or degenerate artifact.
    """
    reg = ws.registry
    queries: dict[int, np.ndarray] = {}
    galleries: dict[int, np.ndarray] = {}
    for gid in dict.fromkeys(gen_ids):
        if not reg.has_probe_embeddings(gid):  # missing, or computed from an earlier artifact
            embed_probe_set(ws, reg.get_generation(gid))
        queries[gid] = reg.get_probe_embeddings(gid, "query")[1]
        galleries[gid] = reg.get_probe_embeddings(gid, "gallery")[1]
    return queries, galleries


def class_sets(ws: Workspace, gen_ids: Iterable[int]) -> dict[int, list[int]]:
    """Classes each generation learnt (generations that don't say are left out: they know all)."""
    out: dict[int, list[int]] = {}
    for gid in dict.fromkeys(gen_ids):
        classes = known_classes(ws.registry.get_generation(gid))
        if classes is not None:
            out[gid] = classes
    return out


def _chosen(ws: Workspace, refs: Sequence[str | int] | None, live_only: bool) -> list[Generation]:
    reg = ws.registry
    if refs:
        gens = [reg.get_generation(r) for r in refs]
    elif live_only:
        gens = [reg.get_generation(g) for g in reg.live_generations()]
    else:
        gens = [g for g in reg.list_generations() if g.status != "rejected"]
    return sorted(gens, key=lambda g: g.id)


def _config(metric: str, margin: float) -> GateConfig:
    if metric not in METRICS:
        raise InvalidRequest(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    try:
        return GateConfig(margin=margin, primary_metric=metric)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def compatibility_matrix(
    ws: Workspace,
    refs: Sequence[str | int] | None = None,
    *,
    live_only: bool = False,
    metric: str = DEFAULT_PRIMARY_METRIC,
    margin: float = 0.0,
) -> MatrixView:
    """C[t][j] = M(t, j) over the chosen generations (all non-rejected by default), with AC and AM.

    Every evaluated pair is recorded in the registry, so the dashboard and later reads agree.

    Args:
        ws: the workspace.
        refs: generation ids or names; default every generation that was not rejected.
        live_only: without ``refs``, only the generations with items in the gallery.
        metric: which of the retrieval metrics fills the matrix and decides the cells.
        margin: the headroom the gate's rule needs for a lower-triangle cell to pass.

    Raises:
        InvalidRequest: an unknown metric, or a negative margin.
    """
    cfg = _config(metric, margin)
    reg = ws.registry
    gens = _chosen(ws, refs, live_only)
    ids = [g.id for g in gens]
    queries, galleries = load_probe(ws, ids)
    q_labels, g_labels = probe_labels(ws)
    ev = PairEvaluator(q_labels, g_labels, queries, galleries, class_sets(ws, ids))
    values = {(t, j): ev.metrics(t, j).get(metric) for t in ids for j in ids}
    passes = [
        [compatibility_check(ev, t, j, cfg, interval=False)[0].passed if c < r else None for c, j in enumerate(ids)]
        for r, t in enumerate(ids)
    ]
    reg.record_evaluations((q, g, m.as_dict()) for (q, g), m in ev.evaluations.items())
    matrix = matrix_from_pairs(ids, values)
    return MatrixView(
        generations=gens,
        matrix=matrix,
        metric=metric,
        average_compatibility=gate_average_compatibility(passes),
        average_multimodel_accuracy=average_multimodel_accuracy(matrix) if ids else math.nan,
        production=reg.get_alias(PRODUCTION),
        live=reg.live_generations(),
        passes=passes,
        margin=cfg.margin,
        selection="named" if refs else "live" if live_only else "default",
    )


def gate_average_compatibility(passes: Sequence[Sequence[bool | None]]) -> float:
    """AC = 1 - 2/(T(T-1)) * #{j < t: the gate refuses (t, j)}, from the cells' own verdicts.

    The gate's rule is the paper's ``C[t][j] > C[j][j]`` at margin 0 on generations that learnt every
    class of the older one; counting its verdicts keeps AC in step with the cells' colours where they
    differ (a margin, a narrower candidate scored on shared classes, two sides at 100% decided on mAP).
    T = 1 gives 1; no generations give NaN (shown as n/a).
    """
    cells = [p for row in passes for p in row if p is not None]
    if not passes:
        return math.nan
    return 1.0 - sum(not p for p in cells) / len(cells) if cells else 1.0


__all__ = [
    "MatrixView", "Selection", "class_sets", "compatibility_matrix", "gate_average_compatibility", "load_probe",
    "probe_labels",
]
