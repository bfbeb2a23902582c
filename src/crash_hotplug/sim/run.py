"""A whole comparison: one storm, every approach, the metrics side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from crash_hotplug.sim.costs import CostModel
from crash_hotplug.sim.engine import APPROACHES, Timeline, simulate
from crash_hotplug.sim.metrics import ApproachMetrics, measure
from crash_hotplug.sim.plans import Plan

__all__ = ["Comparison", "compare"]


@dataclass
class Comparison:
    plan: Plan
    costs: CostModel
    timelines: list[Timeline]
    metrics: list[ApproachMetrics]
    panics: int
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.describe(),
            "memory_events": self.plan.memory_events,
            "dimms": self.plan.dimms,
            "last_event_s": self.plan.last_event,
            "panics": self.panics,
            "seed": self.seed,
            "approaches": {m.approach: m.to_json() for m in self.metrics},
            "costs": {k: {"seconds": s, "unit": u, "source": src} for k, s, u, src in self.costs.sources()},
        }


def compare(plan: Plan, approaches: Sequence[str] = APPROACHES, *, costs: CostModel | None = None,
            panics: int = 10_000, seed: int = 0,
            on_progress: Callable[[str, int, int], None] | None = None) -> Comparison:
    """Simulate ``plan`` under each approach; panics are spread over the same horizon for all: from
    the first event until the slowest approach has settled."""
    costs = costs or CostModel.default()
    timelines = []
    for a in approaches:
        cb = None if on_progress is None else (lambda done, total, a=a: on_progress(a, done, total))
        timelines.append(simulate(a, plan, costs, on_progress=cb))
    horizon = max([tl.end for tl in timelines] + [plan.last_event]) + 1.0
    metrics = [measure(tl, horizon=horizon, panics=panics, seed=seed) for tl in timelines]
    return Comparison(plan, costs, timelines, metrics, panics, seed)
