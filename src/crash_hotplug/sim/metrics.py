"""Metrics of a timeline: settle time, time with no crash image, stale time, reloads,
regenerations, and panics injected at random moments (lost, incomplete), with 95% intervals."""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import asdict, dataclass
from typing import Any

from crash_hotplug.sim.engine import Timeline

__all__ = ["ApproachMetrics", "measure", "merge_intervals", "wilson"]


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k/n`` (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class ApproachMetrics:
    approach: str
    settle_s: float | None
    unloaded_s: float
    longest_unloaded_s: float
    blocked_s: float
    stale_s: float
    reloads: int
    regenerations: int
    hotplug_events: int
    dropped_events: int
    deferred_events: int
    waited_events: int
    #: time kdumpctl and kexec were busy reloading (the union of every reload, unload to load)
    kdump_busy_s: float
    reload_failures: int
    #: first to last hotplug event as they happened (later than planned when operations waited)
    storm_s: float
    max_lag_s: float | None
    panics: int
    panics_lost: int
    panics_lost_ci: tuple[float, float]
    panics_incomplete: int
    panics_incomplete_ci: tuple[float, float]
    horizon_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def merge_intervals(iv: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Time intervals sorted, with overlapping and touching ones joined."""
    out: list[tuple[float, float]] = []
    for s, e in sorted(iv):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def measure(tl: Timeline, *, horizon: float, panics: int = 10_000, seed: int = 0) -> ApproachMetrics:
    """The metrics of ``tl`` over ``[0, horizon]``."""
    segments = []
    for i, (t, loaded, true) in enumerate(tl.states):
        end = tl.states[i + 1][0] if i + 1 < len(tl.states) else horizon
        segments.append((t, min(end, horizon), loaded, true))
    unloaded = [(s, e) for s, e, loaded, _ in segments if not loaded and e > s]
    stale = sum(e - s for s, e, loaded, true in segments if loaded and not true)
    blocked = merge_intervals([(s, e) for s, e, _ in tl.blocked])
    last_event = tl.events[-1] if tl.events else 0.0
    settle: float | None = None
    if segments and segments[-1][2] and segments[-1][3]:
        good_from = segments[-1][0]
        busy_end = max([e for _, e in blocked] + [e for _, e in unloaded] + [0.0])
        settle = max(0.0, max(good_from, busy_end) - last_event)
    rng = random.Random(seed)
    lost = incomplete = 0
    starts = [b[0] for b in blocked]
    for _ in range(panics):
        t = rng.uniform(0.0, horizon)
        i = bisect.bisect_right(starts, t) - 1
        if i >= 0 and blocked[i][0] <= t < blocked[i][1]:
            lost += 1
            continue
        loaded, true = tl.state_at(t)
        if not loaded:
            lost += 1
        elif not true and not tl.panic_flush:
            incomplete += 1
    return ApproachMetrics(
        approach=tl.approach,
        settle_s=settle,
        unloaded_s=sum(e - s for s, e in unloaded),
        longest_unloaded_s=max((e - s for s, e in unloaded), default=0.0),
        blocked_s=sum(e - s for s, e in blocked),
        stale_s=stale,
        reloads=len(tl.reloads),
        regenerations=len(tl.regenerations),
        hotplug_events=tl.hotplug_events,
        dropped_events=tl.dropped,
        deferred_events=tl.deferred,
        waited_events=tl.waited,
        kdump_busy_s=sum(e - s for s, e in merge_intervals(tl.reload_busy)),
        reload_failures=tl.reload_failures,
        storm_s=(tl.events[-1] - tl.events[0]) if tl.events else 0.0,
        max_lag_s=max(tl.lags) if tl.lags else None,
        panics=panics,
        panics_lost=lost,
        panics_lost_ci=wilson(lost, panics),
        panics_incomplete=incomplete,
        panics_incomplete_ci=wilson(incomplete, panics),
        horizon_s=horizon,
    )
