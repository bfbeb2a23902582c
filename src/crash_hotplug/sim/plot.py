"""The timeline of each approach in one picture: hotplug events, header regenerations or full
reloads, and what a panic would have met -- no crash image (red), a stale header (orange), kdump
blocked by the kexec lock or a hidden image (purple, shaded by the share of time blocked; red and
orange drawn over it).

Left: the whole run until the slowest approach settled. Right: the storm itself."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from crash_hotplug.sim.engine import Timeline
from crash_hotplug.sim.metrics import ApproachMetrics

__all__ = ["plot_timelines"]

RED, ORANGE, PURPLE, BLUE, GREY = "#d62728", "#ff9f1c", "#7b2cbf", "#1f77b4", "#888888"


def _blocked_share(tl: Timeline, lo: float, hi: float, bins: int) -> list[float]:
    width = (hi - lo) / bins
    share = [0.0] * bins
    for s, e, _ in tl.blocked:
        s, e = max(s, lo), min(e, hi)
        if e <= s:
            continue
        b0, b1 = int((s - lo) / width), min(bins - 1, int((e - lo) / width))
        for b in range(b0, b1 + 1):
            bs, be = lo + b * width, lo + (b + 1) * width
            share[b] += max(0.0, min(e, be) - max(s, bs)) / width
    return share


def _lane(ax: Any, tl: Timeline, lo: float, hi: float, horizon: float, bottom: bool) -> None:
    bins = 600
    width = (hi - lo) / bins
    for b, share in enumerate(_blocked_share(tl, lo, hi, bins)):
        if share > 1e-3:
            ax.axvspan(lo + b * width, lo + (b + 1) * width, ymin=0.55, ymax=0.95, color=PURPLE, lw=0,
                       alpha=min(1.0, 0.1 + 4 * share))
    states = [*tl.states, (horizon, True, True)]
    for (t, loaded, true), (nxt, _, _) in itertools.pairwise(states):
        if nxt <= lo or t >= hi or nxt <= t:
            continue
        if not loaded:
            ax.axvspan(max(t, lo), min(nxt, hi), ymin=0.55, ymax=0.95, color=RED, lw=0)
        elif not true:
            ax.axvspan(max(t, lo), min(nxt, hi), ymin=0.55, ymax=0.95, color=ORANGE, lw=0)
    ax.vlines([e for e in tl.events if lo <= e <= hi], 0.05, 0.25, color=GREY, lw=0.3)
    marks = tl.regenerations or tl.reloads
    ax.vlines([m for m in marks if lo <= m <= hi], 0.3, 0.5, color=BLUE, lw=0.5)
    ax.set_yticks([])
    ax.set_ylim(0, 1)
    ax.set_xlim(lo, hi)
    if not bottom:
        ax.tick_params(labelbottom=False)


def plot_timelines(timelines: list[Timeline], metrics: list[ApproachMetrics], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    horizon = max(m.horizon_s for m in metrics)
    storm_end = max((tl.events[-1] for tl in timelines if tl.events), default=horizon) * 1.03 + 0.5
    fig, axes = plt.subplots(len(timelines), 2, figsize=(14, 1.8 + 1.2 * len(timelines)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]})
    for row, (tl, m) in enumerate(zip(timelines, metrics, strict=True)):
        last = row == len(timelines) - 1
        _lane(axes[row, 0], tl, 0.0, horizon, horizon, last)
        _lane(axes[row, 1], tl, 0.0, min(storm_end, horizon), horizon, last)
        axes[row, 0].set_ylabel(tl.approach, rotation=0, ha="right", va="center", fontsize=10)
        settle = "never" if m.settle_s is None else f"{m.settle_s:.3g} s"
        marks = len(tl.regenerations) if tl.regenerations else len(tl.reloads)
        what = "regenerations" if tl.regenerations else "reloads"
        axes[row, 1].text(
            1.01, 0.5,
            f"settle {settle}\nno image {m.unloaded_s:.3g} s\nstale {m.stale_s:.3g} s\n{what} {marks}\n"
            f"lost {m.panics_lost}, incomplete {m.panics_incomplete} of {m.panics}"
            + ("\n(a panic lands pending updates)" if tl.panic_flush else ""),
            transform=axes[row, 1].transAxes, fontsize=7.5, va="center")
    axes[0, 0].set_title("whole run (until the slowest approach settled)", fontsize=9)
    axes[0, 1].set_title("the storm", fontsize=9)
    axes[-1, 0].set_xlabel("seconds since the first hotplug event")
    axes[-1, 1].set_xlabel("seconds")
    fig.suptitle(title, y=0.99, fontsize=11)
    fig.legend(handles=[
        Patch(color=GREY, label="hotplug event"),
        Patch(color=BLUE, label="header regenerated / image reloaded"),
        Patch(color=RED, label="no crash image loaded"),
        Patch(color=ORANGE, label="header stale"),
        Patch(color=PURPLE, label="kdump blocked (lock held, image hidden)"),
    ], loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=5, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.11, right=0.86, top=0.86 - 0.02 * (6 - len(timelines)), bottom=0.1,
                        hspace=0.2, wspace=0.05)
    fig.savefig(out, dpi=110)
    plt.close(fig)
