"""Formats of the written snapshot, as the kernel prints them."""

from __future__ import annotations

import json
from pathlib import Path

from crash_hotplug.machine.machine import GIB, Machine
from crash_hotplug.machine.physmem import MODEL_STATE_FILE
from crash_hotplug.snapshot.model import kcore_header, machine_from_snapshot, snapshot_files
from crash_hotplug.snapshot.reader import read_kernel_state
from crash_hotplug.snapshot.writer import write_snapshot


def test_sysfs_formats() -> None:
    m = Machine.new(kernel="6.12.43", possible=8, cpus=2)
    m.cpu_hot_add(3)
    m.cpu_online(3)
    m.add_dimm(GIB)
    f = snapshot_files(m)
    cpu, mem = "sys/devices/system/cpu", "sys/devices/system/memory"
    assert f[f"{cpu}/online"] == b"0-1,3\n" and f[f"{cpu}/present"] == b"0-1,3\n"
    assert f[f"{cpu}/offline"] == b"2,4-7\n" and f[f"{cpu}/possible"] == b"0-7\n"
    assert f[f"{cpu}/cpu3/crash_notes"] == b"%x\n" % m.cpus.cpu(3).crash_notes
    assert f[f"{cpu}/cpu3/crash_notes_size"] == b"368\n" and f[f"{cpu}/cpu3/online"] == b"1\n"
    assert f"{cpu}/cpu0/online" not in f and f"{cpu}/cpu2/crash_notes" not in f
    assert f[f"{mem}/block_size_bytes"] == b"8000000\n"
    assert f[f"{mem}/memory32/phys_index"] == b"00000020\n" and f[f"{mem}/memory32/state"] == b"online\n"
    assert f["sys/kernel/vmcoreinfo"] == b"0x000000006cce8000 1024\n"
    assert f["sys/kernel/crash_elfcorehdr_size"] == b"917616\n"
    assert f[f"{cpu}/crash_hotplug"] == b"0\n" and f["sys/kernel/kexec_crash_loaded"] == b"0\n"
    assert f["sys/kernel/kexec_crash_size"] == b"268435456\n"
    assert b"100000000-13fffffff : System RAM\n" in f["proc/iomem"]


def test_no_crash_hotplug_files_on_6_1() -> None:
    f = snapshot_files(Machine.new(kernel="6.1"))
    assert "sys/kernel/crash_elfcorehdr_size" not in f
    assert "sys/devices/system/cpu/crash_hotplug" not in f and "sys/devices/system/memory/crash_hotplug" not in f


def test_kcore_and_model_state(tmp_path: Path) -> None:
    m = Machine.new(kernel="6.12.43", seed=42)
    m.cpus.cpu(1).counter = 2
    root = write_snapshot(m, tmp_path).root
    state = read_kernel_state(root)
    assert state.text_paddr == 0x1000000 and state.page_offset == 0xFFFF888000000000
    assert len(kcore_header(m)) == 64 + 56 * 4
    model = json.loads((root / MODEL_STATE_FILE).read_text())
    assert model["memory_pattern_seed"] == 42
    assert model["cpus"]["1"]["pr_pid"] == m.cpus.cpu(1).pid and len(model["cpus"]["1"]["regs"]) == 27
    assert model["cpus"]["1"]["regs"]["ip"] == m.cpus.cpu(1).prstatus().ip
    notes = m.cpus.cpu(1).crash_notes
    assert any(s <= notes and e >= notes + 367 for s, e in model["written_ranges"]), "zeroed at boot"
    assert not any(s <= 0x50000000 <= e for s, e in model["written_ranges"])
    back = machine_from_snapshot(root)
    assert back.seed == 42 and back.cpus.cpu(1).regs == m.cpus.cpu(1).regs
    assert back.mem.read(0x50000000, 64) == m.mem.read(0x50000000, 64)
