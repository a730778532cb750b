"""Backfill ordering: the gain policy spends a budget where the probe set says searches are lost."""

from __future__ import annotations

import pytest

from upgrader.compat.backfill_plan import curve, groups_of, moved, order_groups, take_budget

# Class 0 and 1 stored by generation 1, class 2 by generation 2, class 3 already by production (3).
HOLDERS = {0: {1: 100}, 1: {1: 100}, 2: {2: 50}, 3: {3: 80}}
#: Probe Recall@1 lost per class while its items stay in an old embedding space (class 2 hurts most).
PENALTY = {0: 0.01, 1: 0.05, 2: 0.20, 3: 0.0}


def score(holders: dict[int, dict[int, int]]) -> float:
    lost = 0.0
    for v, gens in holders.items():
        total = sum(gens.values())
        lost += PENALTY[v] * sum(n for g, n in gens.items() if g != 3) / total
    return 1.0 - lost


def test_groups_leave_productions_own_items_out_and_moving_keeps_every_item() -> None:
    assert [(g.vertex, g.generation, g.items) for g in groups_of(HOLDERS, 3)] == [(0, 1, 100), (1, 1, 100), (2, 2, 50)]
    after = moved(HOLDERS, 3, {(0, 1): 30, (2, 2): 500})
    assert after[0] == {1: 70, 3: 30} and after[2] == {3: 50}
    assert sum(sum(g.values()) for g in after.values()) == sum(sum(g.values()) for g in HOLDERS.values())


def test_the_gain_policy_orders_by_gain_per_item_and_beats_oldest_and_random_at_a_small_budget() -> None:
    gain = order_groups(HOLDERS, 3, "gain", score)
    assert [(g.vertex, g.generation) for g in gain] == [(2, 2), (1, 1), (0, 1)]
    assert gain[0].gain == pytest.approx(0.20)
    oldest = order_groups(HOLDERS, 3, "oldest", score)
    assert [(g.vertex, g.generation) for g in oldest] == [(0, 1), (1, 1), (2, 2)]
    budget = 50  # about 15% of the gallery
    at = {p: score(moved(HOLDERS, 3, take_budget(order_groups(HOLDERS, 3, p, score, seed=1), budget)))
          for p in ("gain", "oldest", "random")}
    assert at["gain"] > at["oldest"] and at["gain"] >= at["random"]
    with pytest.raises(ValueError, match="unknown backfill policy"):
        order_groups(HOLDERS, 3, "newest", score)


def test_the_curve_starts_at_the_gallery_as_it_is_and_ends_at_a_reindex() -> None:
    points = curve(HOLDERS, 3, order_groups(HOLDERS, 3, "gain", score), score, fractions=(0.0, 0.2, 1.0))
    assert points[0] == (0.0, 0, pytest.approx(score(HOLDERS)))
    assert points[-1][1] == 250 and points[-1][2] == pytest.approx(1.0)
    assert points[0][2] < points[1][2] < points[2][2]
