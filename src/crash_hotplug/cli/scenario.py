"""``crash-hotplug scenario``: scripted hotplug runs on the model machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from crash_hotplug.cli.audit import render_report
from crash_hotplug.cli.common import fails_cleanly, out, output_dir
from crash_hotplug.scenario import SCENARIO_DESIGNS, SCRIPTED_STEPS, ScenarioError, load_steps, run_scenario

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
