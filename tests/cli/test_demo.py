"""`upgrader demo --quick`, the README's main job, end to end (minutes on 2 CPU cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quick_demo_runs_the_story_through_the_gate_and_refuses_the_er_baseline(invoke, tmp_path: Path) -> None:
    home = tmp_path / "demo"
    res = invoke("demo", "--quick", "--json", "--home", str(home))
    assert res.exit_code == 0, res.stderr[-3000:]
    body = json.loads(res.stdout)
    sc = body["scenario"]
    steps = sc["steps"]
    assert len(steps) == 4 and steps[0]["gate_passed"]
    promoted = [s["generation_id"] for s in steps if s["gate_passed"]]
    # the chain is exactly the generations the gate let through, nothing forced, and so compatible
    assert sc["generation_ids"] == promoted
    assert sc["ac"] == 1.0
    history = invoke("history", "--json", home=home).json()
    assert [m["to_gen"] for m in history] == promoted
    assert not any(m["forced"] for m in history)
    # refused generations never wrote gallery items; promoted ones did, and nothing was re-embedded
    assert set(steps[-1]["gallery_by_generation"]) == {str(g) for g in promoted}
    # AC / AM printed by the demo are the registry's
    matrix = invoke("matrix", *[a for g in promoted for a in ("--gen", str(g))], "--json", home=home).json()
    assert matrix["ac"] == sc["ac"] and matrix["am"] == sc["am"]
    # the er baseline is refused and production does not move
    assert body["baseline_refused"] is True
    assert body["production_after_baseline"] == next(s["generation_name"] for s in reversed(steps) if s["gate_passed"])
