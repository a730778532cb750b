"""Read-only summaries of a workspace for the CLI tables and the dashboard (no torch, no writes
except caching self-test evaluations)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from registry import AliasMove, Generation

from upgrader.compat.metrics import DEFAULT_PRIMARY_METRIC, RetrievalMetrics, self_test
from upgrader.services.matrix import probe_labels
from upgrader.services.registration import known_classes
from upgrader.services.workspace import Workspace
from upgrader.services.workspace_init import read_splits


@dataclass(frozen=True)
class GenerationSummary:
    """One generation with what the lineage table shows about it."""

    generation: Generation
    is_production: bool
    self_test: float | None  # M(g, g) in the primary metric; None without probe embeddings
    gallery_items: int  # gallery items this generation wrote
    artifact_bytes: int | None  # size of the ONNX file, None when missing


@dataclass(frozen=True)
class WorkspaceStatus:
    """The state of a workspace at a glance."""

    home: str
    registry_url: str
    dataset: str
    num_classes: int
    embedding_dim: int
    classes_assigned: int
    probe_counts: dict[str, int]
    generations: int
    by_status: dict[str, int]
    production: Generation | None
    gallery_total: int
    gallery_by_generation: dict[int, int]
    last_move: AliasMove | None
    probe_sizing: str | None = None  # how init sized the probe set (None: not recorded, an older workspace)
    gallery_split: str = ""  # where `gallery add` takes items from: a test split, a held-out split, or none
    gallery_split_kind: str = ""  # "test" | "held-out" | "none"


def probe_self_test(
    ws: Workspace,
    gen_id: int,
    classes: Sequence[int] | None,
    labels: tuple[np.ndarray, np.ndarray] | None = None,
) -> RetrievalMetrics:
    """M(g, g) of one generation from its stored probe embeddings, on the probe classes in ``classes``.

    Args:
        ws: the workspace.
        gen_id: a generation whose probe set is embedded.
        classes: the vertices to score on; None or empty means every probe class (what a generation
            that does not say what it learnt knows).
        labels: the probe queries' and probe gallery items' vertices, when the caller has read them
            already (reading the probe set loads its pixels too).
    """
    reg = ws.registry
    q_labels, g_labels = labels if labels is not None else probe_labels(ws)
    wanted = frozenset(int(c) for c in classes) if classes else None
    return self_test(
        reg.get_probe_embeddings(gen_id, "query")[1], q_labels, reg.get_probe_embeddings(gen_id, "gallery")[1],
        g_labels, wanted,
    )


def self_tests(ws: Workspace, metric: str = DEFAULT_PRIMARY_METRIC) -> dict[int, float]:
    """M(g, g) of every generation with probe embeddings, from stored evaluations where present
    (computed and recorded otherwise)."""
    reg = ws.registry
    stored = {e.query_gen: e.metrics for e in reg.evaluations() if e.query_gen == e.gallery_gen}
    out: dict[int, float] = {}
    missing: list[tuple[int, int, dict[str, float]]] = []
    labels: tuple[np.ndarray, np.ndarray] | None = None
    for gen in reg.list_generations():
        if gen.id in stored and metric in stored[gen.id]:
            out[gen.id] = float(stored[gen.id][metric])
            continue
        if not reg.has_probe_embeddings(gen.id):  # missing or stale: no self-test to show
            continue
        labels = labels or probe_labels(ws)
        m = probe_self_test(ws, gen.id, known_classes(gen), labels)
        out[gen.id] = m.get(metric)
        missing.append((gen.id, gen.id, m.as_dict()))
    if missing:
        reg.record_evaluations(missing)
    return out


def generation_rows(ws: Workspace) -> list[GenerationSummary]:
    """The lineage, oldest first, with production marked."""
    reg = ws.registry
    prod = reg.get_alias()
    tests = self_tests(ws)
    counts = reg.gallery_counts()
    rows = []
    for gen in reg.list_generations():
        path = ws.resolve(gen.onnx_path)
        rows.append(
            GenerationSummary(
                generation=gen,
                is_production=gen.id == prod,
                self_test=tests.get(gen.id),
                gallery_items=counts.get(gen.id, 0),
                artifact_bytes=path.stat().st_size if path.is_file() else None,
            )
        )
    return rows


def workspace_status(ws: Workspace) -> WorkspaceStatus:
    """Everything the status command prints."""
    reg = ws.registry
    iface = reg.interface()
    gens = reg.list_generations()
    by_status: dict[str, int] = {}
    for g in gens:
        by_status[g.status] = by_status.get(g.status, 0) + 1
    prod = reg.get_alias()
    counts = reg.gallery_counts()
    history = reg.alias_history()
    splits = read_splits(ws)
    return WorkspaceStatus(
        home=str(ws.home),
        registry_url=reg.url,
        dataset=ws.config.dataset,
        num_classes=iface.num_classes,
        embedding_dim=iface.embedding_dim,
        classes_assigned=len(iface.label_map),
        probe_counts=reg.probe_counts(),
        generations=len(gens),
        by_status=by_status,
        production=reg.get_generation(prod) if prod is not None else None,
        gallery_total=sum(counts.values()),
        gallery_by_generation=counts,
        last_move=history[-1] if history else None,
        probe_sizing=splits.probe.describe() if splits.probe else None,
        gallery_split=splits.gallery.describe(),
        gallery_split_kind=splits.gallery.kind,
    )
