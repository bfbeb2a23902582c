"""Benchmark: the simulator's CPU time, as ratios to a fixed pure-Python reference loop.

The machine is shared and noisy, so every figure is process CPU time (``time.process_time``), not
wall time, and is printed as a multiple of a reference loop timed in the same run: a ratio carries
from one machine (or load) to another, seconds do not.

* the default comparison (``simulate resize``: 32 -> 512 GiB, 3840 block events, every approach,
  10,000 panics), per approach and in all;
* the main job as ``bash tasks run`` runs it (``crash-hotplug simulate resize --from 32G --to 512G
  --plot``, a child process: imports, the comparison, the table and the plot);
* the 32 GiB -> 8 TiB storm (65,280 block events of 128 MiB, in 32 GiB DIMMs, the guest booted
  with ``memory_hotplug.memmap_on_memory=1``), every approach (``--big`` only: the legacy approach
  really reloads 65,280 times).

Run: ``bash tasks bench`` (``python bench/bench_sim.py --big`` for the 8 TiB storm too).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from crash_hotplug.sim.engine import APPROACHES, simulate
from crash_hotplug.sim.metrics import measure
from crash_hotplug.sim.plans import GIB, resize_plan


def reference_loop() -> float:
    """CPU seconds of a fixed pure-Python workload (dict and integer work, 2 million steps)."""
    t0 = time.process_time()
    d: dict[int, int] = {}
    acc = 0
    for i in range(2_000_000):
        k = (i * 2654435761) & 0xFFFF
        d[k] = d.get(k, 0) + i
        acc ^= d[k]
    assert acc != -1
    return time.process_time() - t0


def comparison(plan_from: int, plan_to: int, dimm: int, label: str, ref: float, *,
               memmap_on_memory: bool = False) -> float:
    plan = resize_plan(plan_from, plan_to, dimm=dimm, memmap_on_memory=memmap_on_memory)
    print(f"{label}: {plan.describe()}")
    total = 0.0
    for a in APPROACHES:
        t0 = time.process_time()
        tl = simulate(a, plan)
        measure(tl, horizon=tl.end + 1, panics=10_000)
        cpu = time.process_time() - t0
        total += cpu
        print(f"  {a:<17} {cpu:8.2f} s CPU  = {cpu / ref:7.1f} x reference   "
              f"({len(plan.ops) / cpu:8.0f} operations per CPU second)")
    print(f"  {'all approaches':<17} {total:8.2f} s CPU  = {total / ref:7.1f} x reference")
    return total


def main_job(ref: float) -> float:
    """CPU seconds (user + system) of the main job in a child process, as ``bash tasks run`` runs it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "COLUMNS": "80"}
        subprocess.run([sys.executable, "-m", "crash_hotplug", "simulate", "resize", "--from", "32G", "--to", "512G",
                        "--plot", str(Path(tmp) / "storm.png")], check=True, env=env, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"main job (simulate resize --plot, a child process): {cpu:8.2f} s CPU  = {cpu / ref:7.1f} x reference")
    return cpu


def main() -> None:
    ref = min(reference_loop() for _ in range(3))
    print(f"reference loop: {ref:.3f} s CPU (best of 3)")
    comparison(32 * GIB, 512 * GIB, 2 * GIB, "default comparison", ref)
    main_job(ref)
    if "--big" in sys.argv:
        # the struct pages of 8 TiB (128 GiB) cannot come from 32 GiB of boot memory: the guest is
        # booted with memory_hotplug.memmap_on_memory=1, as a real one would have to be
        comparison(32 * GIB, 8192 * GIB, 32 * GIB, "8 TiB storm", ref, memmap_on_memory=True)
    ref2 = min(reference_loop() for _ in range(3))
    print(f"reference loop again: {ref2:.3f} s CPU (the load changed by {100 * (ref2 / ref - 1):+.0f}% meanwhile)")


if __name__ == "__main__":
    main()
