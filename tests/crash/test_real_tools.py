"""The model's vmcores in the real tools: Debian's makedumpfile converts them in every output mode,
crash reads the release, gdb shows the CPUs' threads as it does on a real vmcore."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from crash_hotplug.audit import audit
from crash_hotplug.crash.panic import write_panic_artifacts
from crash_hotplug.crash.vmcore import read_vmcore_file
from crash_hotplug.machine.machine import Machine
from crash_hotplug.machine.profiles import profile_for
from crash_hotplug.scenario import ScenarioRun
from tests.conftest import VECTORS, ModelDumps, needs_vectors
from tests.makedumpfile_cases import MODEL_DUMP_CASES

#: output options and the magic each output starts with
MODES = {
    "-c": b"KDUMP   ",
    "-l": b"KDUMP   ",
    "-E": b"\x7fELF",
    "-F": b"makedumpfile",
}


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", ["complete", "no-hotplug-6.1", "dimm-removed"])
def test_makedumpfile_converts_model_vmcores(model_dumps: ModelDumps, case: str, mode: str, level: int) -> None:
    out = model_dumps(case).convert(mode, level=level)
    with out.open("rb") as f:
        assert f.read(len(MODES[mode])) == MODES[mode]


def _osrelease(path: Path) -> str:
    crash = shutil.which("crash")
    assert crash is not None, "crash is not installed (bash tasks test installs Debian's package)"
    res = subprocess.run([crash, "--osrelease", str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.parametrize("case", list(MODEL_DUMP_CASES))
def test_crash_reads_the_release_of_the_elf_and_of_the_compressed_dump(model_dumps: ModelDumps, case: str) -> None:
    dump = model_dumps(case)
    release = profile_for(dump.case.kernel).release
    assert _osrelease(dump.vmcore) == release
    # from a kdump-compressed file crash takes the utsname makedumpfile read out of init_uts_ns
    assert _osrelease(dump.convert("-l", level=1)) == release


def test_dump_level_1_drops_only_zero_pages(model_dumps: ModelDumps) -> None:
    dump = model_dumps("complete")
    full, filtered = dump.convert("-E", level=0), dump.convert("-E", level=1)
    zero_pages = _zero_pages(dump.vmcore)
    assert zero_pages > 0, "the model has zero pages (mem_section roots, page tables' empty halves ...)"
    # makedumpfile -E -d 1 keeps the headers and leaves each zero page out of the file
    assert full.stat().st_size - filtered.stat().st_size == pytest.approx(zero_pages * 4096, abs=64 * 1024)


def _zero_pages(vmcore: Path) -> int:
    vf = read_vmcore_file(vmcore)
    zero = bytes(4096)
    n = 0
    with vmcore.open("rb") as f:
        for seg in vf.ram_loads:
            f.seek(seg.offset)
            for _ in range(seg.filesz // 4096):
                if f.read(4096) == zero:
                    n += 1
    return n


def _gdb_threads(core: Path) -> list[str]:
    gdb = shutil.which("gdb")
    assert gdb is not None
    res = subprocess.run([gdb, "-nx", "-batch", "-ex", "info threads", "-core", str(core)],
                         capture_output=True, text=True, timeout=120, check=False)
    return re.findall(r"^\*?\s+\d+\s+(process \d+|LWP \d+)", res.stdout, re.MULTILINE)


def _panic(tmp_path: Path, *, busy: bool) -> tuple[Machine, Path]:
    m = Machine.new(mem_gib=0.25, cpus=2, crashkernel="64M", kernel="6.12.43")
    steps = [{"op": "load"}, {"op": "add_cpus", "n": 1}, {"op": "panic", "cpu": "last_online", "busy": busy}]
    run = ScenarioRun.start(m, "upstream").run(steps)
    assert run.panic is not None
    _, vmcore = write_panic_artifacts(run.machine, run.panic, tmp_path)
    assert vmcore is not None
    return run.machine, vmcore


def test_panicking_task_pid_is_in_its_cpus_note(tmp_path: Path) -> None:
    m, vmcore = _panic(tmp_path, busy=False)
    pids = [n.pr_pid for n in read_vmcore_file(vmcore).prstatus]
    panic_pid = m.cpus.cpu(2).pid
    assert panic_pid != 0
    # the idle CPUs are in their idle task (pid 0), as in the real 6.12.43 vmcore
    assert sorted(pids) == [0, 0, panic_pid]


def test_gdb_shows_one_thread_per_cpu_when_every_cpu_runs_a_task(tmp_path: Path) -> None:
    m, vmcore = _panic(tmp_path, busy=True)
    threads = _gdb_threads(vmcore)
    assert len(threads) == len(m.cpus.online) == 3
    assert sorted(threads) == sorted(f"LWP {m.cpus.cpu(c).pid}" for c in m.cpus.online)


@needs_vectors
def test_gdb_shows_the_model_vmcore_as_it_shows_the_real_one(tmp_path: Path) -> None:
    """Three CPUs, two idle: gdb merges the idle CPUs' pid-0 notes into one thread on the real
    6.12.43 vmcore; on the model's it does the same."""
    assert VECTORS is not None
    real = _gdb_threads(VECTORS / "6.12.43" / "base" / "vmcore-headers.bin")
    _, vmcore = _panic(tmp_path, busy=False)
    model = _gdb_threads(vmcore)
    assert len(model) == len(real) == 2
    assert [t.split()[0] for t in model] == [t.split()[0] for t in real]


@pytest.mark.parametrize("case", list(MODEL_DUMP_CASES))
def test_model_dump_cases_audit_as_described(model_dumps: ModelDumps, case: str) -> None:
    dump = model_dumps(case)
    rep = audit(dump.vmcore, dump.root)
    assert rep.exit_status == dump.case.audit_exit, [f.message for f in rep.findings]
    kinds = sorted(f.kind for f in rep.findings)
    assert kinds == {"complete": [], "no-hotplug-6.1": ["cpu-missing", "cpu-missing", "memory-missing"],
                     "dimm-removed": ["memory-extra"], "dimm-removed-top": ["memory-extra"]}[case]


def test_makedumpfile_leaves_out_memory_removed_above_all_other_memory(model_dumps: ModelDumps) -> None:
    """The removed DIMM's section reads 0 in mem_section, so makedumpfile's max_mapnr ends at the
    last present section: the stale range is in the ELF but in no kdump-compressed file."""
    dump = model_dumps("dimm-removed-top")
    for level in (1, 31):
        rep = audit(dump.convert("-l", level=level), dump.root)
        assert rep.exit_status == 0 and rep.findings == [], [f.message for f in rep.findings]
