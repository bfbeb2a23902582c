"""``crash-hotplug audit``: a vmcore against the machine at the panic (thin over :mod:`crash_hotplug.audit`).

Exit status 0 when the vmcore holds every online CPU's registers and all System RAM, 1 on any
gap, 2 on unusable input (one line on stderr naming the file).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from crash_hotplug.audit import DEFAULT_SAMPLES, AuditReport
from crash_hotplug.audit import audit as run_audit
from crash_hotplug.errors import CrashHotplugError

__all__ = ["audit", "render_report"]


#: rows of the memory table and lines of findings shown; the rest are counted (``--json`` lists all)
MAX_LISTED = 100


def _range(s: int, e: int) -> str:
    return f"{s:#x}-{e:#x}"


def render_report(report: AuditReport, console: Console) -> None:
    """The report as tables: CPUs, memory, byte check, then the verdict."""
    info = report.vmcoreinfo
    console.print(f"{report.vmcore} ({report.dump_format}) against {report.root}", markup=False, soft_wrap=True)
    if info:
        console.print("  " + "  ".join(f"{k}={v}" for k, v in info.items()), markup=False, soft_wrap=True)
    t = Table(title=f"CPU contexts (matched by {report.cpu_method})", show_edge=False)
    for col in ("cpu", "online", "note", "pr_pid", "ip", "status", "detail"):
        t.add_column(col, justify="right" if col in ("cpu", "note", "pr_pid") else "left", no_wrap=col != "detail")
    for c in report.cpus:
        style = {"missing": "red", "extra": "red", "registers differ": "red"}.get(c.status, "")
        t.add_row(
            f"{c.cpu}{'*' if c.panic else ''}", "yes" if c.online else "no",
            "-" if c.note is None else str(c.note), "-" if c.pr_pid is None else str(c.pr_pid),
            "-" if c.ip is None else f"{c.ip:#x}", f"[{style}]{c.status}[/{style}]" if style else c.status, c.detail,
        )
    console.print(t)
    mem = report.memory
    t = Table(title="memory (inclusive ranges)", show_edge=False)
    t.add_column("range")
    t.add_column("status")
    rows = [(r, "dumped") for r in mem.dumped if r not in mem.extra]
    rows += [(r, "[red]missing from the vmcore[/red]") for r in mem.missing]
    rows += [(r, "[red]extra: not System RAM at the panic[/red]") for r in mem.extra]
    rows += [(r, "dumped, blocks offline (note)") for r in mem.offline_dumped or []]
    rows += [(r, "in the memory map, filtered by the dump level (note)") for r in mem.filtered]
    rows.sort()
    for r, status in rows[:MAX_LISTED]:
        t.add_row(_range(*r), status)
    console.print(t)
    if len(rows) > MAX_LISTED:
        console.print(f"({len(rows) - MAX_LISTED} more memory ranges not listed; --json lists them all)")
    if mem.filtered_ranges > len(mem.filtered):
        console.print(f"({mem.filtered_ranges - len(mem.filtered)} more filtered ranges not listed)")
    if mem.kernel_text:
        vaddr, paddr, size = mem.kernel_text
        console.print(f"kernel text {vaddr:#x} -> {_range(paddr, paddr + size - 1)}")
    console.print(f"byte check: {report.bytes.reason}", markup=False, soft_wrap=True)
    for n in report.notes:
        console.print(f"note: {n}", markup=False, soft_wrap=True)
    if report.complete:
        console.print("[green]complete[/green]: every online CPU has register state and all System RAM is dumped")
    else:
        console.print(f"[red]{len(report.findings)} gap(s)[/red]:")
        for f in report.findings[:MAX_LISTED]:
            console.print(f"  {f.kind}: {f.message}", markup=False, soft_wrap=True)
        if len(report.findings) > MAX_LISTED:
            console.print(f"  ({len(report.findings) - MAX_LISTED} more findings not listed; --json lists them all)",
                          markup=False, soft_wrap=True)


@click.command("audit")
@click.argument("vmcore", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
@click.option("--root", "root", type=click.Path(path_type=Path), required=True,
              help="Snapshot of the machine at the panic (proc/, sys/ under it).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--samples", type=click.IntRange(min=0), default=DEFAULT_SAMPLES, show_default=True,
              help="Pages to compare with the model's pattern (needs memory data and machine.json).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed that picks the sampled pages.")
def audit(vmcore: tuple[Path, ...], root: Path, as_json: bool, samples: int, seed: int) -> None:
    """Check VMCORE against the machine at the panic: missing or extra CPU contexts, missing or extra
    memory, sampled bytes. VMCORE is ELF (whole, headers and notes only, or makedumpfile -E),
    kdump-compressed (makedumpfile -c/-l/-p/-z) or flattened (-F); "-" reads it from standard input;
    the parts of a makedumpfile --split dump are given together.
    Exit 0 complete, 1 gaps, 2 bad input."""
    try:
        report = run_audit(list(vmcore), root, samples=samples, seed=seed)
    except CrashHotplugError as e:
        Console(stderr=True, highlight=False).print(f"crash-hotplug: error: {e}", markup=False, soft_wrap=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=1))
    else:
        render_report(report, Console(highlight=False))
    sys.exit(report.exit_status)
