"""``crash-hotplug status`` and ``crash-hotplug snapshot``: a real host, a snapshot or a sosreport."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from crash_hotplug.cli.common import fails_cleanly, out, root_option, size_text
from crash_hotplug.snapshot.writer import write_snapshot
from crash_hotplug.status import kdump_status

__all__ = ["snapshot", "status"]


@click.command()
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
        out.print(f"crashkernel reservation: {size_text(st.crash_size)}")
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


@click.command()
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
