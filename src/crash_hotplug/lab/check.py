"""``lab check``: a run directory's real elfcorehdrs against the model, and its vmcore against the audit.

For each step the model builds the header from a snapshot root with
``crash_hotplug.crash.x86_64.elfcorehdr_from_root`` and ``crash_hotplug.elf.compare.first_difference``
names the first differing field. The root it builds from is the one of the last step at which the
kernel rebuilt its header: the load step, or the latest step whose ``step.json`` says
``header_changed_vs_previous_step: true`` (on a kernel without crash hotplug, such as 6.1, always
the load step). The model is imported lazily, so the lab runs without it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crash_hotplug.elf.core import ElfCore
from crash_hotplug.lab.errors import LabError, RunDirError
from crash_hotplug.lab.rundir import KERNEL_TEXT_VADDR, RunDir, Step, iomem_system_ram_expected

__all__ = ["CheckReport", "StepResult", "check_run", "rebuild_sources", "render"]

BuildHeader = Callable[[Path, str | None], bytes]
FirstDifference = Callable[[bytes, bytes], str | None]


@dataclass(frozen=True)
class StepResult:
    """One row: the real header of ``step`` against the model built from ``source``'s root."""

    step: str
    action: str
    source: str
    difference: str | None
    stale_vs_own_root: bool | None  # real header differs from the model of this step's own root
    skipped: str | None = None  # why this step was not compared
    vs_reference: str | None = None  # against the same step of a reference run (--against), if asked
    real_size: int | None = None  # used bytes of the real header (ELF header + program headers + notes)
    model_size: int | None = None  # used bytes of the model's header

    @property
    def ok(self) -> bool:
        return self.difference is None


@dataclass
class CheckReport:
    run_dir: Path
    kernel: str
    steps: list[StepResult] = field(default_factory=list)
    vmcore: list[tuple[str, bool | None, str]] = field(default_factory=list)  # (check, ok, detail)
    #: the crash kernel's FDT per step against the model (ppc64 runs; same shape as ``vmcore``)
    fdt: list[tuple[str, bool | None, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (all(r.ok for r in self.steps) and all(ok is not False for _n, ok, _d in self.vmcore)
                and all(ok is not False for _n, ok, _d in self.fdt))


def rebuild_sources(steps: list[Step]) -> dict[str, Step]:
    """For each step, the step at which the kernel last rebuilt the header (whose root the model uses)."""
    out: dict[str, Step] = {}
    source: Step | None = None
    for st in steps:
        op = st.info.get("op", {}).get("op")
        if source is None or op == "load" or st.changed:
            source = st
        out[st.name] = source
    return out


def _model() -> tuple[BuildHeader, FirstDifference]:
    try:
        x86 = importlib.import_module("crash_hotplug.crash.x86_64")
        compare = importlib.import_module("crash_hotplug.elf.compare")
    except ImportError as exc:
        raise LabError(
            f"the model is not available ({exc}); lab check needs crash_hotplug.crash.x86_64 and "
            "crash_hotplug.elf.compare"
        ) from exc
    return x86.elfcorehdr_from_root, compare.first_difference


def check_run(
    run_dir: Path,
    kernel_version: str | None = None,
    model: tuple[BuildHeader, FirstDifference] | None = None,
    against: Path | None = None,
) -> CheckReport:
    """Check every step of ``run_dir`` and its capture; raises ``RunDirError`` on a malformed run.

    ``against`` names a reference run (e.g. the vectors' run of the same kernel and scenario); each
    step's real header is then also compared with the reference's, for information only.
    """
    if model is None:
        from crash_hotplug.lab.check_ppc64 import check_run_ppc64, is_ppc64_run

        if is_ppc64_run(run_dir):
            ppc = check_run_ppc64(run_dir)
            if against is not None:
                _against(ppc, RunDir(run_dir).steps(), against, importlib.import_module(
                    "crash_hotplug.elf.compare").first_difference)
            return ppc
    run = RunDir(run_dir)
    build, first_difference = model or _model()
    version = kernel_version  # None: the model reads proc/sys/kernel/osrelease under each root
    report = CheckReport(run_dir, run.kernel)
    steps = [s for s in run.steps() if (s.path / "elfcorehdr.bin").is_file()]
    if not steps:
        raise RunDirError(f"{run_dir} has no step with an elfcorehdr.bin")
    sources = rebuild_sources(steps)
    cache: dict[str, bytes] = {}

    def model_of(st: Step) -> bytes:
        if st.name not in cache:
            try:
                cache[st.name] = build(st.root, version)
            except LabError:
                raise
            except Exception as exc:  # the model's own error, reported per run
                raise LabError(f"the model failed on {st.root}: {exc}") from exc
        return cache[st.name]

    for st in steps:
        src = sources[st.name]
        if st.info.get("kexec_syscall") == "kexec_load":
            why = "header built by kexec-tools (kexec_load): the kexec_file_load model does not apply"
            report.steps.append(StepResult(st.name, str(st.info.get("action", "")), "-", None, None, why))
            continue
        real = st.elfcorehdr
        model_hdr = model_of(src)
        diff = first_difference(model_hdr, real)
        own = None if src is st else first_difference(model_of(st), real) is not None
        result = StepResult(st.name, str(st.info.get("action", "")), src.name, diff, own)
        report.steps.append(
            replace(result, real_size=_used_size(real, st.name), model_size=_used_size(model_hdr, src.name))
        )
    if against is not None:
        _against(report, steps, against, first_difference)
    report.vmcore.extend(_vmcore_checks(run, steps[-1]))
    return report


def _against(report: CheckReport, steps: list[Step], against: Path, first_difference: FirstDifference) -> None:
    """Each step's real header against the same step of the reference run ``against`` (information)."""
    ref = {st.name: st for st in RunDir(against).steps()}
    for i, r in enumerate(report.steps):
        other = ref.get(r.step)
        mine = next(st for st in steps if st.name == r.step)
        text = "no such step" if other is None else first_difference(other.elfcorehdr, mine.elfcorehdr)
        report.steps[i] = replace(r, vs_reference=text or "same bytes")


def _vmcore_checks(run: RunDir, last: Step) -> list[tuple[str, bool | None, str]]:
    out: list[tuple[str, bool | None, str]] = []
    headers = run.vmcore_headers()
    capture = run.capture()
    if headers is None or capture is None:
        return [("vmcore", None, "no capture in this run")]
    vm_loads = [(p.p_paddr, p.p_memsz) for p in ElfCore.parse(headers, "vmcore-headers.bin").load_phdrs]
    hdr_loads = [(p.p_paddr, p.p_memsz) for p in ElfCore.parse(last.elfcorehdr, last.name).load_phdrs]
    same = vm_loads == hdr_loads
    out.append(
        (
            f"vmcore PT_LOADs = {last.name} elfcorehdr PT_LOADs",
            same,
            f"{len(vm_loads)} PT_LOAD" if same else f"vmcore {_ranges(vm_loads)} vs header {_ranges(hdr_loads)}",
        )
    )
    iomem = (last.root / "proc/iomem").read_text() if (last.root / "proc/iomem").exists() else ""
    expected, _crash = iomem_system_ram_expected(iomem)
    covered = [(a, a + n - 1) for a, n in vm_loads if a < KERNEL_TEXT_VADDR]
    missing = [r for r in expected if not any(s <= r[0] and r[1] <= e for s, e in covered)]
    detail = (
        "every System RAM range at the panic is in the vmcore"
        if not missing
        else "System RAM missing from the vmcore: " + ", ".join(f"{s:#x}-{e:#x}" for s, e in missing)
    )
    out.append((f"vmcore covers {last.name} System RAM (finding)", None, detail))
    cpu = capture.get("panic_cpu")
    notes = capture.get("per_cpu_crash_notes_in_vmcore", {})
    if cpu is not None and f"cpu{cpu}" in notes:
        has = notes[f"cpu{cpu}"].get("pt_note_in_final_elfcorehdr")
        out.append(
            (
                "panicking CPU has a PT_NOTE (finding)",
                None,
                f"cpu{cpu}: {'yes' if has else 'no - its registers are not in the vmcore'}",
            )
        )
    out.append(_audit_hook(run, last))
    for name in DUMP_FILE_NAMES:
        if (run.path / name).exists():
            out.append(_dump_audit(run, last, name))
    return out


#: the files makedumpfile wrote in the capture kernel (the panic step's ``dump``)
DUMP_FILE_NAMES = ("vmcore.kdump", "vmcore.flat")


def _dump_audit(run: RunDir, last: Step, name: str) -> tuple[str, bool | None, str]:
    """The audit of the file makedumpfile wrote in the capture kernel, beside the audit of the
    vmcore headers: the verdict (exit status and the kinds of findings) must be the same, since
    both describe the same /proc/vmcore; a dump the audit cannot read fails the check."""
    try:
        audit_mod = importlib.import_module("crash_hotplug.audit")
    except ImportError:
        return (f"{name} audit", None, "skipped: crash_hotplug.audit is not available")
    try:
        on_headers: Any = audit_mod.audit(run.path / "vmcore-headers.bin", last.root)
        on_dump: Any = audit_mod.audit(run.path / name, last.root)
    except Exception as exc:  # the audit's own error names the unusable input
        return (f"{name} audit", False, f"audit failed: {exc}")

    def verdict(rep: Any) -> tuple[int, list[str]]:
        return int(rep.exit_status), sorted(str(f.kind) for f in rep.findings)

    same = verdict(on_dump) == verdict(on_headers)
    kinds = ", ".join(verdict(on_dump)[1]) or "no findings"
    detail = (f"{on_dump.dump_format}: exit {on_dump.exit_status} ({kinds}); vmcore headers: exit "
              f"{on_headers.exit_status} ({', '.join(verdict(on_headers)[1]) or 'no findings'})")
    notes = [n for n in getattr(on_dump, "notes", []) if "filtered" in n or "dump level" in n]
    if notes:
        detail += "; " + notes[0]
    ok: bool | None = same
    if not same and _only_extra_memory_dropped(on_headers, on_dump):
        # makedumpfile trims max_mapnr to the last present memory section (get_mem_map): a range the
        # kernel removed above all other memory is in the stale header but not in the file
        ok = None
        detail += ("; differs because makedumpfile left out the stale range: it trims max_mapnr to the "
                   "last present memory section, and the removed memory was above it")
    return (f"{name} audit = vmcore headers audit", ok, detail)


def _only_extra_memory_dropped(on_headers: Any, on_dump: Any) -> bool:
    """The headers' audit has ``memory-extra`` findings the dump's lacks, and nothing else differs."""
    head = sorted(str(f.kind) for f in on_headers.findings)
    dump = sorted(str(f.kind) for f in on_dump.findings)
    return "memory-extra" in head and [k for k in head if k != "memory-extra"] == dump


def _audit_hook(run: RunDir, last: Step) -> tuple[str, bool | None, str]:
    """The vmcore audit (``crash_hotplug.audit.audit``) of the captured vmcore headers against the
    last snapshot. What it finds missing is the kernel's behaviour (a finding, shown, not failed);
    only an audit that cannot read the capture fails the check. Skipped where the audit is absent."""
    try:
        audit_mod = importlib.import_module("crash_hotplug.audit")
    except ImportError:
        return ("vmcore audit", None, "skipped: crash_hotplug.audit is not available")
    fn = getattr(audit_mod, "audit", None)
    if fn is None:
        return ("vmcore audit", None, "skipped: crash_hotplug.audit has no audit()")
    try:
        result: Any = fn(run.path / "vmcore-headers.bin", last.root)
    except Exception as exc:  # the audit's own error names the unusable input
        return ("vmcore audit", False, f"audit failed: {exc}")
    findings = [getattr(f, "message", str(f)) for f in getattr(result, "findings", [])]
    return ("vmcore audit (findings)", None, "; ".join(findings) or "complete: no findings")


def _used_size(header: bytes, what: str) -> int | None:
    try:
        return ElfCore.parse(header, what).used_size
    except Exception:  # a header too damaged to size is shown as unknown; the comparison names it
        return None


def _ranges(loads: list[tuple[int, int]]) -> str:
    return ", ".join(f"{a:#x}+{n:#x}" for a, n in loads)


def _checks_table(title: str, rows: list[tuple[str, bool | None, str]]) -> Table:
    table = Table(title=title)
    for col in ("check", "result", "detail"):
        table.add_column(col)
    for name, ok, detail in rows:
        mark = "[green]ok[/green]" if ok else ("[red]DIFFERS[/red]" if ok is False else "-")
        table.add_row(name, mark, detail)
    return table


def render(report: CheckReport, console: Console) -> None:
    """The report as rich tables: one row per step, then the vmcore checks."""
    table = Table(title=f"{report.run_dir} ({report.kernel}): real elfcorehdr vs model")
    cols = ["step", "action", "model from", "result", "real vs model of own root"]
    with_ref = any(r.vs_reference is not None for r in report.steps)
    if with_ref:
        cols.append("real vs reference run (information)")
    for col in cols:
        table.add_column(col)
    for r in report.steps:
        result = "[green]same bytes[/green]" if r.ok else f"[red]{r.difference}[/red]"
        if r.skipped:
            result = f"skipped: {r.skipped}"
        stale = "-" if r.stale_vs_own_root is None else ("stale" if r.stale_vs_own_root else "same")
        row = [r.step, r.action, r.source, result, stale]
        if with_ref:
            row.append(r.vs_reference or "-")
        table.add_row(*row)
    console.print(table)
    if report.fdt:
        console.print(_checks_table("crash kernel FDT: real vs model", report.fdt))
    console.print(_checks_table("vmcore", report.vmcore))
    compared = sum(1 for r in report.steps if not r.skipped)
    if not report.ok:
        console.print("[red]differences found[/red]")
    elif compared == 0:
        console.print("no step compared with the model")
    else:
        console.print(f"[green]all {compared} compared steps match[/green]")
