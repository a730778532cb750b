"""The record of one study run: what the runner fills in, what aggregation reads, one row of results.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunRecord:
    """One scenario run (one method, one seed) as results.json stores it."""

    scenario: str
    method: str
    seed: int
    status: str  # done | failed
    workspace: str | None  # kept workspace, None when removed
    error: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process (training threads and ONNX Runtime threads included)
    generation_ids: list[int] = field(default_factory=list)
    generation_names: list[str] = field(default_factory=list)
    matrix: list[list[float]] = field(default_factory=list)  # template top-1, C[t][j], t = query generation
    ac: float | None = None
    am: float | None = None
    final_self_test: float | None = None
    # Mixed-gallery accuracy after the last step by class templates, the primary protocol (docs/design.md).
    final_mixed: float | None = None
    final_reindex: float | None = None  # full re-index accuracy (templates) after the last step
    final_mixed_items: float | None = None  # the same two with item-level top-1
    final_reindex_items: float | None = None
    # At every promotion, the new generation's self-test beats production's on the same classes
    # (the gate's improvement check: like for like, since a later generation serves more classes).
    self_test_rises: bool | None = None
    refused_steps: list[int] = field(default_factory=list)  # steps whose generation the gate refused
    forced_steps: list[int] = field(default_factory=list)  # refused steps promoted anyway (a forced alias move)
    registry: dict[str, Any] = field(default_factory=dict)  # figures re-read from the registry afterwards
    steps: list[dict[str, Any]] = field(default_factory=list)  # StepResult of every step
