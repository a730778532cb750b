"""What the gate reads from the registry for one generation: probe embeddings, learnt classes, the
live generations, production, who holds which class in the gallery, and the artifact's sha256 now.

Shared by promotion (:mod:`upgrader.services.promotion`) and the rollback rule
(:mod:`upgrader.services.rollback_rule`), so both judge the same numbers. No torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from registry import Generation

from upgrader.compat.gate import GateInputs
from upgrader.compat.mixed import gallery_holders
from upgrader.core.files import sha256_file
from upgrader.services.matrix import class_sets, load_probe, probe_labels
from upgrader.services.workspace import Workspace


def current_sha(ws: Workspace, gen: Generation) -> str | None:
    """The sha256 of the generation's artifact file as it is now (None when it is missing)."""
    path = ws.resolve(gen.onnx_path)
    return sha256_file(path) if path.is_file() else None


def gate_inputs(ws: Workspace, gen: Generation, gens: Iterable[int]) -> GateInputs:
    """The gate's inputs for ``gen`` as the candidate (or rollback target), with the probe embeddings
    of the live generations, production and ``gens`` (embedded first where missing or stale)."""
    reg = ws.registry
    live = reg.live_generations()
    production = reg.get_alias()
    needed = [gen.id, *live, *([production] if production is not None else []), *gens]
    queries, galleries = load_probe(ws, needed)
    q_labels, g_labels = probe_labels(ws)
    return GateInputs(
        query_labels=q_labels,
        gallery_labels=g_labels,
        query_embeddings=queries,
        gallery_embeddings=galleries,
        candidate=gen.id,
        live=live,
        production=production,
        registered_sha256=gen.onnx_sha256,
        artifact_sha256=current_sha(ws, gen),
        classes=class_sets(ws, [gen.id, *needed]),
        gallery_holders=holders(ws, live),
    )


def holders(ws: Workspace, live: Sequence[int]) -> dict[int, dict[int, int]]:
    """Class vertex -> {live generation: its gallery items of that class} (one GROUP BY)."""
    reg = ws.registry
    return gallery_holders(reg.gallery_label_counts(), reg.interface().label_map, live)


__all__ = ["current_sha", "gate_inputs", "holders"]
