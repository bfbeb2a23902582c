"""``crash-hotplug simulate``: resize storms under every approach, side by side (thin over
:mod:`crash_hotplug.sim`)."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich import box
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crash_hotplug.cli.common import err, fails_cleanly, out, output_file, write_output
from crash_hotplug.fileio import LOG_LIMIT, iter_lines, read_limited
from crash_hotplug.machine.pseries import LMB_SIZE
from crash_hotplug.sim.costs import CostModel, load_costs
from crash_hotplug.sim.engine import APPROACHES
from crash_hotplug.sim.plans import (
    GIB,
    MAX_CPUS,
    MAX_TIME_S,
    Plan,
    convert_udevadm_monitor,
    cpu_plan,
    mixed_plan,
    parse_size,
    replay_plan,
    resize_plan,
    with_reloads,
)
from crash_hotplug.sim.ppc64 import NOT_ON_PPC64, PPC64_APPROACHES, Ppc64Guest
from crash_hotplug.sim.run import Comparison, compare
from crash_hotplug.sim.units import fmt_duration, fmt_num, unit_for

__all__ = ["simulate"]

F = TypeVar("F", bound=Callable[..., Any])


def _ci(k: int, n: int, ci: tuple[float, float]) -> str:
    return f"{k} [{100 * ci[0]:.2f}-{100 * ci[1]:.2f}%]" if n else "-"


def _pct(k: int, n: int) -> str:
    return fmt_num(100 * k / n) if n else "-"


def _table(c: Comparison, wide: bool) -> Table:
    ms = c.metrics
    cols: list[tuple[str, list[str]]] = []

    def durations(title: str, values: list[float | None]) -> None:
        unit = unit_for(values)
        cols.append((f"{title}\n{unit[0]}", [fmt_duration(v, unit) for v in values]))

    durations("settle", [m.settle_s for m in ms])
    durations("busy", [m.kdump_busy_s for m in ms])
    durations("no img", [m.unloaded_s for m in ms])
    if wide:
        durations("longest", [m.longest_unloaded_s for m in ms])
    durations("stale", [m.stale_s for m in ms])
    durations("blocked", [m.blocked_s for m in ms])
    if wide:
        cols.append(("reloads", [str(m.reloads) for m in ms]))
        cols.append(("regen", [str(m.regenerations) for m in ms]))
        durations("max lag", [m.max_lag_s for m in ms])
    else:
        cols.append(("header\nwrites", [str(m.reloads or m.regenerations) for m in ms]))
    if wide or any(m.dropped_events or m.deferred_events for m in ms):
        cols.append(("dropped/\ndeferred", [f"{m.dropped_events}/{m.deferred_events}" for m in ms]))
    if wide:
        cols.append(("waited", [str(m.waited_events) for m in ms]))
        cols.append(("failed\nreloads", [str(m.reload_failures) for m in ms]))
        cols.append(("lost [95% CI]", [_ci(m.panics_lost, m.panics, m.panics_lost_ci) for m in ms]))
        cols.append(("incomplete [95% CI]",
                     [_ci(m.panics_incomplete, m.panics, m.panics_incomplete_ci) for m in ms]))
    else:
        cols.append(("lost\n%", [_pct(m.panics_lost, m.panics) for m in ms]))
        cols.append(("incompl\n%", [_pct(m.panics_incomplete, m.panics) for m in ms]))
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0, 0, 1), collapse_padding=True)
    t.add_column("approach", justify="left", no_wrap=True, min_width=max(len(m.approach) for m in ms))
    for title, _ in cols:
        t.add_column(title, justify="right", no_wrap=True)
    for i, m in enumerate(ms):
        t.add_row(m.approach, *(values[i] for _, values in cols))
    return t


_LEGEND = (
    "settle: from the last event until the header is true and nothing is in flight",
    "busy: kdumpctl and kexec reloading; no img: no crash image loaded",
    "stale: loaded but not describing the online CPUs and memory",
    "blocked: kexec lock held or image hidden; lost/incompl: share of the panics",
)


def _report(c: Comparison, *, wide: bool, costs_table: bool) -> None:
    p = c.plan
    ms = c.metrics
    storm = max(m.storm_s for m in ms)
    where = "" if c.guest is None else f" on ppc64le ({c.guest.root})"
    out.print(f"{p.describe()}{where}", style="bold", markup=False)
    out.print(c.costs.summary(), style="dim", markup=False)
    note = c.costs_note()
    if note is not None:
        out.print(note, style="dim", markup=False)
    out.print(f"storm spans {fmt_duration(storm)} (planned {fmt_duration(p.last_event)}); {c.panics} panics "
              f"over {fmt_duration(ms[0].horizon_s)} (seed {c.seed})")
    out.print(_table(c, wide))
    for line in _LEGEND + (() if wide else ("--wide: every column",)):
        out.print(line, style="dim")
    if costs_table:
        t = Table(box=box.SIMPLE_HEAD, show_edge=False, title=f"cost profile {c.costs.profile}")
        for col in ("step", "seconds", "unit", "source"):
            t.add_column(col, overflow="fold")
        for name, cost in sorted(c.costs.table.items()):
            t.add_row(name, f"{cost.seconds:.6g}", cost.unit, cost.source)
        out.print(t)


def _run(plan: Plan, approaches: tuple[str, ...], panics: int, seed: int, costs: CostModel,
         as_json: bool, plot: Path | None, wide: bool = False, costs_table: bool = False,
         guest: Ppc64Guest | None = None) -> None:
    chosen = approaches or (APPROACHES if guest is None else PPC64_APPROACHES)
    if guest is not None:
        for a in chosen:
            if a in NOT_ON_PPC64:
                raise click.UsageError(f"--approach {a}: not modelled on ppc64le ({NOT_ON_PPC64[a]})")
    # what is loaded by now (modules, the plan) outlives the run: the collector need not look at
    # it again while the storms allocate
    gc.freeze()
    try:
        with Progress(TextColumn("{task.description:<18}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} ops"), TimeElapsedColumn(), console=err,
                      transient=True, disable=as_json or not err.is_terminal) as bar:
            tasks = {a: bar.add_task(a, total=len(plan.ops)) for a in chosen}
            c = compare(plan, chosen, costs=costs, panics=panics, seed=seed, guest=guest,
                        on_progress=lambda a, done, total: bar.update(tasks[a], completed=done))
    finally:
        gc.unfreeze()
    if plot is not None:
        from crash_hotplug.sim.plot import plot_timelines

        plot_timelines(c.timelines, c.metrics, plot, plan.describe())
    if as_json:
        click.echo(json.dumps(c.to_json(), indent=1))
    else:
        _report(c, wide=wide, costs_table=costs_table)
        if plot is not None:
            out.print(f"timeline plot: {plot}")


#: more panics than this add nothing to a 95% interval but time
MAX_PANICS = 1_000_000


def _options(fn: F) -> F:
    fn = click.option("--approach", "approaches", multiple=True, type=click.Choice(APPROACHES),
                      help="Approaches to compare (default: all).")(fn)
    fn = click.option("--panics", type=click.IntRange(min=1, max=MAX_PANICS), default=10_000, show_default=True,
                      help="Panics injected at random moments.")(fn)
    fn = click.option("--seed", type=int, default=0, show_default=True)(fn)
    fn = click.option("--costs", "costs_spec", default=None, metavar="PROFILE|FILE",
                      help="Cost profile (seed, lab-<kernel>; default seed) or a JSON file of step costs.")(fn)
    fn = click.option("--costs-table", is_flag=True, help="Print every step's cost and its source.")(fn)
    fn = click.option("--wide", is_flag=True, help="Every column (intervals, lags, waits); wider than 80.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Machine-readable output (costs and sources too).")(fn)
    fn = click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None,
                      callback=output_file, help="Write the timeline of every approach to this PNG.")(fn)
    return fn


def _go(plan: Plan | Callable[[CostModel], Plan], approaches: tuple[str, ...], panics: int, seed: int,
        costs_spec: str | None, costs_table: bool, wide: bool, as_json: bool, plot: Path | None,
        guest: Ppc64Guest | None = None) -> None:
    costs = load_costs(costs_spec)
    the_plan = plan(costs) if callable(plan) else plan
    _run(the_plan, approaches, panics, seed, costs, as_json, plot, wide=wide, costs_table=costs_table, guest=guest)


@click.group()
def simulate() -> None:
    """Simulate hotplug storms under each approach (legacy udev reload, with and without the
    throttler, rfc, upstream, ours) with the mechanism's own code on a virtual clock."""


@simulate.command("resize")
@click.option("--from", "size_from", default=None, help="[default: 32G; ppc64le: the guest's memory]")
@click.option("--to", "size_to", default="512G", show_default=True)
@click.option("--dimm", default="2G", show_default=True, help="Size of each hot-added (or removed) DIMM.")
@click.option("--block", default=None,
              help="Memory block size: a power of two, 128M to 2G (x86_64; default 128M). ppc64le: the 256M LMB.")
@click.option("--kernel", type=click.Choice(["6.12.43", "6.12"]), default="6.12.43", show_default=True)
@click.option("--reload-at", "reload_at", type=click.FloatRange(min=0, max=MAX_TIME_S), multiple=True,
              metavar="SECONDS", help="Also run `kdumpctl reload` at this time (repeatable).")
@click.option("--memmap-on-memory", is_flag=True,
              help="Boot with memory_hotplug.memmap_on_memory=1: added memory holds its own struct pages "
                   "(needed beyond about 64x the boot memory).")
@click.option("--arch", type=click.Choice(["x86_64", "ppc64le"]), default="x86_64", show_default=True,
              help="ppc64le: a pseries guest from --root (kexec_load; DLPAR one LMB at a time); "
                   "approaches legacy, legacy-throttled, upstream.")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="ppc64le: the snapshot the guest starts from.")
@click.option("--fdt", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="ppc64le: the crash kernel's FDT kexec-tools loads.")
@_options
@fails_cleanly
def resize(size_from: str | None, size_to: str, dimm: str, block: str | None, kernel: str,
           reload_at: tuple[float, ...], memmap_on_memory: bool, arch: str, root: Path | None, fdt: Path | None,
           **kw: Any) -> None:
    """Resize a guest's memory in DIMMs (32G -> 512G at 128 MiB blocks is 3840 events)."""
    guest: Ppc64Guest | None = None
    if arch == "ppc64le":
        if root is None or fdt is None:
            raise click.UsageError("--arch ppc64le needs --root (the guest's snapshot) and --fdt (the crash FDT)")
        if block is not None and parse_size(block, "--block") != LMB_SIZE:
            raise click.UsageError(f"--block: ppc64le storms are in {LMB_SIZE >> 20}M LMBs")
        if memmap_on_memory:
            raise click.UsageError("--memmap-on-memory: the pseries guest's struct pages are not modelled")
        guest = Ppc64Guest(root, read_limited(fdt, 16 << 20))
        booted, cpus, possible, kernel = guest.facts()
        size_from = size_from or f"{booted}"
        grows = parse_size(size_from, "--from") == booted
        if not grows and parse_size(size_to, "--to") != booted:
            raise click.UsageError(f"--from/--to: the guest in {root} boots with {booted / GIB:g}G: grow from it, "
                                   "or shrink back to it from more (--from larger, --to that size)")
        block = f"{LMB_SIZE}"
    else:
        cpus, possible = 4, 64
    sizes = (parse_size(size_from or "32G", "--from"), parse_size(size_to, "--to"), parse_size(dimm, "--dimm"),
             parse_size(block or "128M", "--block"))

    def plan(costs: CostModel) -> Plan:
        p = resize_plan(sizes[0], sizes[1], dimm=sizes[2], block=sizes[3], kernel=kernel, costs=costs,
                        memmap_on_memory=memmap_on_memory, cpus=cpus, possible=possible)
        return with_reloads(p, reload_at)

    _go(plan, guest=guest, **kw)


@simulate.command("cpu")
@click.option("--add", "n_add", type=click.IntRange(min=0, max=MAX_CPUS), default=8, show_default=True)
@click.option("--remove", "n_remove", type=click.IntRange(min=0, max=MAX_CPUS), default=4, show_default=True)
@_options
@fails_cleanly
def cpu(n_add: int, n_remove: int, **kw: Any) -> None:
    """Hot-add CPUs one after another, then remove some."""
    _go(lambda costs: cpu_plan(n_add, n_remove, costs=costs), **kw)


@simulate.command("mixed")
@_options
@fails_cleanly
def mixed(**kw: Any) -> None:
    """Grow memory, add CPUs, offline one, remove DIMMs, offline a block."""
    _go(lambda costs: mixed_plan(costs=costs), **kw)


@simulate.command("replay")
@click.argument("log", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--boot", default="32G", show_default=True, help="Memory the guest booted with.")
@_options
@fails_cleanly
def replay(log: Path, boot: str, **kw: Any) -> None:
    """Replay a uevent log (JSON lines; see convert-udev)."""
    _go(replay_plan(log, boot=parse_size(boot, "--boot")), **kw)


@simulate.command("convert-udev")
@click.argument("monitor", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
              callback=output_file)
@fails_cleanly
def convert_udev(monitor: Path, output: Path) -> None:
    """Turn ``udevadm monitor --property`` output into a uevent log for replay."""
    records = convert_udevadm_monitor(iter_lines(monitor, max_bytes=LOG_LIMIT, errors="replace"))
    write_output(output, "".join(json.dumps(r) + "\n" for r in records))
    out.print(f"{output}: {len(records)} CPU and memory uevents")
