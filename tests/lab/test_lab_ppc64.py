"""The pseries lab end to end on a real Debian ppc64el kernel (qemu-system-ppc64, TCG): ``lab run
ppc64-short --kernel ppc64le-6.12`` then ``lab check`` against the ppc64 model, headers and crash FDTs.

Downloads (kernel, busybox, kexec-tools and its libraries) go to the lab cache
(``~/.cache/crash-hotplug`` or ``$CRASH_HOTPLUG_CACHE``); a warm run takes about 2-3 minutes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from crash_hotplug.cli.lab import lab
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.lab.check import check_run
from crash_hotplug.lab.check_ppc64 import first_crash_fdt
from crash_hotplug.lab.rundir import RunDir

CI_KERNEL = "ppc64le-6.12"


def _need_qemu() -> None:
    if shutil.which("qemu-system-ppc64") is None:
        if os.environ.get("CI"):
            pytest.fail("qemu-system-ppc64 is missing (bash tasks test installs qemu-system-ppc)")
        pytest.skip("qemu-system-ppc64 is not installed")


@pytest.mark.lab
def test_short_scenario_on_ppc64le_end_to_end(tmp_path: Path) -> None:
    """load (kexec -p --hotplug), +1 GiB DIMM, +1 core, offline the DIMM's first LMB (the header of
    one LMB's removal: a split range), -DIMM, panic on the hot-added CPU; every header and crash FDT
    equals the model's, the first FDT rebuilt from /proc/device-tree."""
    _need_qemu()
    out = tmp_path / "run"
    run = CliRunner().invoke(lab, ["run", "ppc64-short", "--kernel", CI_KERNEL, "--out", str(out)])
    assert run.exit_code == 0, run.output
    scenario = json.loads((out / "scenario.json").read_text())
    assert scenario["arch"] == "ppc64le" and scenario["kernel_release"].endswith("-powerpc64le")
    assert scenario["crash_hotplug_mode"] == "in-kernel"
    steps = [json.loads((out / f"S{i}" / "step.json").read_text()) for i in range(5)]
    assert [s["op"]["op"] for s in steps] == ["load", "add_dimm", "add_cpus", "offline_block", "del_dimm"]
    assert steps[0]["kexec_syscall"] == "kexec_load" and steps[0]["kexec_flags"] == "0x150009"
    assert [s["header_matches_iomem_system_ram"] for s in steps] == [True, True, True, False, True]
    # the header follows memory (a removal at once), not the CPU; the FDT follows the CPU only
    assert [s["header_changed_vs_previous_step"] for s in steps[1:]] == [True, False, True, True]
    assert [s["crash_fdt_changed_vs_previous_step"] for s in steps[1:]] == [False, True, False, False]
    # one LMB offline inside [1 GiB, 3 GiB): the kernel splits the range; the upper PT_LOAD is one
    # byte longer than the memory (the size-fixed remove_mem_range arithmetic)
    assert steps[1]["dimm_addr"] == "0x80000000" and steps[1]["dimm_blocks"][0] == 8
    loads = [(p.p_paddr, p.p_memsz) for p in ElfCore.parse((out / "S3/elfcorehdr.bin").read_bytes()).load_phdrs]
    assert (0x40000000, 0x40000000) in loads and (0x90000000, 0x30000001) in loads
    assert steps[2]["cpus_added"] == [2] and "/cpus/PowerPC,POWER9@2" in steps[2]["crash_fdt"]["cpus"]
    # the whole device tree was kept, so kexec-tools' first FDT is rebuilt byte for byte
    assert steps[0]["device_tree_files"] > 200
    s0 = RunDir(out).steps()[0]
    assert first_crash_fdt(s0, scenario["capture_cmdline_given"]) == (out / "S0" / "crash-fdt.dtb").read_bytes()
    report = check_run(out)
    assert report.ok, [(r.step, r.difference) for r in report.steps] + report.fdt + report.vmcore
    assert [r.difference for r in report.steps] == [None] * 5
    assert [ok for _n, ok, _d in report.fdt] == [True] * 5
    capture = json.loads((out / "capture.json").read_text())
    assert capture["panic_cpu"] == 2
    assert capture["capture_boot_cpu_node"] == "/cpus/PowerPC,POWER9@2"
    assert capture["per_cpu_crash_notes_in_vmcore"]["cpu2"]["pr_pid"] == capture["panic_pid"]
    cli = CliRunner().invoke(lab, ["check", str(out)])
    assert cli.exit_code == 0, cli.output
