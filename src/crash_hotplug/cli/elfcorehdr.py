"""``crash-hotplug elfcorehdr``: build, show and diff kdump ELF core headers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from crash_hotplug.cli.common import PAGE_SIZE, fails_cleanly, out, output_file, root_option, size_text, write_output
from crash_hotplug.crash.ppc64 import arch_crash_get_elfcorehdr_size, prepare_elf_headers_ppc64
from crash_hotplug.crash.vmcore import read_vmcore_file, sniff_format
from crash_hotplug.crash.x86_64 import crash_load_segments_memsz, prepare_elf_headers
from crash_hotplug.elf.core import read_core_file
from crash_hotplug.errors import SnapshotError
from crash_hotplug.fdt.inspect import FdtSummary, fdt_diff, is_fdt, summarize_fdt
from crash_hotplug.fileio import open_regular, read_limited
from crash_hotplug.inspect import DumpSummary, HeaderSummary, diff_headers, summarize, summarize_dump
from crash_hotplug.kexec.kexec_load_ppc64 import crash_create_elf64_headers_ppc64
from crash_hotplug.machine.kernel import KernelState
from crash_hotplug.snapshot.devicetree import is_ppc64_root
from crash_hotplug.snapshot.model_ppc64 import pseries_from_snapshot
from crash_hotplug.snapshot.reader import read_kernel_state
from crash_hotplug.snapshot.reader_ppc64 import read_kernel_state_ppc64
from crash_hotplug.snapshot.root import FsRoot

#: the largest device tree blob show/diff read (a crash FDT is tens of KiB)
MAX_FDT_BYTES = 16 << 20
ARCHES = ("x86_64", "ppc64le")

__all__ = ["elfcorehdr", "print_dump_summary", "print_summary"]


@click.group()
def elfcorehdr() -> None:
    """Build, inspect and compare kdump ELF core headers."""


def root_arch(root: Path) -> str:
    """The architecture a snapshot comes from: ppc64le when it has a powerpc device tree."""
    return "ppc64le" if is_ppc64_root(FsRoot(root)) else "x86_64"


@elfcorehdr.command("build")
@root_option
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True, callback=output_file)
@click.option("--kernel-version", help="Build as this kernel version would (default: the snapshot's osrelease).")
@click.option("--arch", type=click.Choice(ARCHES), default=None,
              help="Architecture of ROOT (default: what the snapshot says: ppc64le when it has /proc/device-tree).")
@click.option("--kexec-tools", "by_kexec_tools", is_flag=True,
              help="ppc64le: the first header, as kexec-tools writes it for kexec_load (default: the kernel's "
                   "rebuild on a memory hotplug event).")
@click.option("--backup-start", type=lambda v: int(v, 0), default=None,
              help="ppc64le: address of the backup segment the [0, 64K) PT_LOAD points at.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fails_cleanly
def elfcorehdr_build(root: Path, output: Path, kernel_version: str | None, arch: str | None,
                     by_kexec_tools: bool, backup_start: int | None, as_json: bool) -> None:
    """Write the elfcorehdr ROOT's kernel builds: x86_64 for kexec_file_load; ppc64le as the kernel
    rebuilds it on memory hotplug, or with --kexec-tools as kexec-tools first writes it."""
    arch = arch or root_arch(root)
    if arch == "ppc64le":
        _build_ppc64(root, output, kernel_version, by_kexec_tools, backup_start, as_json)
        return
    if by_kexec_tools or backup_start is not None:
        raise click.UsageError("--kexec-tools and --backup-start are for --arch ppc64le")
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


def _build_ppc64(root: Path, output: Path, kernel_version: str | None, by_kexec_tools: bool,
                 backup_start: int | None, as_json: bool = False) -> None:
    state, dt = read_kernel_state_ppc64(root, kernel_version=kernel_version)
    if by_kexec_tools:
        if backup_start is None:
            raise click.UsageError("--kexec-tools needs --backup-start (where kexec-tools put the backup segment)")
        buf = crash_create_elf64_headers_ppc64(pseries_from_snapshot(root), backup_start)
        nr = (len(buf) and int.from_bytes(buf[56:58], "little")) - len(state.possible) - 1
        who = "kexec-tools"
    else:
        buf, nr = prepare_elf_headers_ppc64(state, dt.rtas, backup_start)
        who = "kernel"
    write_output(output, buf)
    size = arch_crash_get_elfcorehdr_size(len(state.possible), state.config.crash_max_memory_ranges,
                                          state.config.memory_hotplug)
    note = "" if backup_start is not None else "; [0, 64K) PT_LOAD at offset 0 (no --backup-start)"
    if as_json:
        click.echo(json.dumps({"output": str(output), "bytes": len(buf), "arch": "ppc64le", "by": who,
                               "cpu_notes": len(state.possible), "memory_ranges": nr,
                               "kernel": str(state.config.version), "crash_elfcorehdr_size": size}, indent=1))
        return
    out.print(f"{output}: {len(buf)} bytes ({who}, ppc64le), {len(state.possible)} CPU notes, {nr} memory ranges; "
              f"kernel {state.config.version} crash_elfcorehdr_size {size}{note}")


def _read_fdt(path: Path) -> bytes | None:
    """The blob at ``path`` when the file is a device tree blob, else None."""
    with open_regular(path) as f:
        magic = f.read(4)
    return read_limited(path, MAX_FDT_BYTES) if is_fdt(magic) else None


def print_fdt_summary(s: FdtSummary, title: str) -> None:
    out.print(f"[bold]{title}[/bold]: flattened device tree v{s.version}, {s.totalsize} bytes "
              f"({s.used} used, {s.free} free), {s.nodes} nodes, {s.properties} properties")
    out.print(f"boot_cpuid_phys {s.boot_cpuid_phys}; bootargs: {s.bootargs!r}")
    t = Table(title="/cpus", show_edge=False)
    for col in ("node", "reg", "interrupt servers"):
        t.add_column(col)
    for c in s.cpus:
        t.add_row(c.path, "-" if c.reg is None else str(c.reg), " ".join(map(str, c.servers)))
    out.print(t)
    t = Table(title="memory reservations", show_edge=False)
    for col in ("address", "size"):
        t.add_column(col, justify="right")
    for a, n in s.mem_rsvmap:
        t.add_row(f"{a:#x}", f"{n:#x}")
    out.print(t)


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
    state = _root_state(root, kernel_version)
    return {addr: cpu for cpu, addr in state.crash_notes.items()}


def _root_state(root: Path, kernel_version: str | None) -> KernelState:
    if root_arch(root) == "ppc64le":
        return read_kernel_state_ppc64(root, kernel_version=kernel_version)[0]
    return read_kernel_state(root, kernel_version=kernel_version)


def _reserved(root: Path) -> int:
    """The elfcorehdr segment size ROOT's kernel reserves."""
    if root_arch(root) == "ppc64le":
        state = read_kernel_state_ppc64(root)[0]
        size = arch_crash_get_elfcorehdr_size(len(state.possible), state.config.crash_max_memory_ranges,
                                              state.config.memory_hotplug)
        return -(-(-(-size // 1024) * 1024) // PAGE_SIZE) * PAGE_SIZE
    state = read_kernel_state(root)
    buf, nr = prepare_elf_headers(state)
    memsz = crash_load_segments_memsz(state.config, len(buf), nr)
    return -(-memsz // PAGE_SIZE) * PAGE_SIZE


@elfcorehdr.command("show")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Machine state to name each CPU note's owner and the reserved segment size.")
@click.option("--segment-size", type=int, default=None, help="Reserved elfcorehdr segment size in bytes.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fails_cleanly
def elfcorehdr_show(file: Path, root: Path | None, segment_size: int | None, as_json: bool) -> None:
    """Show what a raw elfcorehdr or a vmcore describes: CPUs, VMCOREINFO, kernel text, memory; or
    what a crash kernel's device tree blob holds (/cpus, reservations, free room).

    A kdump-compressed or flattened file (makedumpfile -c/-l/-p/-z, -F) shows its header fields,
    page counts and the memory of its 1st bitmap."""
    blob = _read_fdt(file)
    if blob is not None:
        fs = summarize_fdt(blob, str(file))
        if as_json:
            click.echo(json.dumps(fs.to_json(), indent=1))
        else:
            print_fdt_summary(fs, str(file))
        return
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
        reserved = _reserved(root)
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
    """Say what changed from A to B: CPUs added/removed, ranges added/removed/resized (headers), or
    nodes, properties, order and reservations (device tree blobs).
    Exit 0 when they describe the same machine, 1 when they differ (as diff(1) does), 2 on bad input."""
    fa, fb = _read_fdt(a), _read_fdt(b)
    if (fa is None) != (fb is None):
        raise SnapshotError(str(b if fa is not None else a), "is not a device tree blob like the other file")
    if fa is not None and fb is not None:
        lines = fdt_diff(fa, fb, str(a), str(b))
        if as_json:
            click.echo(json.dumps({"differences": lines}, indent=1))
        elif not lines:
            out.print("no change in nodes, properties, reservations or header")
        for line in [] if as_json else lines:
            out.print(line, markup=False)
        sys.exit(1 if lines else 0)
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
