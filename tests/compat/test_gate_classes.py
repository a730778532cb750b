"""The gate scores each pair on the probe classes both generations learnt."""

from __future__ import annotations

import numpy as np

from upgrader.compat import gate
from upgrader.compat.metrics import shared_classes


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _case() -> gate.GateInputs:
    """gen 1 learnt classes 0, 1 and put 2 and 3 (unknown to it) on top of class 0; gen 2 learnt 0, 1, 2:
    the same places for 0 and 1 with less noise, and class 2 moved to its own direction."""
    rng = np.random.default_rng(0)
    dim, per = 6, 20
    labels = np.repeat(np.arange(4), per)
    axis = np.eye(dim)
    noise = rng.normal(size=(len(labels), dim))

    def embed(centres: dict[int, np.ndarray], sigma: float) -> np.ndarray:
        return _unit(np.stack([centres[c] for c in labels]) + sigma * noise)

    g1 = {0: axis[0], 1: axis[1], 2: axis[0] + 0.2 * axis[3], 3: axis[0] + 0.2 * axis[4]}
    g2 = {0: axis[0], 1: axis[1], 2: axis[2], 3: axis[0] + 0.2 * axis[4]}
    q1, q2 = embed(g1, 0.45), embed(g2, 0.35)
    gal1, gal2 = embed(g1, 0.45)[::-1], embed(g2, 0.35)[::-1]
    return gate.GateInputs(
        query_labels=labels, gallery_labels=labels[::-1],
        query_embeddings={1: q1, 2: q2}, gallery_embeddings={1: gal1, 2: gal2},
        candidate=2, live=[1], production=1, registered_sha256="ab", artifact_sha256="ab",
        classes={1: [0, 1], 2: [0, 1, 2]},
    )


def test_shared_classes_is_the_intersection_and_none_means_all() -> None:
    assert shared_classes([0, 1], [0, 1, 2]) == frozenset({0, 1})
    assert shared_classes(None, [3]) == frozenset({3})
    assert shared_classes(None, None) is None


def test_a_stationary_upgrade_that_learns_a_new_class_passes() -> None:
    verdict = gate.evaluate_candidate(_case())
    assert verdict.passed, verdict.explain()
    comp = next(c for c in verdict.checks if c.kind == "compatibility")
    assert comp.value > comp.threshold


def test_scored_on_every_probe_class_the_same_upgrade_fails() -> None:
    inputs = _case()
    everything = gate.GateInputs(**{**inputs.__dict__, "classes": {}})
    verdict = gate.evaluate_candidate(everything)
    assert not verdict.passed
    assert any("gen 2 queries on gen 1 gallery" in r for r in verdict.reasons)
