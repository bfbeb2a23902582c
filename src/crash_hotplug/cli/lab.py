"""``crash-hotplug lab``: run scenarios on real Debian kernels in QEMU, and check runs against the model."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from crash_hotplug.cli.common import check_output_dir, output_dir
from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.lab.errors import LabError

if TYPE_CHECKING:
    from crash_hotplug.lab.kconfig import KernelConfig
    from crash_hotplug.lab.kernels import KernelRequest

__all__ = ["lab"]


@click.group("lab")
def lab() -> None:
    """Real-kernel lab: boot Debian kernels in QEMU, hot-plug, capture, compare with the model."""


def _one_line(exc: BaseException) -> str:
    """An error as one line (the CLI's contract for unusable input)."""
    return " ".join(str(exc).split())


def _kernel_request(
    kernel_key: str | None, kernel_debs: tuple[Path, ...], vmlinuz: Path | None, config: Path | None
) -> KernelRequest:
    from crash_hotplug.lab.kernels import KernelRequest

    return KernelRequest(key=kernel_key, debs=tuple(kernel_debs), vmlinuz=vmlinuz, config=config)


def kernel_options(fn: Callable[..., None]) -> Callable[..., None]:
    """The ways to name a kernel: --kernel, --kernel-deb, --vmlinuz + --config."""
    fn = click.option("--config", "config", type=click.Path(path_type=Path), default=None, help="its .config")(fn)
    fn = click.option(
        "--vmlinuz", "vmlinuz", type=click.Path(path_type=Path), default=None, help="a bzImage of your own"
    )(fn)
    fn = click.option(
        "--kernel-deb",
        "kernel_debs",
        type=click.Path(path_type=Path),
        multiple=True,
        help="kernel .deb files you have (7.x: linux-binary-* and linux-base-*); repeat the option",
    )(fn)
    fn = click.option(
        "--kernel",
        "kernel_key",
        default=None,
        help="a Debian release (7.3.4+deb13-amd64), X.Y.Z, X.Y, or a key: 6.1, 6.12, 6.12-bpo, 6.12.43, 6.1.0-N",
    )(fn)
    return fn


ACCEL_OPTION = click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    default="auto",
    show_default=True,
    help="auto uses KVM where /dev/kvm works and falls back to TCG where KVM cannot run the guest",
)


@lab.command("run")
@click.argument("scenario")
@kernel_options
@click.option("--out", "out", type=click.Path(path_type=Path), default=None, help="run directory", callback=output_dir)
@ACCEL_OPTION
def run_cmd(
    scenario: str,
    kernel_key: str | None,
    kernel_debs: tuple[Path, ...],
    vmlinuz: Path | None,
    config: Path | None,
    out: Path | None,
    accel: str,
) -> None:
    """Run SCENARIO (a shipped name such as base, short, cpu, storm, or a JSON file) on a kernel."""
    from crash_hotplug.lab.plan import load_plan
    from crash_hotplug.lab.scenario import run_scenario

    console = Console(stderr=True)
    try:
        request = _kernel_request(kernel_key, kernel_debs, vmlinuz, config)
        request.check_files()
        plan = load_plan(scenario)
        if out is None:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            out = Path("lab-runs") / f"{request.label}-{plan.name}-{stamp}"
        t0 = time.monotonic()
        with console.status(f"lab run {plan.name} on {request.label}") as status:

            def report(msg: str) -> None:
                console.log(msg)
                status.update(f"[{time.monotonic() - t0:6.1f} s] {msg}")

            run_dir = run_scenario(plan, request, out, accel=accel, report=report)
    except (LabError, CrashHotplugError) as exc:
        console.print(f"lab run: {_one_line(exc)}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[red]interrupted; the VM was stopped[/red]")
        sys.exit(130)
    console.print(f"run directory: {run_dir} ({time.monotonic() - t0:.1f} s)")
    click.echo(str(run_dir))


def _opt(cfg: KernelConfig | None, name: str) -> str | None:
    """An option's value as the config has it: ``y``, ``not set``, or ``absent`` (the kernel has no
    such option, as 6.1 has no CONFIG_CRASH_HOTPLUG); None when there is no config."""
    if cfg is None:
        return None
    if name in cfg.values:
        return cfg.values[name]
    return "not set" if name in cfg.not_set else "absent"


@lab.command("kernels")
@click.option("--all-flavours", is_flag=True, help="cloud-amd64 and rt-amd64 too")
@click.option(
    "--fetch-images",
    is_flag=True,
    help="download image packages (~150 MiB each) where only they hold a kernel's config",
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table")
def kernels_cmd(all_flavours: bool, fetch_images: bool, as_json: bool) -> None:
    """List the amd64 kernels the Debian archive offers, with CRASH_HOTPLUG and NR_CPUS from each config."""
    from rich.table import Table

    from crash_hotplug.lab.debian import SUITE_ORDER, default_archive
    from crash_hotplug.lab.kconfig import hotplug_verdict
    from crash_hotplug.lab.kernels import FLAVOURS, archive_kernels, config_of

    err = Console(stderr=True)
    try:
        archive = default_archive(lambda m: err.log(m))
        kernels = archive_kernels(archive, FLAVOURS if all_flavours else ("amd64",))
        rows = []
        for k in kernels:
            cfg, where = config_of(archive, k, fetch_images)
            mode, refusal = hotplug_verdict(k.release, cfg)
            rows.append((k, cfg, where, "refused: " + refusal.split(": ", 1)[-1] if refusal else mode))
    except (LabError, CrashHotplugError) as exc:
        err.print(f"lab kernels: {_one_line(exc)}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    if as_json:
        for k, cfg, where, mode in rows:
            click.echo(
                json.dumps(
                    {
                        **k.to_json(),
                        "CONFIG_CRASH_HOTPLUG": None
                        if cfg is None
                        else cfg.values.get("CONFIG_CRASH_HOTPLUG", "not set"),
                        "CONFIG_NR_CPUS": None if cfg is None else cfg.nr_cpus,
                        "config_from": where,
                        "lab": mode,
                    }
                )
            )
        return
    table = Table(title=f"kernels in the archive (suites searched: {', '.join(SUITE_ORDER)})")
    for col in ("release", "package version", "suite", "packaging", "CRASH_HOTPLUG", "NR_CPUS", "lab", "config"):
        table.add_column(col)
    for k, cfg, where, mode in rows:
        ch = _opt(cfg, "CONFIG_CRASH_HOTPLUG") or "unknown"
        nr = "unknown" if cfg is None or cfg.nr_cpus is None else str(cfg.nr_cpus)
        pack = "split (linux-binary)" if k.split else "linux-image"
        table.add_row(k.release, k.version, k.suite, pack, ch, nr, mode, where)
    Console(width=200).print(table)


def _variadic(tokens: tuple[str, ...]) -> dict[str, list[str]]:
    """``--kernels A B C --scenarios X Y --out D``: each option with the values that follow it."""
    known = {"--kernels", "--scenarios", "--out", "--accel"}
    opts: dict[str, list[str]] = {}
    current: str | None = None
    for tok in tokens:
        name, eq, value = tok.partition("=")
        if name in known:
            current = name
            opts.setdefault(current, [])
            if eq:
                opts[current].append(value)
            continue
        if tok.startswith("--"):
            raise click.UsageError(f"unknown option {tok} (known: {', '.join(sorted(known))}, --rerun, --markdown)")
        if current is None:
            raise click.UsageError(f"{tok!r}: give it after --kernels or --scenarios")
        opts[current].extend(v for v in tok.split(",") if v)
    return opts


@lab.command("matrix", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True})
@click.option("--rerun", is_flag=True, help="run again even where a complete run directory exists")
@click.option("--markdown", is_flag=True, help="print the table as Markdown (for a bug report)")
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one per row")
@click.argument("tokens", nargs=-1, type=click.UNPROCESSED)
def matrix_cmd(rerun: bool, markdown: bool, as_json: bool, tokens: tuple[str, ...]) -> None:
    """Run SCENARIOS on several KERNELS and print one table per kernel and step.

    \b
    crash-hotplug lab matrix --kernels 6.1 6.12.43 6.18.15 7.3.4 --scenarios base [--out DIR] [--accel tcg]

    A complete run directory (DIR/<kernel>-<scenario>) is reused unless --rerun. Exit 1 when a real
    header differs from the model, 2 when a run failed.
    """
    from crash_hotplug.lab.matrix import matrix_rows, render_matrix, run_matrix

    err = Console(stderr=True)
    try:
        opts = _variadic(tokens)
        kernels, scenarios = opts.get("--kernels", []), opts.get("--scenarios", ["base"])
        if not kernels:
            raise click.UsageError("name the kernels: --kernels A B C")
        accel = (opts.get("--accel") or ["auto"])[-1]
        if accel not in ("auto", "kvm", "tcg"):
            raise click.UsageError(f"--accel must be auto, kvm or tcg, not {accel!r}")
        out = check_output_dir(Path((opts.get("--out") or ["lab-runs/matrix"])[-1]))
        runs = run_matrix(kernels, scenarios, out, accel=accel, rerun=rerun, report=lambda m: err.log(m))
    except (LabError, CrashHotplugError) as exc:
        err.print(f"lab matrix: {_one_line(exc)}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    if as_json:
        for run in runs:
            for row in matrix_rows(run):
                click.echo(json.dumps(row.to_json()))
    else:
        render_matrix(runs, Console(width=240), markdown=markdown)
    if any(r.error for r in runs):
        sys.exit(2)
    sys.exit(0 if all(r.ok for r in runs) else 1)


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
        Console(stderr=True).print(f"lab check: {_one_line(exc)}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    render(report, console)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    lab()
