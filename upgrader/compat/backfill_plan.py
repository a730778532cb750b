"""Which stored gallery items to re-embed first, and what each fraction re-embedded is worth.

Pure numpy. Re-embedding ("backfilling") an item with production moves it from its old generation's
embedding space into production's, so production's queries rank it as they would after a re-index.
A budget (N items, or P% of the gallery) buys most when it goes to the items whose old embeddings
cost most searches. The gallery is cut into groups (class, generation that stores it); on the probe
set each group's switch to production is scored alone (the gain in item-level Recall@1 of the
composed probe gallery, :mod:`upgrader.compat.item_search`), and the ``gain`` policy takes the
groups in order of gain per real item. ``oldest`` (lowest generation first) and ``random`` are the
policies it is measured against.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

#: Policies, the measured one first.
POLICIES: tuple[str, ...] = ("gain", "oldest", "random")

Holders = dict[int, dict[int, int]]  # class vertex -> {generation: real items}


@dataclass(frozen=True)
class Group:
    """The real gallery items of one class stored by one old generation."""

    vertex: int
    generation: int
    items: int
    gain: float = 0.0  # probe Recall@1 gained by re-embedding this group alone (the gain policy's key)


def groups_of(holders: Mapping[int, Mapping[int, int]], production: int) -> list[Group]:
    """Every (class, old generation) group with items; production's own items need no backfill."""
    return [Group(int(v), int(g), int(n)) for v, gens in sorted(holders.items()) for g, n in sorted(gens.items())
            if int(g) != int(production) and n > 0]


def moved(holders: Mapping[int, Mapping[int, int]], production: int, switched: Mapping[tuple[int, int], int]) -> Holders:
    """``holders`` after ``switched[(vertex, gen)]`` items of each group were re-embedded by production."""
    out: Holders = {int(v): {int(g): int(n) for g, n in gens.items()} for v, gens in holders.items()}
    for (v, g), n in switched.items():
        take = min(int(n), out[v].get(g, 0))
        out[v][g] -= take
        out[v][production] = out[v].get(production, 0) + take
        if out[v][g] == 0:
            del out[v][g]
    return out


def order_groups(
    holders: Mapping[int, Mapping[int, int]],
    production: int,
    policy: str,
    score: Callable[[Holders], float],
    *,
    seed: int = 0,
) -> list[Group]:
    """The groups in the order ``policy`` re-embeds them.

    Args:
        holders: the real gallery's composition, class vertex -> {generation: items}.
        production: the generation that re-embeds.
        policy: ``gain`` (gain per item, scored by ``score`` with each group switched alone),
            ``oldest`` (lowest generation id, then class) or ``random``.
        score: probe Recall@1 of a composition (the caller's item-level estimate).
    """
    groups = groups_of(holders, production)
    if policy == "oldest":
        return sorted(groups, key=lambda gr: (gr.generation, gr.vertex))
    if policy == "random":
        rng = np.random.default_rng(seed)
        return [groups[i] for i in rng.permutation(len(groups))]
    if policy != "gain":
        raise ValueError(f"unknown backfill policy {policy!r}; use one of {', '.join(POLICIES)}")
    base = score(dict(holders))
    scored = [Group(gr.vertex, gr.generation, gr.items,
                    score(moved(holders, production, {(gr.vertex, gr.generation): gr.items})) - base) for gr in groups]
    return sorted(scored, key=lambda gr: (-gr.gain / gr.items, gr.generation, gr.vertex))


def take_budget(groups: list[Group], budget: int) -> dict[tuple[int, int], int]:
    """How many items of each group a budget of ``budget`` items re-embeds, in the groups' order."""
    left, out = max(int(budget), 0), {}
    for gr in groups:
        if left <= 0:
            break
        n = min(gr.items, left)
        out[(gr.vertex, gr.generation)] = n
        left -= n
    return out


def curve(
    holders: Mapping[int, Mapping[int, int]],
    production: int,
    groups: list[Group],
    score: Callable[[Holders], float],
    fractions: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0),
) -> list[tuple[float, int, float]]:
    """(fraction of the gallery, items re-embedded, estimated Recall@1) for each fraction."""
    total = sum(int(n) for gens in holders.values() for n in gens.values())
    out = []
    for f in fractions:
        budget = int(round(f * total))
        out.append((float(f), min(budget, sum(gr.items for gr in groups)),
                    float(score(moved(holders, production, take_budget(groups, budget))))))
    return out
