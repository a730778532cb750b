"""Backfill: re-embed stored gallery items with production, where it gains most, while serving goes on.

A gallery written by several generations searches worse than a re-index (each generation's items sit
in its own embedding space). Re-embedding an item from its source with production's artifact moves it
into production's space. Which items first is decided on the probe set
(:mod:`upgrader.compat.backfill_plan`): the gallery is cut into (class, old generation) groups, and the
``gain`` policy takes them in order of production's calibrated item-level Recall@1 gained per item on
a probe gallery composed like the real one (:mod:`upgrader.compat.item_search`); ``oldest`` and
``random`` are what it is measured against. Within a group the oldest items go first.

Each batch is one registry transaction (:meth:`Registry.reembed_gallery_items`): a server following
the gallery's changes sees a batch's items switch generation together or not at all, a kill loses at
most the batch in flight, and a re-run continues, since items production re-embedded are no longer
candidates. An item whose source cannot be read is reported and skipped; its old embedding stays.
No torch.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from registry import Generation, GallerySource, UnknownGalleryItem

from upgrader.compat.backfill_plan import POLICIES, Group, Holders, curve, moved, order_groups, take_budget
from upgrader.compat.item_search import compose, cross_validated
from upgrader.core.errors import InvalidRequest, NoProduction, RequestRefused
from upgrader.core.faults import fault_point
from upgrader.data.items import SourceReader, UnreadableSource
from upgrader.services.matrix import class_sets, load_probe, probe_labels
from upgrader.services.registration import open_embedder
from upgrader.services.workspace import Workspace

#: Class vertex of items whose label the interface does not know (or that have none): they are
#: backfilled too, but the probe set cannot score them, so they gain nothing and go last under ``gain``.
UNPLACED = -1
#: The fractions of the gallery a dry run shows (the budget's own fraction is added).
FRACTIONS: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
#: Seed of the ``random`` policy's draw (fixed, so a run re-embeds what ``BackfillPlan.at`` estimated).
RANDOM_SEED = 0
#: Random orders a dry run averages for its ``random`` line.
RANDOM_DRAWS = 20


def parse_budget(text: str | None, gallery_items: int, candidates: int) -> int:
    """Items a run may re-embed: ``N`` items, ``P%`` of the gallery, or (None) every candidate.

    ``P%`` rounds like the dry run's curve, so ``--budget 10%`` re-embeds the items its 10% row counts.

    Raises:
        InvalidRequest: not a whole number of at least 1 nor a percentage in (0, 100].
    """
    if text is None:
        return candidates
    raw = text.strip()
    try:
        if raw.endswith("%"):
            pct = float(raw[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return int(round(pct / 100 * gallery_items))
        n = int(raw)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        raise InvalidRequest(f"budget {text!r} is neither a number of items (at least 1) nor a percentage "
                             "of the gallery in (0, 100]; give e.g. 500 or 10%") from None


def gallery_holders(ws: Workspace) -> Holders:
    """The real gallery's composition: class vertex -> {generation: items} (unknown labels: UNPLACED)."""
    label_map = ws.registry.interface().label_map
    out: Holders = {}
    for (gen, label), n in ws.registry.gallery_label_counts().items():
        if n > 0:
            gens = out.setdefault(int(label_map.get(label, UNPLACED)) if label is not None else UNPLACED, {})
            gens[int(gen)] = gens.get(int(gen), 0) + int(n)
    return out


class ProbeEstimate:
    """Production's calibrated item-level Recall@1 on the probe gallery composed like a given gallery.

    The calibration is fitted as serving fits it (production's maps for every live generation and
    its own, each on the classes its train_config says it learnt) but cross-validated on production's
    probe queries, so none is scored by a calibration fitted on it: the gate's "production now"
    number, for any composition. Compositions are cached by the probe gallery they compose, so the
    many that round to the same one cost one evaluation.
    """

    def __init__(self, ws: Workspace, production: int, generations: Sequence[int],
                 fitted_on: Mapping[int, Mapping[int, int]] | None = None) -> None:
        ids = sorted({int(production), *(int(g) for g in generations)})
        queries, self._galleries = load_probe(ws, ids)
        self.production = int(production)
        self._queries = queries[self.production]
        self._q_labels, self._g_labels = probe_labels(ws)
        known = class_sets(ws, ids)
        self._known = {g: (frozenset(known[g]) if g in known else None) for g in ids}
        self._fit_gens = ids  # fixed: a generation whose last item moves keeps its served map
        # The stored calibration was fitted for the gallery as it stands; a backfill keeps it, so every
        # composition is scored with shifts fitted on this one (None: each on its own).
        self._fit_composition = None if fitted_on is None else compose(self._g_labels, fitted_on)
        self._cache: dict[bytes, float] = {}

    def __call__(self, holders: Mapping[int, Mapping[int, int]]) -> float:
        gens = compose(self._g_labels, holders)
        key = gens.tobytes()
        if key not in self._cache:
            scores = cross_validated(self._queries, self._q_labels, self._g_labels, gens, self._galleries,
                                     self._known, self.production, fit_gens=self._fit_gens,
                                     fit_composition=self._fit_composition)
            self._cache[key] = float(scores.hits.mean()) if scores.hits.size else float("nan")
        return self._cache[key]

    def reindex(self, holders: Mapping[int, Mapping[int, int]]) -> float:
        """The estimate after a full re-index of ``holders`` (every item production's)."""
        return self({v: {self.production: sum(gens.values())} for v, gens in holders.items()})


@dataclass(frozen=True)
class BackfillPlan:
    """What a backfill will do: the gallery now, the policy's group order and the budget."""

    production: Generation
    policy: str
    holders: Holders  # class vertex -> {generation: items}, as the gallery stands
    groups: list[Group]  # (class, old generation) groups in the policy's order
    gallery_items: int
    candidates: int  # items not embedded by production
    budget: int  # items this run re-embeds at most (the request, capped at the candidates)
    estimate: ProbeEstimate = field(repr=False)

    def at(self, items: int, groups: list[Group] | None = None) -> float:
        """Estimated Recall@1 once ``items`` items are re-embedded in ``groups``' order (default the plan's)."""
        return self.estimate(moved(self.holders, self.production.id, take_budget(groups or self.groups, items)))


def plan_backfill(ws: Workspace, policy: str = "gain", budget: str | None = None) -> BackfillPlan:
    """Read the gallery and order its old items for ``policy``; writes nothing to the gallery.

    Raises:
        NoProduction: nothing is in production. InvalidRequest: an unknown policy or a bad budget.
        ArtifactError: a live generation's artifact is needed to embed the probe set and is unusable.
    """
    if policy not in POLICIES:
        raise InvalidRequest(f"unknown backfill policy {policy!r}; use one of {', '.join(POLICIES)}")
    reg = ws.registry
    prod_id = reg.get_alias()
    if prod_id is None:
        raise NoProduction("no production generation to re-embed with; promote one first", subject="production")
    prod = reg.get_generation(prod_id)
    holders = gallery_holders(ws)
    total = sum(n for gens in holders.values() for n in gens.values())
    candidates = total - sum(gens.get(prod.id, 0) for gens in holders.values())
    wanted = parse_budget(budget, total, candidates)
    estimate = ProbeEstimate(ws, prod.id, reg.live_generations(), fitted_on=holders)
    groups = order_groups(holders, prod.id, policy, estimate, seed=RANDOM_SEED)
    return BackfillPlan(prod, policy, holders, groups, total, candidates, min(wanted, candidates), estimate)


#: A run may lower the probe estimate by at most this much (rounding between equal compositions).
LOWER_TOLERANCE = 1e-9


def best_budget(plan: BackfillPlan) -> tuple[int, float]:
    """The largest budget up to the plan's, at a group boundary, whose estimate is highest: (items, estimate)."""
    best_n, best = 0, plan.at(0)
    done = 0
    for group in plan.groups:
        done = min(done + group.items, plan.budget)
        value = plan.at(done)
        if value >= best - LOWER_TOLERANCE:
            best_n, best = done, max(best, value)
        if done >= plan.budget:
            break
    return best_n, best


def check_lowering(plan: BackfillPlan, *, allow_lower: bool = False) -> None:
    """Refuse a run whose estimated Recall@1 on the probe set falls below the gallery's as it is.

    The score calibration serving applies was fitted at promotion for the gallery as it was then;
    re-embedding part of a class's items, or some classes and not their look-alikes, can make
    production's own items win where the calibration still lifts the old ones (measured on the demo:
    served top-1 83.4% -> 40.3% after re-embedding half the gallery, 80.1% after all of it).

    Raises:
        RequestRefused: reason ``lowers-search`` (a smaller budget keeps the estimate) or
            ``lowers-search-always`` (none does); details: budget, now, after, best, best_estimate.
    """
    if allow_lower or plan.budget == 0:
        return
    now, after = plan.at(0), plan.at(plan.budget)
    if after >= now - LOWER_TOLERANCE:
        return
    best, best_estimate = best_budget(plan)
    advice = (f"re-embed at most {best} items ({100 * best_estimate:.1f}%)" if best else
              "no share of the gallery up to it keeps the estimate")
    raise RequestRefused(
        f"re-embedding {plan.budget} items is estimated to lower production's Recall@1 on the probe set from "
        f"{100 * now:.1f}% to {100 * after:.1f}% (the score calibration was fitted for the gallery as it is); "
        f"{advice}, or allow the loss",
        "lowers-search" if best else "lowers-search-always", subject="budget", budget=str(plan.budget),
        now=f"{100 * now:.1f}", after=f"{100 * after:.1f}", best=str(best), best_estimate=f"{100 * best_estimate:.1f}",
    )


def dry_run_curves(
    plan: BackfillPlan, fractions: Sequence[float] = FRACTIONS
) -> dict[str, list[tuple[float, int, float]]]:
    """(fraction of the gallery, items re-embedded, estimated Recall@1) per policy, the plan's first.

    ``gain`` and ``oldest`` are the orders a run takes; ``random`` is what a random order gives on
    average (:data:`RANDOM_DRAWS` draws: one draw is a coin toss, not a baseline). The budget's own
    fraction is added to ``fractions``; every curve starts at the gallery as it is and ends at a
    full re-index.
    """
    points = {float(f) for f in fractions}
    if plan.gallery_items:
        points.add(round(plan.budget / plan.gallery_items, 6))
    ordered = tuple(sorted(points))
    prod = plan.production.id
    out: dict[str, list[tuple[float, int, float]]] = {}
    for policy in (plan.policy, *(p for p in POLICIES if p != plan.policy)):
        if policy == "random":
            draws = [curve(plan.holders, prod, order_groups(plan.holders, prod, "random", plan.estimate, seed=s),
                           plan.estimate, ordered) for s in range(RANDOM_DRAWS)]
            out[policy] = [(f, n, float(np.mean([d[i][2] for d in draws]))) for i, (f, n, _) in enumerate(draws[0])]
        else:
            groups = plan.groups if policy == plan.policy else order_groups(plan.holders, prod, policy, plan.estimate)
            out[policy] = curve(plan.holders, prod, groups, plan.estimate, ordered)
    return out


@dataclass(frozen=True)
class Unreadable:
    """A stored item whose source could not be read: skipped, its old embedding kept."""

    external_id: str
    reason: str  # UnreadableSource.reason
    message: str


@dataclass(frozen=True)
class BackfillResult:
    """What one backfill did."""

    reembedded: int
    by_generation: dict[int, int]  # old generation -> its items now production's
    unreadable: list[Unreadable]
    remaining: int  # items not embedded by production afterwards
    seconds: float
    stopped: str | None = None  # why the run ended before its budget (production moved), or None


def ordered_sources(ws: Workspace, plan: BackfillPlan) -> list[GallerySource]:
    """Every item not embedded by production, in the order the plan re-embeds them: the groups in
    the policy's order, oldest (lowest row id) first within each; items of groups the plan did not
    see (added since) last."""
    reg = ws.registry
    label_map = reg.interface().label_map
    old = [g for g in reg.live_generations() if g != plan.production.id]
    by_group: dict[tuple[int, int], list[GallerySource]] = {}
    for src in reg.gallery_sources(generation_ids=old) if old else []:
        v = label_map.get(src.label, UNPLACED) if src.label is not None else UNPLACED
        by_group.setdefault((int(v), src.generation_id), []).append(src)  # ascending row id
    out: list[GallerySource] = []
    for gr in plan.groups:
        out.extend(by_group.pop((gr.vertex, gr.generation), []))
    out.extend(sorted((s for rest in by_group.values() for s in rest), key=lambda s: s.row_id))
    return out


def run_backfill(
    ws: Workspace,
    plan: BackfillPlan,
    *,
    batch_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> BackfillResult:
    """Re-embed up to ``plan.budget`` items from their sources with production, one transaction a batch.

    Items whose source is unreadable are skipped (the next candidates take their place in the
    budget). The run stops early if production moves, so no item is written by a generation that no
    longer serves; run it again to continue with the new one.

    Raises:
        InvalidRequest: ``batch_size`` below 1. ArtifactError: production's artifact is unusable.
    """
    if batch_size < 1:
        raise InvalidRequest(f"the batch size must be at least 1, got {batch_size}")
    started = time.monotonic()
    reg, prod = ws.registry, plan.production
    embedder = open_embedder(ws, prod)
    reader = SourceReader(reg.probe_set("query").images.shape[1:])
    order = ordered_sources(ws, plan)
    goal = min(plan.budget, len(order))
    done, stopped = 0, None
    moved_from: Counter[int] = Counter()
    skipped: list[Unreadable] = []
    if progress:
        progress(0, goal)
    readable = _readable(order, reader, skipped)
    while done < goal:
        batch = _take(readable, min(batch_size, goal - done))
        if not batch:
            break
        if reg.get_alias() != prod.id:
            stopped = f"production moved from {prod.name} during the backfill; run it again to continue with the new one"
            break
        written = _commit(ws, prod, [s for s, _ in batch], embedder.embed(np.stack([im for _, im in batch])))
        fault_point("backfill:batch")  # this batch is committed; the next one is not
        done += len(written)
        moved_from.update(s.generation_id for s in written)
        if progress:
            progress(done, goal)
    remaining = sum(n for g, n in reg.gallery_counts().items() if g != prod.id)
    return BackfillResult(done, dict(sorted(moved_from.items())), skipped, remaining,
                          time.monotonic() - started, stopped)


def _readable(
    order: list[GallerySource], reader: SourceReader, skipped: list[Unreadable]
) -> Iterator[tuple[GallerySource, np.ndarray]]:
    """The items of ``order`` whose source reads back, with their pixels, read as they are asked for;
    the others go to ``skipped`` (so an item past the budget is never read, nor reported)."""
    for src in order:
        try:
            yield src, reader.read(src.source_uri)
        except UnreadableSource as exc:
            skipped.append(Unreadable(src.external_id, exc.reason, str(exc)))


def _take(items: Iterator[tuple[GallerySource, np.ndarray]], n: int) -> list[tuple[GallerySource, np.ndarray]]:
    """The next ``n`` of ``items`` (fewer at the end)."""
    out: list[tuple[GallerySource, np.ndarray]] = []
    for pair in items:
        out.append(pair)
        if len(out) == n:
            break
    return out


def _commit(ws: Workspace, prod: Generation, sources: list[GallerySource], feats: np.ndarray) -> list[GallerySource]:
    """Re-embed one batch in one transaction; items removed meanwhile (``gallery rm``) are left out."""
    ids = [s.external_id for s in sources]
    try:
        ws.registry.reembed_gallery_items(ids, prod.id, feats)
        return sources
    except UnknownGalleryItem:
        still = ws.registry.existing_external_ids(ids)
        keep = [i for i, s in enumerate(sources) if s.external_id in still]
        if keep:
            ws.registry.reembed_gallery_items([ids[i] for i in keep], prod.id, feats[keep])
        return [sources[i] for i in keep]


__all__ = [
    "BackfillPlan", "BackfillResult", "FRACTIONS", "ProbeEstimate", "UNPLACED", "Unreadable", "best_budget",
    "check_lowering", "dry_run_curves",
    "gallery_holders", "ordered_sources", "parse_budget", "plan_backfill", "run_backfill",
]
