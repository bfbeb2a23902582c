"""Benchmark: the default storm (32 -> 512 GiB, 3840 block events) under every approach.

Prints, per approach, the wall-clock seconds the simulation took and the simulated events handled
per wall-clock second, all measured in this run; and the whole comparison's time (target: well
under a minute). Run: ``bash tasks bench``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from crash_hotplug.sim.engine import APPROACHES, simulate
from crash_hotplug.sim.metrics import measure
from crash_hotplug.sim.plans import GIB, resize_plan

ROUNDS = 3


def main() -> None:
    plan = resize_plan(32 * GIB, 512 * GIB)
    events = len(plan.ops)
    print(f"{plan.describe()}")
    total = []
    for a in APPROACHES:
        times = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            tl = simulate(a, plan)
            measure(tl, horizon=tl.end + 1, panics=10_000)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        total.append(med)
        print(f"  {a:<17} median {med:6.2f} s wall   {events / med:9.0f} events/s   "
              f"({tl.end:8.1f} s simulated, {tl.end / med:7.0f}x real time)")
    print(f"  all approaches     {sum(total):6.2f} s wall (medians of {ROUNDS}; target: well under 60 s)")


if __name__ == "__main__":
    main()
