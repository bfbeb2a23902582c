"""``crash-hotplug simulate``: resize storms under every approach, side by side (thin over
:mod:`crash_hotplug.sim`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crash_hotplug.cli.common import err, fails_cleanly, out, output_file, write_output
from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.sim.costs import CostModel
from crash_hotplug.sim.engine import APPROACHES
from crash_hotplug.sim.plans import (
    Plan,
    convert_udevadm_monitor,
    cpu_plan,
    mixed_plan,
    parse_size,
    replay_plan,
    resize_plan,
)
from crash_hotplug.sim.run import Comparison, compare

__all__ = ["simulate"]

F = TypeVar("F", bound=Callable[..., Any])


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "never"
    if v == 0:
        return "0"
    if v < 0.01:
        return f"{v * 1e3:.2f} ms"
    if v < 120:
        return f"{v:.2f} s"
    return f"{v:.0f} s ({v / 60:.1f} min)"


def _ci(k: int, n: int, ci: tuple[float, float]) -> str:
    return f"{k} [{100 * ci[0]:.2f}-{100 * ci[1]:.2f}%]" if n else "-"


def _report(c: Comparison, show_costs: bool) -> None:
    p = c.plan
    out.print(f"[bold]{p.describe()}[/bold]; events span {p.last_event:.1f} s")
    t = Table(show_edge=False, title=f"{c.panics} panics at random moments over {c.metrics[0].horizon_s:.0f} s "
                                      f"(seed {c.seed}), 95% intervals")
    cols = ("approach", "settle", "no image", "longest", "blocked", "stale", "reloads", "regen", "max lag",
            "dropped", "lost [95% CI]", "incomplete [95% CI]")
    for col in cols:
        t.add_column(col, justify="left" if col == "approach" else "right")
    for m in c.metrics:
        t.add_row(m.approach, _fmt_s(m.settle_s), _fmt_s(m.unloaded_s), _fmt_s(m.longest_unloaded_s),
                  _fmt_s(m.blocked_s), _fmt_s(m.stale_s), str(m.reloads), str(m.regenerations),
                  "-" if m.max_lag_s is None else _fmt_s(m.max_lag_s), str(m.dropped_events),
                  _ci(m.panics_lost, m.panics, m.panics_lost_ci),
                  _ci(m.panics_incomplete, m.panics, m.panics_incomplete_ci))
    out.print(t)
    out.print("settle: last event until the header is true (and loaded); blocked: kexec lock held or image "
              "hidden; stale: loaded but not describing the online CPUs and memory", style="dim")
    if show_costs:
        t = Table(show_edge=False, title="cost model")
        for col in ("step", "seconds", "unit", "source"):
            t.add_column(col)
        for name, s, unit, src in c.costs.sources():
            t.add_row(name, f"{s:.6g}", unit, src)
        out.print(t)


def _run(plan: Plan, approaches: tuple[str, ...], panics: int, seed: int, costs_file: Path | None,
         as_json: bool, plot: Path | None) -> None:
    costs = CostModel.default() if costs_file is None else CostModel.default().recalibrated(costs_file)
    chosen = approaches or APPROACHES
    with Progress(TextColumn("{task.description:<18}"), BarColumn(), TextColumn("{task.completed}/{task.total} ops"),
                  TimeElapsedColumn(), console=err, transient=True, disable=as_json or not err.is_terminal) as bar:
        tasks = {a: bar.add_task(a, total=len(plan.ops)) for a in chosen}
        c = compare(plan, chosen, costs=costs, panics=panics, seed=seed,
                    on_progress=lambda a, done, total: bar.update(tasks[a], completed=done))
    if plot is not None:
        from crash_hotplug.sim.plot import plot_timelines

        plot_timelines(c.timelines, c.metrics, plot, plan.describe())
    if as_json:
        click.echo(json.dumps(c.to_json(), indent=1))
    else:
        _report(c, show_costs=True)
        if plot is not None:
            out.print(f"timeline plot: {plot}")


def _options(fn: F) -> F:
    fn = click.option("--approach", "approaches", multiple=True, type=click.Choice(APPROACHES),
                      help="Approaches to compare (default: all).")(fn)
    fn = click.option("--panics", type=click.IntRange(min=1), default=10_000, show_default=True,
                      help="Panics injected at random moments.")(fn)
    fn = click.option("--seed", type=int, default=0, show_default=True)(fn)
    fn = click.option("--costs", "costs_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                      help="JSON file of measured step costs that replace the defaults.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(fn)
    fn = click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None, callback=output_file,
                      help="Write the timeline of every approach to this PNG.")(fn)
    return fn


@click.group()
def simulate() -> None:
    """Simulate hotplug storms under each approach (legacy udev reload, with and without the
    throttler, rfc, upstream, ours) with the mechanism's own code on a virtual clock."""


@simulate.command("resize")
@click.option("--from", "size_from", default="32G", show_default=True)
@click.option("--to", "size_to", default="512G", show_default=True)
@click.option("--dimm", default="2G", show_default=True, help="Size of each hot-added (or removed) DIMM.")
@click.option("--block", default="128M", show_default=True, help="Memory block size.")
@click.option("--kernel", type=click.Choice(["6.12.43", "6.12"]), default="6.12.43", show_default=True)
@_options
@fails_cleanly
def resize(size_from: str, size_to: str, dimm: str, block: str, kernel: str, approaches: tuple[str, ...],
           panics: int, seed: int, costs_file: Path | None, as_json: bool, plot: Path | None) -> None:
    """Resize a guest's memory in DIMMs (32G -> 512G at 128 MiB blocks is 3840 events)."""
    costs = CostModel.default() if costs_file is None else CostModel.default().recalibrated(costs_file)
    plan = resize_plan(parse_size(size_from), parse_size(size_to), dimm=parse_size(dimm), block=parse_size(block),
                       kernel=kernel, costs=costs)
    _run(plan, approaches, panics, seed, costs_file, as_json, plot)


@simulate.command("cpu")
@click.option("--add", "n_add", type=click.IntRange(min=0), default=8, show_default=True)
@click.option("--remove", "n_remove", type=click.IntRange(min=0), default=4, show_default=True)
@_options
@fails_cleanly
def cpu(n_add: int, n_remove: int, approaches: tuple[str, ...], panics: int, seed: int, costs_file: Path | None,
        as_json: bool, plot: Path | None) -> None:
    """Hot-add CPUs one after another, then remove some."""
    _run(cpu_plan(n_add, n_remove), approaches, panics, seed, costs_file, as_json, plot)


@simulate.command("mixed")
@_options
@fails_cleanly
def mixed(approaches: tuple[str, ...], panics: int, seed: int, costs_file: Path | None, as_json: bool,
          plot: Path | None) -> None:
    """Grow memory, add CPUs, offline one, remove DIMMs, offline a block."""
    _run(mixed_plan(), approaches, panics, seed, costs_file, as_json, plot)


@simulate.command("replay")
@click.argument("log", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--boot", default="32G", show_default=True, help="Memory the guest booted with.")
@_options
@fails_cleanly
def replay(log: Path, boot: str, approaches: tuple[str, ...], panics: int, seed: int, costs_file: Path | None,
           as_json: bool, plot: Path | None) -> None:
    """Replay a uevent log (JSON lines; see convert-udev)."""
    _run(replay_plan(log, boot=parse_size(boot)), approaches, panics, seed, costs_file, as_json, plot)


@simulate.command("convert-udev")
@click.argument("monitor", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True, callback=output_file)
@fails_cleanly
def convert_udev(monitor: Path, output: Path) -> None:
    """Turn ``udevadm monitor --property`` output into a uevent log for replay."""
    try:
        text = monitor.read_text(errors="replace")
    except OSError as e:
        raise CrashHotplugError(f"{monitor}: cannot read: {e.strerror}") from None
    records = convert_udevadm_monitor(text)
    write_output(output, "".join(json.dumps(r) + "\n" for r in records))
    out.print(f"{output}: {len(records)} CPU and memory uevents")
