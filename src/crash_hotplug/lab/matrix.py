"""``lab matrix``: several kernels, several scenarios, one table a QA engineer attaches to a bug.

Each (kernel, scenario) is one ``lab run`` (reused when its run directory is already complete) and
one ``lab check``. Per kernel and step the table shows the real and the model header's used bytes
and whether they are the same, whether the real header is stale after a hot-remove (it still
lists what was removed, while the model of that step's own snapshot would not), which offline
CPUs and memory blocks the header keeps, and the vmcore audit's verdict for the capture.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crash_hotplug.elf.core import ElfCore
from crash_hotplug.lab.check import CheckReport, check_run
from crash_hotplug.lab.errors import LabError
from crash_hotplug.lab.kernels import KernelRequest
from crash_hotplug.lab.plan import load_plan
from crash_hotplug.lab.rundir import RunDir, Step, parse_cpulist

__all__ = ["MatrixRow", "MatrixRun", "matrix_rows", "render_matrix", "run_matrix"]

Report = Callable[[str], None]
REMOVE_OPS = ("del_dimm", "del_cpu", "offline_block")


@dataclass(frozen=True)
class MatrixRow:
    kernel: str
    scenario: str
    step: str
    action: str
    real_bytes: int | None
    model_bytes: int | None
    result: str
    stale_after_remove: str
    offline_kept: str
    audit: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class MatrixRun:
    """One (kernel, scenario) of the matrix: its run directory and check, or why it failed."""

    kernel: str
    scenario: str
    run_dir: Path
    report: CheckReport | None
    error: str | None
    reused: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.report is not None and self.report.ok


def _complete(run_dir: Path) -> bool:
    """A run directory whose run finished: every planned snapshot step and the capture are there."""
    try:
        sc = json.loads((run_dir / "scenario.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    planned = [s for s in sc.get("plan", {}).get("steps", []) if s.get("op") not in ("panic", "storm")]
    has_panic = any(s.get("op") == "panic" for s in sc.get("plan", {}).get("steps", []))
    steps_ok = len(sc.get("steps", [])) == len(planned)
    return steps_ok and (not has_panic or (run_dir / "capture.json").is_file())


def run_matrix(
    kernels: Sequence[str],
    scenarios: Sequence[str],
    out_root: Path,
    accel: str = "auto",
    rerun: bool = False,
    report: Report | None = None,
) -> list[MatrixRun]:
    """Run and check every kernel x scenario (one VM at a time); a failed run is a row, not an abort."""
    from crash_hotplug.lab.scenario import run_scenario

    say = report or (lambda _m: None)
    plans = [load_plan(s) for s in scenarios]
    out: list[MatrixRun] = []
    for key in kernels:
        for plan in plans:
            run_dir = out_root / f"{key}-{plan.name}"
            reused = not rerun and _complete(run_dir)
            try:
                if reused:
                    say(f"{key} {plan.name}: reusing {run_dir}")
                else:
                    say(f"{key} {plan.name}: running into {run_dir}")
                    run_scenario(plan, KernelRequest(key=key), run_dir, accel=accel, report=say)
                checked = check_run(run_dir)
            except LabError as exc:
                out.append(MatrixRun(key, plan.name, run_dir, None, " ".join(str(exc).split()), reused))
                continue
            out.append(MatrixRun(key, plan.name, run_dir, checked, None, reused))
    return out


def _offline_kept(step: Step) -> str:
    """Offline CPUs whose PT_NOTE and offline memory blocks whose range the real header keeps."""
    root = step.root
    try:
        core = ElfCore.parse(step.elfcorehdr, step.name)
    except Exception:
        return "unknown (header unreadable)"
    notes = {p.p_paddr for p in core.notes_phdrs}
    loads = [(p.p_paddr, p.p_paddr + p.p_memsz) for p in core.load_phdrs]
    parts: list[str] = []
    cpu_dir = root / "sys/devices/system/cpu"
    try:
        present = parse_cpulist((cpu_dir / "present").read_text())
        online = set(parse_cpulist((cpu_dir / "online").read_text()))
    except (OSError, ValueError):
        present, online = [], set()
    for cpu in (c for c in present if c not in online):
        try:
            paddr = int((cpu_dir / f"cpu{cpu}/crash_notes").read_text().strip(), 16)
        except (OSError, ValueError):
            parts.append(f"cpu{cpu} note unknown")
            continue
        parts.append(f"cpu{cpu} note {'kept' if paddr in notes else 'dropped'}")
    mem_dir = root / "sys/devices/system/memory"
    try:
        block = int((mem_dir / "block_size_bytes").read_text().strip(), 16)
    except (OSError, ValueError):
        block = 0
    kept = dropped = 0
    for d in sorted(mem_dir.glob("memory[0-9]*")):
        try:
            state = (d / "state").read_text().strip()
        except OSError:
            continue
        if state != "offline" or not block:
            continue
        start = int(d.name[6:]) * block
        if any(lo <= start and start + block <= hi for lo, hi in loads):
            kept += 1
        else:
            dropped += 1
    if kept or dropped:
        parts.append(f"{kept} offline blocks kept, {dropped} dropped")
    return "; ".join(parts) or "-"


def matrix_rows(run: MatrixRun) -> list[MatrixRow]:
    """The table rows of one (kernel, scenario): one per step, then the capture."""
    if run.report is None:
        return [MatrixRow(run.kernel, run.scenario, "-", "run failed", None, None, str(run.error), "-", "-", "-")]
    rd = RunDir(run.run_dir)
    steps = {st.name: st for st in rd.steps()}
    rows = []
    for r in run.report.steps:
        st = steps[r.step]
        op = str(st.info.get("op", {}).get("op", ""))
        result = f"skipped: {r.skipped}" if r.skipped else "same bytes" if r.ok else f"DIFFERS: {r.difference}"
        stale = "-"
        if op in REMOVE_OPS:
            stale = "unknown" if r.stale_vs_own_root is None else ("stale" if r.stale_vs_own_root else "fresh")
        rows.append(
            MatrixRow(
                run.kernel,
                run.scenario,
                r.step,
                r.action,
                r.real_size,
                r.model_size,
                result,
                stale,
                _offline_kept(st),
                "-",
            )
        )
    vm = {name: (ok, detail) for name, ok, detail in run.report.vmcore}
    audit = next((d for n, (_ok, d) in vm.items() if n.startswith("vmcore audit")), "no capture")
    loads = next(((ok, d) for n, (ok, d) in vm.items() if n.startswith("vmcore PT_LOADs")), None)
    capture = "no capture" if loads is None else ("PT_LOADs = last header" if loads[0] else f"DIFFERS: {loads[1]}")
    rows.append(MatrixRow(run.kernel, run.scenario, "capture", "panic + capture", None, None, capture, "-", "-", audit))
    return rows


def render_matrix(runs: Sequence[MatrixRun], console: Console, markdown: bool = False) -> None:
    """One table for the whole matrix (rich), or a Markdown table for a bug report or the docs."""
    cols = (
        "kernel",
        "scenario",
        "step",
        "action",
        "real B",
        "model B",
        "real vs model",
        "stale after remove",
        "offline kept",
        "audit",
    )
    rows = [row for run in runs for row in matrix_rows(run)]

    def cells(row: MatrixRow) -> list[str]:
        size = [("-" if v is None else str(v)) for v in (row.real_bytes, row.model_bytes)]
        return [
            row.kernel,
            row.scenario,
            row.step,
            row.action,
            *size,
            row.result,
            row.stale_after_remove,
            row.offline_kept,
            row.audit,
        ]

    if markdown:
        console.print("| " + " | ".join(cols) + " |", soft_wrap=True, markup=False, highlight=False)
        console.print("|" + "---|" * len(cols), soft_wrap=True, markup=False, highlight=False)
        for row in rows:
            text = "| " + " | ".join(c.replace("|", "\\|") for c in cells(row)) + " |"
            console.print(text, soft_wrap=True, markup=False, highlight=False)
    else:
        table = Table(title="lab matrix: real elfcorehdr vs model, per kernel and step")
        for col in cols:
            table.add_column(col)
        last = None
        for row in rows:
            if last is not None and (row.kernel, row.scenario) != last:
                table.add_section()
            last = (row.kernel, row.scenario)
            table.add_row(*cells(row))
        console.print(table)
    for run in runs:
        release = "?"
        with contextlib.suppress(LabError):
            release = str(RunDir(run.run_dir).scenario.get("kernel_release") or "?")
        state = "ok" if run.ok else ("run failed" if run.error else "differences")
        console.print(
            f"{run.kernel} ({release}) {run.scenario}: {state}; {run.run_dir}" + (" (reused)" if run.reused else ""),
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
