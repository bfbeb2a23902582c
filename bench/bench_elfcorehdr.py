"""Benchmark: build the elfcorehdr at 8192 possible CPUs and 8192 RAM ranges.

Prints the median time per build and its ratio to ``hashlib.sha256`` over the same number of
bytes, both measured in this run (target: at most 5x). Run: ``bash tasks bench``.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.factories import make_state

from crash_hotplug.crash.x86_64 import prepare_elf_headers

CPUS = 8192
RANGES = 8192
ROUNDS = 31


def median_time(fn: object, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    gib = 1 << 30
    ram = [(i * gib, i * gib + (gib >> 1) - 1) for i in range(RANGES)]
    ram[0] = (0x1000, ram[0][1])
    state = make_state(ram, possible=CPUS, crash=[(5 * gib, 5 * gib + (256 << 20) - 1)])
    buf, nr = prepare_elf_headers(state)
    size = len(buf)
    payload = bytes(size)
    # interleave so that both see the same machine load
    fresh = [replace(state, crash_notes=dict(state.crash_notes)) for _ in range(ROUNDS)]
    t_warm, t_cold, t_sha = [], [], []
    # interleaved, so that all three see the same machine load
    for i in range(ROUNDS):
        prepare_elf_headers(state)
        t_warm.append(median_time(lambda: prepare_elf_headers(state), 1))
        t_cold.append(median_time(lambda: prepare_elf_headers(fresh[i]), 1))  # noqa: B023
        t_sha.append(median_time(lambda: hashlib.sha256(payload).digest(), 1))
    mw, mc, ms = (statistics.median(t) for t in (t_warm, t_cold, t_sha))
    print(f"elfcorehdr build (prepare_elf_headers): {CPUS} possible CPUs, {nr} RAM ranges, {size} bytes")
    print(f"  median sha256 of {size} bytes   {ms * 1e3:8.3f} ms")
    print(f"  median rebuild, same machine      {mw * 1e3:8.3f} ms   ratio {mw / ms:5.2f}x  (target <= 5x)")
    print(f"  median first build (cold notes)   {mc * 1e3:8.3f} ms   ratio {mc / ms:5.2f}x")
    print("  (a rebuild reuses the packed CPU notes: possible CPUs and their crash_notes are fixed at boot)")


if __name__ == "__main__":
    main()
