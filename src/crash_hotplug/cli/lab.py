"""``crash-hotplug lab``: run scenarios on real Debian kernels in QEMU, and check runs against the model."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console

from crash_hotplug.cli.common import output_dir
from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.lab.errors import LabError

__all__ = ["lab"]


@click.group("lab")
def lab() -> None:
    """Real-kernel lab: boot Debian kernels in QEMU, hot-plug, capture, compare with the model."""


@lab.command("run")
@click.argument("scenario")
@click.option("--kernel", "kernel_key", required=True, help="6.1, 6.12, 6.12-bpo, 6.12.43, 6.1.0-N or 6.12.N")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, help="run directory",
              callback=output_dir)
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    default="auto",
    show_default=True,
    help="auto tries KVM and falls back to TCG where KVM cannot run the guest",
)
def run_cmd(scenario: str, kernel_key: str, out: Path | None, accel: str) -> None:
    """Run SCENARIO (a shipped name such as base, short, cpu, storm, or a JSON file) on a kernel."""
    from crash_hotplug.lab.plan import load_plan
    from crash_hotplug.lab.scenario import run_scenario

    console = Console(stderr=True)
    try:
        plan = load_plan(scenario)
        if out is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            out = Path("lab-runs") / f"{kernel_key}-{plan.name}-{stamp}"
        t0 = time.monotonic()
        with console.status(f"lab run {plan.name} on {kernel_key}") as status:

            def report(msg: str) -> None:
                console.log(msg)
                status.update(f"[{time.monotonic() - t0:6.1f} s] {msg}")

            run_dir = run_scenario(plan, kernel_key, out, accel=accel, report=report)
    except (LabError, CrashHotplugError) as exc:
        console.print(f"[red]lab run failed:[/red] {exc}", markup=True, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[red]interrupted; the VM was stopped[/red]")
        sys.exit(130)
    console.print(f"run directory: {run_dir} ({time.monotonic() - t0:.1f} s)")
    click.echo(str(run_dir))


@lab.command("check")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--kernel-version", default=None, help="kernel release for the model (default: each root's osrelease)")
@click.option(
    "--against",
    type=click.Path(path_type=Path),
    default=None,
    help="a reference run (e.g. the vectors' run of the same kernel) to compare headers with, for information",
)
def check_cmd(run_dir: Path, kernel_version: str | None, against: Path | None) -> None:
    """Compare each step's real elfcorehdr with the model's, and the vmcore with the audit."""
    from crash_hotplug.lab.check import check_run, render

    console = Console()
    try:
        report = check_run(run_dir, kernel_version=kernel_version, against=against)
    except (LabError, CrashHotplugError) as exc:
        Console(stderr=True).print(f"[red]lab check failed:[/red] {exc}", highlight=False)
        sys.exit(2)
    render(report, console)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    lab()
