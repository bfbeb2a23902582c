"""``crash-hotplug status`` and ``crash-hotplug snapshot``: a real host, a snapshot or a sosreport."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click
from rich.markup import escape

from crash_hotplug.cli.common import fails_cleanly, out, output_empty_dir, root_option, size_text
from crash_hotplug.snapshot.writer import write_snapshot
from crash_hotplug.status import kdump_status

__all__ = ["snapshot", "status"]


@click.command()
@root_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fails_cleanly
def status(root: Path, as_json: bool) -> None:
    """Will kdump on ROOT (a live host, a snapshot, a sosreport) dump a panic that follows CPU or
    memory hotplug? One line per risk with its cause and its fix.

    Exit 0: a crash kernel is loaded and stays true across CPU and memory hotplug; 1: at risk, or a
    fact needed to say so is unknown (each listed); 2: unusable input."""
    st = kdump_status(root)
    if as_json:
        click.echo(json.dumps(st.to_json(), indent=1))
        sys.exit(st.exit_status)

    def flag(v: int | str | bool | None) -> str:
        if v is None:
            return "unknown"
        if v == "absent":
            return "no (attribute absent: kernel without CONFIG_CRASH_HOTPLUG)"
        return "yes" if v == 1 or v is True else "no"

    say = functools.partial(out.print, markup=False, soft_wrap=True)
    say(f"kernel {st.kernel_release or 'unknown'} ({st.root_kind} {st.root})")
    say(f"crash kernel loaded: {flag(st.crash_loaded)}")
    if st.crash_size is not None:
        say(f"crashkernel reservation: {size_text(st.crash_size)}")
    say(f"kernel updates the header on CPU hotplug: {flag(st.cpu_crash_hotplug)}")
    say(f"kernel updates the header on memory hotplug: {flag(st.memory_crash_hotplug)}")
    if st.header_used is not None:
        say(f"elfcorehdr for this machine: {st.header_used} bytes used ({st.header_ranges} memory ranges), "
            f"buffer {st.header_bufsz}; segment reserved {st.segment_memsz} bytes -> room for "
            f"{st.headroom_phdrs} more program headers")
    if st.sysfs_elfcorehdr_size:
        say(f"/sys/kernel/crash_elfcorehdr_size: {st.sysfs_elfcorehdr_size}")
    say(f"udev rule files: {len(st.udev_rule_files)}" + (f" ({len(st.udev_overridden)} hidden or masked)"
                                                          if st.udev_overridden else ""))
    for v in st.udev:
        verdict = {True: "reloads kdump", False: "no reload", None: "unknown"}[v.reloads]
        by = f" ({v.by[0]})" if v.by and v.reloads is not False else ""
        say(f"  udev {v.subsystem} {v.action}: {verdict}{by}")
    for n in st.notes:
        say(f"note: {n}")
    for u in st.unknown:
        say(f"unknown: {u}")
    for r in st.risks:
        out.print(f"[red]risk:[/red] {escape(r.line())}", soft_wrap=True)
    tail = {"safe": "[green]safe[/green]: kdump stays true across CPU and memory hotplug",
            "at risk": f"[red]at risk[/red]: {len(st.risks)} risk(s)",
            "unknown": "[yellow]not known to be safe[/yellow]: see the unknowns above"}[st.verdict]
    out.print(f"verdict: {tail}")
    sys.exit(st.exit_status)


@click.command()
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), required=True,
              callback=output_empty_dir)
@root_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fails_cleanly
def snapshot(output: Path, root: Path, as_json: bool) -> None:
    """Write a snapshot of the machine state under ROOT (default: this host) to OUTPUT, a new or
    empty directory: every file the elfcorehdr builder reads, as read, plus a manifest of what
    could not be seen and why.

    Exit 0: every file the builder needs was read; 1: the snapshot was written but some files
    could not be seen (each listed: not root, kernel without the feature, not present); 2: unusable
    ROOT or OUTPUT."""
    rep = write_snapshot(root, output)
    if as_json:
        click.echo(json.dumps({"root": str(rep.root), "files_written": rep.files_written,
                               "cannot_see": rep.cannot_see, "unreadable_files": rep.unreadable_files,
                               "absent": rep.absent}, indent=1))
    else:
        out.print(f"{output}: {rep.files_written} files", markup=False)
        for line in rep.cannot_see:
            out.print(f"[yellow]cannot see:[/yellow] {escape(line)}")
    sys.exit(1 if rep.cannot_see else 0)
