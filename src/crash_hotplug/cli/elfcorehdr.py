"""``crash-hotplug elfcorehdr``: build, show and diff kdump ELF core headers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from crash_hotplug.cli.common import PAGE_SIZE, fails_cleanly, out, output_file, root_option, size_text, write_output
from crash_hotplug.crash.vmcore import read_vmcore_file, sniff_format
from crash_hotplug.crash.x86_64 import crash_load_segments_memsz, prepare_elf_headers
from crash_hotplug.elf.core import read_core_file
from crash_hotplug.inspect import DumpSummary, HeaderSummary, diff_headers, summarize, summarize_dump
from crash_hotplug.snapshot.reader import read_kernel_state

__all__ = ["elfcorehdr", "print_dump_summary", "print_summary"]


@click.group()
def elfcorehdr() -> None:
    """Build, inspect and compare kdump ELF core headers."""


@elfcorehdr.command("build")
@root_option
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True, callback=output_file)
@click.option("--kernel-version", help="Build as this kernel version would (default: the snapshot's osrelease).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fails_cleanly
def elfcorehdr_build(root: Path, output: Path, kernel_version: str | None, as_json: bool) -> None:
    """Write the elfcorehdr the kernel of ROOT builds for kexec_file_load (x86_64)."""
    state = read_kernel_state(root, kernel_version=kernel_version)
    buf, nr = prepare_elf_headers(state)
    write_output(output, buf)
    memsz = crash_load_segments_memsz(state.config, len(buf), nr)
    if as_json:
        click.echo(json.dumps({"output": str(output), "bytes": len(buf), "cpu_notes": len(state.header_cpus),
                               "memory_ranges": nr, "kernel": str(state.config.version),
                               "segment_memsz": -(-memsz // PAGE_SIZE) * PAGE_SIZE}, indent=1))
        return
    out.print(
        f"{output}: {len(buf)} bytes, {len(state.header_cpus)} CPU notes, {nr} memory ranges; "
        f"kernel {state.config.version} segment memsz {-(-memsz // PAGE_SIZE) * PAGE_SIZE}"
    )


def print_summary(s: HeaderSummary, title: str) -> None:
    out.print(f"[bold]{title}[/bold]: {s.kind}, e_phnum {s.e_phnum}, header {s.used_size} bytes")
    for w in s.warnings:
        out.print(f"warning: {w}", markup=False, soft_wrap=True)
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
        out.print(f"kernel text {kt.vaddr:#x} -> {kt.start:#x}-{kt.end:#x} ({size_text(kt.size)})")
    t = Table(title="memory", show_edge=False)
    for col in ("start", "end", "size", "vaddr"):
        t.add_column(col, justify="right")
    for r in s.ranges:
        t.add_row(f"{r.start:#x}", f"{r.end:#x}", size_text(r.size), f"{r.vaddr:#x}")
    out.print(t)
    out.print(f"{len(s.ranges)} ranges, {size_text(s.total_ram)} in all")
    if s.reserved_size is not None:
        out.print(
            f"used {s.used_size} of {s.reserved_size} reserved bytes: room for {s.free_phdrs} more program headers"
        )


def print_dump_summary(s: DumpSummary) -> None:
    """A kdump-compressed file's header fields, page counts, CPU notes and memory ranges."""
    u = s.utsname
    out.print(f"[bold]{s.file}[/bold]: {s.format}, header_version {s.header_version}", soft_wrap=True)
    out.print(f"  utsname: {u['sysname']} {u['nodename']} {u['release']} {u['version']} {u['machine']}",
              markup=False, soft_wrap=True)
    level = "unknown" if s.dump_level_text is None else s.dump_level_text
    out.print(f"  block_size {s.block_size}, nr_cpus {s.nr_cpus}, compression {s.compression}, dump level {level}",
              markup=False)
    out.print(f"  max_mapnr {s.max_mapnr:#x}, timestamp {s.timestamp}, phys_base {s.phys_base:#x}"
              + (f", split: pfns {s.split[0]:#x}-{s.split[1]:#x} in this file" if s.split else ""), markup=False)
    out.print(f"  pages: {s.pages_present} present (1st bitmap), {s.pages_dumped} dumped (2nd bitmap), "
              f"{s.pages_filtered} filtered by the dump level", markup=False)
    if s.incomplete:
        out.print("  [red]incomplete[/red]: makedumpfile marked the dump DUMP_DH_COMPRESSED_INCOMPLETE")
    t = Table(title="CPU notes", show_edge=False)
    for col in ("#", "size", "pid", "rip"):
        t.add_column(col, justify="right")
    for c in s.cpu_notes:
        t.add_row(str(c.index), str(c.size), "-" if c.pid is None else str(c.pid),
                  "-" if c.rip is None else f"{c.rip:#x}")
    out.print(t)
    if s.vmcoreinfo_size:
        out.print(f"VMCOREINFO, {s.vmcoreinfo_size} bytes")
    for k, v in s.vmcoreinfo.items():
        out.print(f"  {k}={v}", markup=False)
    t = Table(title="memory (1st bitmap)", show_edge=False)
    for col in ("start", "end", "size"):
        t.add_column(col, justify="right")
    for r in s.ranges:
        t.add_row(f"{r.start:#x}", f"{r.end:#x}", size_text(r.size))
    out.print(t)
    out.print(f"{len(s.ranges)} ranges, {size_text(s.total_ram)} in all")
    for w in s.warnings:
        out.print(f"warning: {w}", markup=False, soft_wrap=True)


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
    """Show what a raw elfcorehdr or a vmcore describes: CPUs, VMCOREINFO, kernel text, memory.

    A kdump-compressed or flattened file (makedumpfile -c/-l/-p/-z, -F) shows its header fields,
    page counts and the memory of its 1st bitmap."""
    kind = sniff_format(file)
    if kind in ("kdump-compressed", "flattened"):
        vf = read_vmcore_file(file)
        if vf.kdump is not None:
            d = summarize_dump(vf)
            if as_json:
                click.echo(json.dumps(d.to_json(), indent=1))
            else:
                print_dump_summary(d)
            return
        assert vf.core is not None
        flat = summarize(vf.core)
        if as_json:
            click.echo(json.dumps({**flat.to_json(), "format": vf.dump_format}, indent=1))
        else:
            print_summary(flat, f"{file} ({vf.dump_format})")
        return
    core = read_core_file(file)
    reserved = segment_size
    if reserved is None and root is not None:
        state = read_kernel_state(root)
        buf, nr = prepare_elf_headers(state)
        memsz = crash_load_segments_memsz(state.config, len(buf), nr)
        reserved = -(-memsz // PAGE_SIZE) * PAGE_SIZE
    if reserved is None and core.is_raw_elfcorehdr:
        reserved = core.size
    s = summarize(core, note_owners=_owners(root, None), reserved_size=reserved)
    if as_json:
        click.echo(json.dumps(s.to_json(), indent=1))
    else:
        print_summary(s, str(file))


@elfcorehdr.command("diff")
@click.argument("a", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("b", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@fails_cleanly
def elfcorehdr_diff(a: Path, b: Path, as_json: bool) -> None:
    """Say what changed from A to B: CPUs added/removed, ranges added/removed/resized.
    Exit 0 when they describe the same machine, 1 when they differ (as diff(1) does), 2 on bad input."""
    sa, sb = summarize(read_core_file(a)), summarize(read_core_file(b))
    d = diff_headers(sa, sb)
    warnings = [f"{f}: {w}" for f, s in ((a, sa), (b, sb)) for w in s.warnings]
    if as_json:
        click.echo(json.dumps({**d.to_json(), "warnings": warnings}, indent=1))
        sys.exit(0 if d.empty else 1)
    for w in warnings:
        out.print(f"warning: {w}", markup=False, soft_wrap=True)
    if d.empty:
        out.print("no change in CPUs, memory, VMCOREINFO or kernel text")
        return
    for k in d.cpus_added:
        out.print(f"+ CPU note {k:#x}" if k > 0xFFFF else f"+ CPU note {k}")
    for k in d.cpus_removed:
        out.print(f"- CPU note {k:#x}" if k > 0xFFFF else f"- CPU note {k}")
    for r in d.ranges_added:
        out.print(f"+ memory {r.start:#x}-{r.end:#x} ({size_text(r.size)})")
    for r in d.ranges_removed:
        out.print(f"- memory {r.start:#x}-{r.end:#x} ({size_text(r.size)})")
    for x, y in d.ranges_resized:
        out.print(f"~ memory {x.start:#x}: {size_text(x.size)} -> {size_text(y.size)} (now ends {y.end:#x})")
    if d.vmcoreinfo_moved:
        out.print("~ VMCOREINFO note moved or resized")
    if d.kernel_text_changed:
        out.print("~ kernel text mapping changed")
    sys.exit(1)
