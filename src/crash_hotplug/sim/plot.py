"""The timeline of each approach in one picture, every duration drawn to scale.

One row per approach, each with labelled lanes: ``no image`` (red: no crash image loaded),
``stale`` (orange: loaded, not describing the machine), ``blocked`` (purple: the kexec lock held or
the image hidden), and a marker track for instants (grey: hotplug events; blue: header writes, by
reload or in-kernel update). Durations are exact spans (``broken_barh``), never widened to be seen:
a sub-millisecond window is as thin as it is. Each row's figures use the table's number format.

Left: the whole run until the slowest approach settled. Right: the storm itself.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from crash_hotplug.sim.engine import Timeline
from crash_hotplug.sim.metrics import ApproachMetrics, merge_intervals
from crash_hotplug.sim.units import fmt_duration

__all__ = ["LANES", "build_figure", "lane_spans", "plot_timelines"]

RED, ORANGE, PURPLE, BLUE, GREY = "#d62728", "#ff9f1c", "#7b2cbf", "#1f77b4", "#888888"
#: lanes of a row, bottom to top: (label, colour); the marker track is the lowest
LANES = (("events", GREY), ("blocked", PURPLE), ("stale", ORANGE), ("no image", RED))
_LANE_H = 0.8
#: the height of an instant's marker, in points (about half a lane at the figure's size)
_MARK_PT = 5.0


def lane_spans(tl: Timeline, horizon: float) -> dict[str, list[tuple[float, float]]]:
    """The exact ``(start, end)`` spans of each duration lane (blocked windows merged)."""
    unloaded: list[tuple[float, float]] = []
    stale: list[tuple[float, float]] = []
    for (t, loaded, true), (nxt, _, _) in itertools.pairwise([*tl.states, (horizon, True, True)]):
        end = min(nxt, horizon)
        if end <= t:
            continue
        if not loaded:
            unloaded.append((t, end))
        elif not true:
            stale.append((t, end))
    return {"no image": unloaded, "stale": stale,
            "blocked": merge_intervals([(s, min(e, horizon)) for s, e, _ in tl.blocked if s < horizon])}


def _span_collection(spans: list[tuple[float, float]], y: float, colour: str, label: str) -> Any:
    """One lane's spans as rectangles of their exact width (what ``broken_barh`` draws), built
    from one array: a storm's thousands of spans need no Python object each on the way in."""
    import numpy as np
    from matplotlib.collections import PolyCollection

    xs = np.array(spans, dtype=float)
    lo, hi = y - _LANE_H / 2, y + _LANE_H / 2
    verts = np.empty((len(spans), 4, 2))
    verts[:, 0, 0] = verts[:, 1, 0] = xs[:, 0]
    verts[:, 2, 0] = verts[:, 3, 0] = xs[:, 1]
    verts[:, 0, 1] = verts[:, 3, 1] = lo
    verts[:, 1, 1] = verts[:, 2, 1] = hi
    # an (n, 4, 2) array takes PolyCollection's fast path; its type stubs ask for a sequence
    return PolyCollection(verts, facecolors=colour, linewidths=0, label=label)  # type: ignore[arg-type]


#: a row's height in lane units: its lanes, then room for the approach's name above them
_ROW_H = len(LANES) + 1.2


def _row(ax: Any, tl: Timeline, spans: dict[str, list[tuple[float, float]]], lo: float, hi: float,
         base: float) -> None:
    """One approach's lanes, from ``base`` up (lane ``k`` at ``base + k``)."""
    for k, (label, colour) in enumerate(LANES):
        if label == "events":
            continue
        seen = [(s, e) for s, e in spans[label] if e > lo and s < hi]
        if seen:
            ax.add_collection(_span_collection(seen, base + k, colour, label), autolim=False)
    marks = tl.regenerations or tl.reloads
    # one marker path per track (a Line2D of ``|`` markers), not a line segment per instant: the
    # storm has thousands of instants and a segment each costs seconds to build and draw
    for times, mark_y, colour in ((tl.events, base - 0.2, GREY), (marks, base + 0.2, BLUE)):
        xs = [t for t in times if lo <= t <= hi]
        if xs:
            ax.plot(xs, [mark_y] * len(xs), linestyle="none", marker="|", markersize=_MARK_PT,
                    markeredgewidth=0.3, color=colour)


def _summary(tl: Timeline, m: ApproachMetrics) -> str:
    what = "regenerations" if tl.regenerations else "reloads"
    lines = [
        f"settle {fmt_duration(m.settle_s)}",
        f"no image {fmt_duration(m.unloaded_s)}",
        f"stale {fmt_duration(m.stale_s)}",
        f"blocked {fmt_duration(m.blocked_s)}",
        f"{what} {len(tl.regenerations or tl.reloads)}",
        f"lost {m.panics_lost}, incomplete {m.panics_incomplete} of {m.panics}",
    ]
    if m.dropped_events or m.deferred_events:
        lines.append(f"dropped {m.dropped_events}, deferred {m.deferred_events}")
    if tl.panic_flush:
        lines.append("(a panic lands pending updates)")
    return "\n".join(lines)


def build_figure(timelines: list[Timeline], metrics: list[ApproachMetrics], title: str) -> Any:
    """The figure (matplotlib, Agg backend), for :func:`plot_timelines` and for tests to read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    horizon = max(m.horizon_s for m in metrics)
    storm_end = min(horizon, max((tl.events[-1] for tl in timelines if tl.events), default=horizon) * 1.03 + 0.5)
    # two axes (the whole run, the storm), each holding every approach's lanes one row above the
    # other: the same picture as a grid of axes at a fraction of the drawing
    fig, (whole, storm) = plt.subplots(1, 2, figsize=(14, 1.4 + 1.5 * len(timelines)),
                                       gridspec_kw={"width_ratios": [3, 2]})
    n = len(timelines)
    lane_names = ["events / writes", *[label for label, _ in LANES[1:]]]
    ticks: list[float] = []
    for row, (tl, m) in enumerate(zip(timelines, metrics, strict=True)):
        base = (n - 1 - row) * _ROW_H
        spans = lane_spans(tl, horizon)
        _row(whole, tl, spans, 0.0, horizon, base)
        _row(storm, tl, spans, 0.0, storm_end, base)
        ticks += [base + k for k in range(len(LANES))]
        whole.text(0.004, base + len(LANES) - 0.35, tl.approach, transform=whole.get_yaxis_transform(),
                   fontsize=9, fontweight="bold", va="bottom")
        storm.text(1.01, base + (len(LANES) - 1) / 2, _summary(tl, m), transform=storm.get_yaxis_transform(),
                   fontsize=7, va="center")
        if row:
            for ax in (whole, storm):
                ax.axhline(base + len(LANES) + 0.5, color="black", lw=0.6)
    for ax, hi in ((whole, horizon), (storm, storm_end)):
        ax.set_yticks(ticks, lane_names * n, fontsize=6.5)
        ax.set_ylim(-0.6, n * _ROW_H - 0.9)
        ax.set_xlim(0.0, hi)
        ax.grid(axis="x", lw=0.3, alpha=0.5)
    storm.tick_params(labelleft=False)
    whole.set_title(f"whole run ({fmt_duration(horizon)}, until the slowest approach settled)", fontsize=9, pad=3)
    storm.set_title(f"the storm ({fmt_duration(storm_end)})", fontsize=9, pad=3)
    whole.set_xlabel("seconds since the first hotplug event")
    storm.set_xlabel("seconds")
    fig.suptitle(title, y=0.995, fontsize=11)
    fig.legend(handles=[
        Patch(color=GREY, label="hotplug event (marker)"),
        Patch(color=BLUE, label="header written: reload or update (marker)"),
        Patch(color=RED, label="no crash image loaded"),
        Patch(color=ORANGE, label="header stale"),
        Patch(color=PURPLE, label="kdump blocked (lock held, image hidden)"),
    ], loc="upper center", bbox_to_anchor=(0.5, 0.97), ncol=5, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.07, right=0.85, top=0.93 - 0.01 * (6 - len(timelines)), bottom=0.07, wspace=0.03)
    return fig


def plot_timelines(timelines: list[Timeline], metrics: list[ApproachMetrics], out: Path, title: str) -> None:
    """Write the timelines to a PNG at ``out``."""
    import matplotlib.pyplot as plt

    from crash_hotplug.errors import CrashHotplugError

    fig = build_figure(timelines, metrics, title)
    try:
        fig.savefig(out, dpi=110)
    except OSError as e:
        raise CrashHotplugError(f"{out}: cannot write: {e.strerror or e}") from None
    finally:
        plt.close(fig)
