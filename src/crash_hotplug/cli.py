"""``crash-hotplug``: thin commands over the library.

Every command that reads machine state takes ``--root DIR`` (default ``/``): a live host, a
snapshot, or an extracted sosreport. Bad input ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import ParamSpec, TypeVar

import click
from rich.table import Table

from crash_hotplug.cli_audit import audit, render_report
from crash_hotplug.cli_common import fails_cleanly, out
from crash_hotplug.cli_lab import lab
from crash_hotplug.cli_simulate import simulate
from crash_hotplug.crash.x86_64 import crash_load_segments_memsz, prepare_elf_headers
from crash_hotplug.elf.core import read_core_file
from crash_hotplug.inspect import HeaderSummary, diff_headers, summarize
from crash_hotplug.scenario import SCENARIO_DESIGNS, SCRIPTED_STEPS, ScenarioError, load_steps, run_scenario
from crash_hotplug.snapshot.reader import read_kernel_state
from crash_hotplug.snapshot.writer import write_snapshot
from crash_hotplug.status import kdump_status

P = ParamSpec("P")
R = TypeVar("R")

PAGE_SIZE = 4096


def example_root() -> Path:
    """The bundled example snapshot (a 4 GiB, 2-CPU guest with kdump loaded)."""
    return Path(str(resources.files("crash_hotplug") / "data" / "example" / "root"))


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.2f} {unit}".replace(".00 ", " ")
    return f"{n} B"


root_option = click.option(
    "--root", "root", type=click.Path(path_type=Path, file_okay=False), default=Path("/"), show_default=True,
    help="Directory holding proc/ and sys/ as the host shows them (a live host, a snapshot, a sosreport).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crash-hotplug")
def cli() -> None:
    """Linux kdump crash hotplug, modelled to the byte."""


@cli.group()
def elfcorehdr() -> None:
    """Build, inspect and compare kdump ELF core headers."""


@elfcorehdr.command("build")
@root_option
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--kernel-version", help="Build as this kernel version would (default: the snapshot's osrelease).")
@fails_cleanly
def elfcorehdr_build(root: Path, output: Path, kernel_version: str | None) -> None:
    """Write the elfcorehdr the kernel of ROOT builds for kexec_file_load (x86_64)."""
    state = read_kernel_state(root, kernel_version=kernel_version)
    buf, nr = prepare_elf_headers(state)
    output.write_bytes(buf)
    memsz = crash_load_segments_memsz(state.config, len(buf), nr)
    out.print(
        f"{output}: {len(buf)} bytes, {len(state.header_cpus)} CPU notes, {nr} memory ranges; "
        f"kernel {state.config.version} segment memsz {-(-memsz // PAGE_SIZE) * PAGE_SIZE}"
    )


def _print_summary(s: HeaderSummary, title: str) -> None:
    out.print(f"[bold]{title}[/bold]: {s.kind}, e_phnum {s.e_phnum}, header {s.used_size} bytes")
    t = Table(title="CPU notes", show_edge=False)
    for col in ("#", "cpu", "paddr", "size", "pid", "rip"):
        t.add_column(col, justify="right")
    for c in s.cpu_notes:
        t.add_row(
            str(c.index), "?" if c.cpu is None else str(c.cpu),
            "-" if c.paddr is None else f"{c.paddr:#x}", str(c.size),
            "-" if c.pid is None else str(c.pid), "-" if c.rip is None else f"{c.rip:#x}",
        )
    out.print(t)
    if s.vmcoreinfo_paddr is not None:
        out.print(f"VMCOREINFO note at {s.vmcoreinfo_paddr:#x}, {s.vmcoreinfo_size} bytes")
    for k, v in s.vmcoreinfo.items():
        out.print(f"  {k}={v}")
    if s.kernel_text:
        kt = s.kernel_text
        out.print(f"kernel text {kt.vaddr:#x} -> {kt.start:#x}-{kt.end:#x} ({_size(kt.size)})")
    t = Table(title="memory", show_edge=False)
    for col in ("start", "end", "size", "vaddr"):
        t.add_column(col, justify="right")
    for r in s.ranges:
        t.add_row(f"{r.start:#x}", f"{r.end:#x}", _size(r.size), f"{r.vaddr:#x}")
    out.print(t)
    out.print(f"{len(s.ranges)} ranges, {_size(s.total_ram)} in all")
    if s.reserved_size is not None:
        out.print(
            f"used {s.used_size} of {s.reserved_size} reserved bytes: room for {s.free_phdrs} more program headers"
        )


def _owners(root: Path | None, kernel_version: str | None) -> dict[int, int]:
    if root is None:
        return {}
    state = read_kernel_state(root, kernel_version=kernel_version)
    return {addr: cpu for cpu, addr in state.crash_notes.items()}


@elfcorehdr.command("show")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Machine state to name each CPU note's owner and the reserved segment size.")
@click.option("--segment-size", type=int, default=None, help="Reserved elfcorehdr segment size in bytes.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fails_cleanly
def elfcorehdr_show(file: Path, root: Path | None, segment_size: int | None, as_json: bool) -> None:
    """Show what a raw elfcorehdr or a vmcore describes: CPUs, VMCOREINFO, kernel text, memory."""
    core = read_core_file(file)
    reserved = segment_size
    if reserved is None and root is not None:
        state = read_kernel_state(root)
        buf, nr = prepare_elf_headers(state)
        memsz = crash_load_segments_memsz(state.config, len(buf), nr)
        reserved = -(-memsz // PAGE_SIZE) * PAGE_SIZE
    if reserved is None and core.is_raw_elfcorehdr:
        reserved = len(core.data)
    s = summarize(core, note_owners=_owners(root, None), reserved_size=reserved)
    if as_json:
        click.echo(json.dumps(s.to_json(), indent=1))
    else:
        _print_summary(s, str(file))


@elfcorehdr.command("diff")
@click.argument("a", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("b", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@fails_cleanly
def elfcorehdr_diff(a: Path, b: Path, as_json: bool) -> None:
    """Say what changed from A to B: CPUs added/removed, ranges added/removed/resized."""
    d = diff_headers(summarize(read_core_file(a)), summarize(read_core_file(b)))
    if as_json:
        click.echo(json.dumps(d.to_json(), indent=1))
        return
    if d.empty:
        out.print("no change in CPUs, memory, VMCOREINFO or kernel text")
        return
    for k in d.cpus_added:
        out.print(f"+ CPU note {k:#x}" if k > 0xFFFF else f"+ CPU note {k}")
    for k in d.cpus_removed:
        out.print(f"- CPU note {k:#x}" if k > 0xFFFF else f"- CPU note {k}")
    for r in d.ranges_added:
        out.print(f"+ memory {r.start:#x}-{r.end:#x} ({_size(r.size)})")
    for r in d.ranges_removed:
        out.print(f"- memory {r.start:#x}-{r.end:#x} ({_size(r.size)})")
    for x, y in d.ranges_resized:
        out.print(f"~ memory {x.start:#x}: {_size(x.size)} -> {_size(y.size)} (now ends {y.end:#x})")
    if d.vmcoreinfo_moved:
        out.print("~ VMCOREINFO note moved or resized")
    if d.kernel_text_changed:
        out.print("~ kernel text mapping changed")


@cli.command()
@root_option
@click.option("--json", "as_json", is_flag=True)
@fails_cleanly
def status(root: Path, as_json: bool) -> None:
    """Is a crash kernel loaded, does the kernel update it on hotplug, is the buffer big enough,
    and would an installed udev rule still unload-then-reload on hotplug?"""
    st = kdump_status(root)
    if as_json:
        click.echo(json.dumps(st.to_json(), indent=1))
        return

    def flag(v: int | bool | None, absent: str) -> str:
        return absent if v is None else ("yes" if v else "no")

    out.print(f"kernel {st.kernel_release or '?'} (root {st.root})")
    out.print(f"crash kernel loaded: {flag(st.crash_loaded, 'unknown (no /sys/kernel/kexec_crash_loaded)')}")
    if st.crash_size is not None:
        out.print(f"crashkernel reservation: {_size(st.crash_size)}")
    absent = "no (attribute absent: kernel without CONFIG_CRASH_HOTPLUG)"
    out.print(f"kernel updates the header on CPU hotplug: {flag(st.cpu_crash_hotplug, absent)}")
    out.print(f"kernel updates the header on memory hotplug: {flag(st.memory_crash_hotplug, absent)}")
    if st.header_used is not None:
        out.print(
            f"elfcorehdr for this machine: {st.header_used} bytes used ({st.header_ranges} memory ranges), "
            f"buffer {st.header_bufsz}; segment reserved {st.segment_memsz} bytes -> room for "
            f"{st.headroom_phdrs} more program headers"
        )
    if st.sysfs_elfcorehdr_size:
        out.print(f"/sys/kernel/crash_elfcorehdr_size: {st.sysfs_elfcorehdr_size}")
    reloading = [v for v in st.udev if v.reloads]
    if reloading:
        out.print("[yellow]udev would unload-then-reload kdump on:[/yellow] "
                  + ", ".join(f"{v.subsystem} {v.action}" for v in reloading))
        for v in reloading[:1]:
            for line in v.by:
                out.print(f"  {line}", markup=False)
    else:
        out.print("udev: no installed rule reloads kdump on CPU or memory hotplug")
    for p in st.problems:
        out.print(f"[red]problem:[/red] {p}")


@cli.command()
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), required=True)
@root_option
@fails_cleanly
def snapshot(output: Path, root: Path) -> None:
    """Write a snapshot of the machine state under ROOT (default: this host) to OUTPUT."""
    rep = write_snapshot(root, output)
    out.print(f"{output}: {rep.files_written} files")
    for line in rep.cannot_see:
        out.print(f"[yellow]cannot see:[/yellow] {line}", markup=True)
    if rep.cannot_see:
        sys.exit(1)


@cli.group()
def scenario() -> None:
    """Scripted hotplug runs on the model machine, ending in a panic and an audited vmcore."""


@scenario.command("run")
@click.option("--design", type=click.Choice(SCENARIO_DESIGNS), default="upstream", show_default=True)
@click.option("--syscall", type=click.Choice(["kexec_file_load", "kexec_load"]), default="kexec_file_load",
              show_default=True)
@click.option("--kernel", type=click.Choice(["6.12.43", "6.12", "6.1"]), default="6.12.43", show_default=True)
@click.option("--mem-gib", type=float, default=4, show_default=True)
@click.option("--cpus", type=int, default=2, show_default=True)
@click.option("--steps", "steps_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSON list of steps (default: the scripted run: 2 x 1 GiB DIMMs, 2 CPUs, offline one, "
                   "remove a DIMM, add 2 GiB, panic).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Directory for the machine at the panic (root/) and, with --write-vmcore, the vmcore.")
@click.option("--write-vmcore", is_flag=True, help="Also write the whole vmcore (as large as the machine's RAM).")
@click.option("--json", "as_json", is_flag=True)
@fails_cleanly
def scenario_run(design: str, syscall: str, kernel: str, mem_gib: float, cpus: int, steps_file: Path | None,
                 out_dir: Path, write_vmcore: bool, as_json: bool) -> None:
    """Run a scenario, panic, and audit the vmcore against the machine at the panic.
    Exit 0 when the dump is complete, 1 when it is lost or has gaps, 2 on bad input."""
    steps = SCRIPTED_STEPS if steps_file is None else load_steps(steps_file)
    run = run_scenario(steps, design=design, syscall=syscall, kernel=kernel, mem_gib=mem_gib, cpus=cpus)
    if run.panic is None:
        raise ScenarioError("the steps end without a panic step")
    rep = run.audit(out_dir, write_vmcore=write_vmcore)
    records = run.hotplug.records if run.hotplug else []
    summary = {
        "design": design, "syscall": syscall, "kernel": kernel, "steps": run.log,
        "hotplug_events": len(records),
        "regenerations": run.hotplug.regenerations if run.hotplug else 0,
        "reloads": run.kdump.reloads if run.kdump else 0,
        "panic_cpu": run.panic.panic_cpu,
        "dump_lost": None if run.panic.lost is None else run.panic.lost.value,
        "audit": None if rep is None else rep.to_json(),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    else:
        for line in run.log:
            out_print(f"step {line}")
        out_print(f"{summary['hotplug_events']} crash hotplug events, {summary['regenerations']} header "
                  f"regenerations, {summary['reloads']} full reloads")
        if rep is None:
            out_print(f"panic on cpu{run.panic.panic_cpu}: dump lost: {summary['dump_lost']}")
        else:
            render_report(rep, out)
    sys.exit(1 if rep is None or rep.exit_status else 0)


def out_print(text: str) -> None:
    out.print(text, markup=False, soft_wrap=True)


@cli.command()
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Snapshot to use instead of the bundled example.")
@fails_cleanly
def demo(root: Path | None) -> None:
    """The default job: build and show the elfcorehdr of the bundled example snapshot."""
    root = root or example_root()
    state = read_kernel_state(root)
    buf, nr = prepare_elf_headers(state)
    memsz = crash_load_segments_memsz(state.config, len(buf), nr)
    from crash_hotplug.elf.core import ElfCore

    s = summarize(ElfCore.parse(buf, "built"), note_owners={a: c for c, a in state.crash_notes.items()},
                  reserved_size=-(-memsz // PAGE_SIZE) * PAGE_SIZE)
    _print_summary(s, f"elfcorehdr built for {root} (kernel {state.config.version})")


cli.add_command(audit)
cli.add_command(simulate)
cli.add_command(lab)


def main() -> None:
    cli(prog_name="crash-hotplug")
