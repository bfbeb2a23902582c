"""End to end on a real kernel: ``lab run short --kernel 6.12`` then ``lab check`` (QEMU, TCG here).

Downloads go to the lab cache (``~/.cache/crash-hotplug`` or ``$CRASH_HOTPLUG_CACHE``), so a second
run reuses them. Boot, three steps and the capture take well under a minute under TCG.
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


@pytest.mark.lab
def test_short_scenario_on_6_12_end_to_end(tmp_path: Path) -> None:
    _need_qemu()
    out = tmp_path / "run"
    runner = CliRunner()
    run = runner.invoke(lab, ["run", "short", "--kernel", "6.12", "--accel", "tcg", "--out", str(out)])
    assert run.exit_code == 0, run.output
    s0 = json.loads((out / "S0" / "step.json").read_text())
    s1 = json.loads((out / "S1" / "step.json").read_text())
    assert s0["kexec_syscall"] == "kexec_file_load"
    assert s0["elfcorehdr_addr"] == "0x6f000000"
    # 6.12 rebuilds the header in place when the DIMM's block comes online
    assert s1["header_changed_vs_previous_step"] is True
    assert s1["header_matches_iomem_system_ram"] is True
    assert (out / "S1" / "root" / "sys/devices/system/memory/crash_hotplug").read_text() == "1\n"
    capture = json.loads((out / "capture.json").read_text())
    assert capture["panic_cpu"] == capture["panic_pinned_cpu"]
    assert capture["capture_cmdline"].startswith("elfcorehdr=0x6f000000 ")
    assert (out / "capture-cmdline").read_text().strip() == capture["capture_cmdline"]
    assert (out / "vmcore-headers.bin").read_bytes()[:4] == b"\x7fELF"
    for log in ("serial.log", "qmp.log", "scenario.json"):
        assert (out / log).stat().st_size > 0
    check = runner.invoke(lab, ["check", str(out)])
    assert check.exit_code == 0, check.output
    assert "same bytes" in check.output


@pytest.mark.lab
def test_interrupt_inside_the_vm_context_stops_qemu(tmp_path: Path) -> None:
    _need_qemu()
    from crash_hotplug.lab.debian import default_archive
    from crash_hotplug.lab.initramfs import Cpio

    kernel = default_archive().fetch_kernel("6.12")
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
