"""``crash-hotplug scenario``: scripted hotplug runs on the model machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from crash_hotplug.cli.audit import render_report
from crash_hotplug.cli.common import OutputError, fails_cleanly, out, output_dir, write_output
from crash_hotplug.fileio import read_limited
from crash_hotplug.kexec.kexec_load_ppc64 import Ppc64Payload
from crash_hotplug.scenario import SCENARIO_DESIGNS, SCRIPTED_STEPS, ScenarioError, load_steps, run_scenario
from crash_hotplug.scenario_ppc64 import PPC64_SCRIPTED_STEPS, Ppc64Run

__all__ = ["scenario"]


@click.group()
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
              callback=output_dir,
              help="Directory for the machine at the panic (root/) and, with --write-vmcore, the vmcore.")
@click.option("--write-vmcore", is_flag=True, help="Also write the whole vmcore (as large as the machine's RAM).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--arch", type=click.Choice(["x86_64", "ppc64le"]), default="x86_64", show_default=True,
              help="ppc64le: a pseries guest from --root, loaded with kexec-tools' kexec_load --hotplug.")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="ppc64le: the snapshot the guest starts from.")
@click.option("--fdt", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="ppc64le: the crash kernel's FDT kexec-tools loads (a snapshot's /proc/device-tree is often "
                   "partial, so it is not flattened here).")
@click.option("--kernel-memsz", type=lambda v: v if isinstance(v, int) else int(v, 0), default=0x289F000,
              show_default=True,
              help="ppc64le: memory size of the capture kernel segment.")
@click.option("--initrd-size", type=int, default=1221577, show_default=True, help="ppc64le: initrd bytes.")
@click.option("--no-hotplug", is_flag=True, help="ppc64le: load without --hotplug (the kernel updates nothing).")
@fails_cleanly
def scenario_run(design: str, syscall: str, kernel: str, mem_gib: float, cpus: int, steps_file: Path | None,
                 out_dir: Path, write_vmcore: bool, as_json: bool, arch: str, root: Path | None,
                 fdt: Path | None, kernel_memsz: int, initrd_size: int, no_hotplug: bool) -> None:
    """Run a scenario, panic, and audit the vmcore against the machine at the panic.
    Exit 0 when the dump is complete, 1 when it is lost or has gaps, 2 on bad input."""
    if arch == "ppc64le":
        _run_ppc64(root, fdt, steps_file, out_dir, kernel_memsz, initrd_size, not no_hotplug, as_json)
        return
    steps = SCRIPTED_STEPS if steps_file is None else load_steps(steps_file)
    run = run_scenario(steps, design=design, syscall=syscall, kernel=kernel, mem_gib=mem_gib, cpus=cpus,
                       source=None if steps_file is None else str(steps_file))
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


def _run_ppc64(root: Path | None, fdt: Path | None, steps_file: Path | None, out_dir: Path, kernel_memsz: int,
               initrd_size: int, hotplug: bool, as_json: bool) -> None:
    """A ppc64le run: the header and crash FDT in memory after every step go to OUT/S<n>/."""
    if root is None or fdt is None:
        raise click.UsageError("--arch ppc64le needs --root (the guest's snapshot) and --fdt (the crash FDT)")
    steps = list(PPC64_SCRIPTED_STEPS) if steps_file is None else load_steps(steps_file)
    payload = Ppc64Payload(b"", kernel_memsz, bytes(initrd_size), read_limited(fdt, 16 << 20))
    run = Ppc64Run.from_snapshot(root, payload, hotplug=hotplug)
    rows: list[dict[str, object]] = []
    prev: tuple[bytes, bytes] | None = None
    for n, step in enumerate(steps):
        run.apply(step)
        if run.image is None or step.get("op") == "panic":
            continue
        now = (run.header(), run.fdt())
        d = out_dir / f"S{n}"
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(d, e.strerror or str(e)) from None
        write_output(d / "elfcorehdr.bin", now[0])
        write_output(d / "crash-fdt.dtb", now[1])
        rows.append({"step": f"S{n}", "op": dict(step),
                     "header_changed": None if prev is None else now[0] != prev[0],
                     "fdt_changed": None if prev is None else now[1] != prev[1]})
        prev = now
    panic = run.panics[-1] if run.panics else None
    if panic is None:
        raise ScenarioError("the steps end without a panic step")
    summary = {"arch": "ppc64le", "hotplug": hotplug, "steps": rows,
               "hotplug_events": [(r.action_name, r.outcome.value) for r in run.hp.records],
               "panic_cpu": panic.cpu, "capture_boot_cpu_node": panic.boot_node,
               "dump_lost": None if panic.lost is None else panic.lost.value}
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    else:
        for r in rows:
            out_print(f"{r['step']} {r['op']}: header changed {r['header_changed']}, crash FDT changed "
                      f"{r['fdt_changed']}")
        out_print(f"{len(run.hp.records)} crash hotplug events, "
                  f"{sum(1 for r in run.hp.records if r.outcome.value == 'updated')} updates")
        if panic.lost is None:
            out_print(f"panic on cpu{panic.cpu}: the capture kernel boots on {panic.boot_node}")
        else:
            out_print(f"panic on cpu{panic.cpu}: dump lost: {panic.lost.value}")
    sys.exit(0 if panic.lost is None else 1)
