"""End to end on a real kernel: ``lab run short --kernel 7.3`` then ``lab check`` (QEMU, TCG).

Downloads go to the lab cache (``~/.cache/crash-hotplug`` or ``$CRASH_HOTPLUG_CACHE``), so a second
run reuses them (timings in docs/lab.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from crash_hotplug.cli.lab import lab
from crash_hotplug.lab.check import check_run
from crash_hotplug.lab.errors import QemuError
from crash_hotplug.lab.qemu import VM, MachineConfig


def _need_qemu() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        if os.environ.get("CI"):
            pytest.fail("qemu-system-x86_64 is missing (bash tasks test installs qemu-system-x86)")
        pytest.skip("qemu-system-x86_64 is not installed")


def test_vm_that_cannot_boot_is_one_error_and_no_process_left(tmp_path: Path) -> None:
    _need_qemu()
    missing = tmp_path / "no-such-kernel"
    t0 = time.monotonic()
    with pytest.raises(QemuError), VM(MachineConfig(), missing, missing, tmp_path, accel="tcg"):
        pass
    assert time.monotonic() - t0 < 30
    ps = subprocess.run(["pgrep", "-f", str(missing)], capture_output=True, text=True, check=False)
    assert ps.stdout.strip() == ""


# The CI kernel: the newest 7.3 release in the archive (the 7.x packaging split, and a kernel that
# refuses vCPU hot-add under TCG until the machine quirk is applied).
CI_KERNEL = "7.3"


def _crash_region(iomem: str) -> tuple[int, int]:
    for line in iomem.splitlines():
        if line.strip().endswith(": Crash kernel"):
            lo, hi = line.split(":")[0].strip().split("-")
            return int(lo, 16), int(hi, 16)
    raise AssertionError("no Crash kernel line in iomem")


@pytest.mark.lab
def test_short_scenario_on_7x_end_to_end(tmp_path: Path) -> None:
    """``lab run short`` (load, +DIMM, +vCPU, -DIMM, panic) on a 7.x kernel, then ``lab check``."""
    _need_qemu()
    out = tmp_path / "run"
    runner = CliRunner()
    run = runner.invoke(lab, ["run", "short", "--kernel", CI_KERNEL, "--accel", "tcg", "--out", str(out)])
    assert run.exit_code == 0, run.output
    scenario = json.loads((out / "scenario.json").read_text())
    assert scenario["kernel_release"].startswith("7.3.")
    assert scenario["crash_hotplug_mode"] == "in-kernel"
    steps = [json.loads((out / f"S{i}" / "step.json").read_text()) for i in range(4)]
    assert [s["op"]["op"] for s in steps] == ["load", "add_dimm", "add_cpus", "del_dimm"]
    # Where the kernel put its header, read from the snapshot, never assumed.
    lo, hi = _crash_region((out / "S0" / "root" / "proc/iomem").read_text())
    addr = int(steps[0]["elfcorehdr_addr"], 16)
    assert steps[0]["kexec_syscall"] == "kexec_file_load" and lo <= addr <= hi
    assert steps[1]["header_changed_vs_previous_step"] is True
    assert steps[1]["header_matches_iomem_system_ram"] is True
    # The vCPU went in: on the plain TCG machine this kernel allows no hotplug CPUs, so the
    # hypervisor-detect quirk must have been chosen, with its reason and the kernel's own words.
    assert steps[2]["cpus_added"] == [2]
    quirks = {q["name"]: q for q in scenario["machine_quirks"]}
    assert "plus 0 hotplug CPUs" in quirks["hypervisor-detect"]["evidence"]
    assert any("Hypervisor detected" in x for x in quirks["hypervisor-detect"]["kernel_says_with_it"])
    assert "-smbios" in scenario["qemu_argv"] and "pc,vmport=on" in scenario["qemu_argv"]
    assert (out / "S1" / "root" / "sys/devices/system/memory/crash_hotplug").read_text() == "1\n"
    capture = json.loads((out / "capture.json").read_text())
    assert capture["panic_cpu"] == capture["panic_pinned_cpu"] == 2
    assert capture["capture_cmdline"].startswith(f"elfcorehdr={addr:#x} ")
    assert "acpi_no_memhotplug" in capture["capture_cmdline"].split()
    assert (out / "capture-cmdline").read_text().strip() == capture["capture_cmdline"]
    assert (out / "vmcore-headers.bin").read_bytes()[:4] == b"\x7fELF"
    for log in ("serial.log", "qmp.log", "scenario.json"):
        assert (out / log).stat().st_size > 0
    # the capture kernel ran the distribution's core collector on /proc/vmcore, as kdump-utils does
    dumps = capture["dumps"]
    # (kdump-utils' default), and the flattened stream an ssh target receives
    assert [(d["file"], d["command"]) for d in dumps] == [("vmcore.kdump", "makedumpfile -l --message-level 1 -d 31"),
                                                          ("vmcore.flat", "makedumpfile -F -l --message-level 1 -d 31")]
    assert (out / "vmcore.kdump").stat().st_size == dumps[0]["bytes"]
    assert (out / "vmcore.kdump").read_bytes()[:8] == b"KDUMP   "
    assert (out / "vmcore.flat").stat().st_size == dumps[1]["bytes"]
    assert (out / "vmcore.flat").read_bytes()[:16] == b"makedumpfile\0\0\0\0"
    check = runner.invoke(lab, ["check", str(out)])
    assert check.exit_code == 0, check.output
    assert check.output.count("same bytes") == 4, check.output
    # The audit of the makedumpfile file beside the audit of the vmcore headers. The DIMM was removed
    # above all other memory: the stale header lists it (extra memory), but makedumpfile trims
    # max_mapnr to the last present memory section, so the file has no page of it; and -d 31's
    # filtered pages are reported as filtered, not missing.
    rows = {name: (ok, detail) for name, ok, detail in check_run(out).vmcore}
    ok, detail = rows["vmcore.kdump audit = vmcore headers audit"]
    assert ok is None, detail
    assert detail.startswith("kdump-compressed: exit 0 (no findings); vmcore headers: exit 1 (memory-extra)"), detail
    assert "filtered by the dump level, -d 31" in detail and "trims max_mapnr" in detail, detail
    flat_ok, flat = rows["vmcore.flat audit = vmcore headers audit"]
    assert flat_ok is None and flat.replace("flattened kdump-compressed", "kdump-compressed", 1) == detail, flat


@pytest.mark.lab
def test_interrupt_inside_the_vm_context_stops_qemu(tmp_path: Path) -> None:
    _need_qemu()
    from crash_hotplug.lab.debian import default_archive
    from crash_hotplug.lab.initramfs import Cpio
    from crash_hotplug.lab.kernels import KernelRequest

    kernel = KernelRequest(key=CI_KERNEL).fetch(default_archive())
    initrd = tmp_path / "empty.cpio.gz"
    initrd.write_bytes(Cpio().gzip())
    pid = None
    with pytest.raises(KeyboardInterrupt), VM(MachineConfig(), kernel.vmlinuz, initrd, tmp_path, accel="tcg") as vm:
        assert vm.proc is not None
        pid = vm.proc.pid
        vm.console.wait_for("Linux version", 60)
        raise KeyboardInterrupt
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists()
