"""A whole comparison: one storm, every approach, the metrics side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from crash_hotplug.sim.costs import CostModel
from crash_hotplug.sim.engine import APPROACHES, Timeline, simulate
from crash_hotplug.sim.metrics import ApproachMetrics, measure
from crash_hotplug.sim.plans import Plan
from crash_hotplug.sim.ppc64 import Ppc64Guest

__all__ = ["Comparison", "compare"]


@dataclass
class Comparison:
    plan: Plan
    costs: CostModel
    timelines: list[Timeline]
    metrics: list[ApproachMetrics]
    panics: int
    seed: int
    #: the pseries guest the storm ran on (ppc64le), or None for the x86_64 model machine
    guest: Ppc64Guest | None = None

    @property
    def arch(self) -> str:
        return "x86_64" if self.guest is None else "ppc64le"

    def costs_note(self) -> str | None:
        """Where a ppc64le storm's step costs come from (no ppc64le timing has been measured)."""
        if self.guest is None:
            return None
        return (f"ppc64le: no ppc64le step timings exist (../shared/vectors-ppc64 has no timing.json), so "
                f"the {self.costs.profile} profile's costs are used; its legacy reload is kexec_load")

    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "costs_note": self.costs_note(),
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
            on_progress: Callable[[str, int, int], None] | None = None,
            guest: Ppc64Guest | None = None) -> Comparison:
    """Simulate ``plan`` under each approach (on the ppc64le ``guest`` when given); panics are
    spread over the same horizon for all: from the first event until the slowest approach has
    settled."""
    costs = costs or CostModel.default()
    timelines = []
    for a in approaches:
        cb = None if on_progress is None else (lambda done, total, a=a: on_progress(a, done, total))
        timelines.append(simulate(a, plan, costs, on_progress=cb, guest=guest))
    horizon = max([tl.end for tl in timelines] + [plan.last_event]) + 1.0
    metrics = [measure(tl, horizon=horizon, panics=panics, seed=seed) for tl in timelines]
    return Comparison(plan, costs, timelines, metrics, panics, seed, guest)
