"""A model machine through load, hotplug, panic and capture, audited against its own snapshot:
the machine and kexec layers feeding the capture (``crash.vmcore``) and the audit."""

from __future__ import annotations

from pathlib import Path

import pytest

from crash_hotplug.audit import audit
from crash_hotplug.crash.vmcore import parse_crash_elf64_headers
from crash_hotplug.crash.x86_64 import prepare_elf_headers
from crash_hotplug.kexec.kexec_core import Kexec, kimage_verify_digest
from crash_hotplug.kexec.kexec_file import KexecPayload, kexec_file_load
from crash_hotplug.kexec.kimage import Kimage
from crash_hotplug.machine.machine import GIB, Machine
from crash_hotplug.machine.memory import MEM_OFFLINE, MEM_ONLINE, MemoryNotify
from crash_hotplug.machine.notifier import NOTIFY_OK
from crash_hotplug.machine.physmem import MODEL_STATE_FILE
from crash_hotplug.snapshot.model import snapshot_files
from crash_hotplug.snapshot.writer import write_snapshot
from tests.conftest import needs_vectors, vector_steps


def rebuild_on_memory_events(m: Machine, kx: Kexec, image: Kimage) -> None:
    """The smallest stand-in for the kernel's handler: rewrite the header in place."""

    def on_event(action: int, arg: MemoryNotify) -> int:
        if action in (MEM_ONLINE, MEM_OFFLINE):
            kx.arch_kexec_unprotect_crashkres()
            m.mem.write(image.elf_load_addr, prepare_elf_headers(m.kernel_state())[0])
            kx.arch_kexec_protect_crashkres()
        return NOTIFY_OK

    m.register_memory_notifier(on_event)


def panic(m: Machine, cpu: int) -> None:
    """What ``crash_save_cpu`` leaves in every online CPU's ``crash_notes``."""
    m.panic_cpu = cpu
    m.cpus.cpu(cpu).pid_override = 4242
    for c in m.cpus.online:
        s = m.cpus.cpu(c)
        s.counter += 1
        m.mem.write(s.crash_notes, s.prstatus().note_buf())


def capture(m: Machine, image: Kimage, tmp: Path) -> Path:
    out = tmp / "vmcore-headers.bin"
    out.write_bytes(parse_crash_elf64_headers(m.mem, image.elf_load_addr).headers_and_notes())
    return out


def test_hotplug_then_panic_audits_complete(tmp_path: Path) -> None:
    m = Machine.new(mem_gib=2, cpus=2, possible=8, kernel="6.12.43", seed=3)
    kx = Kexec(m)
    image = kexec_file_load(kx, KexecPayload.synthetic())
    assert image is not None
    rebuild_on_memory_events(m, kx, image)
    m.add_dimm(GIB)
    m.cpu_hot_add(3)
    m.cpu_online(3)
    panic(m, 3)
    assert kimage_verify_digest(image, m)
    root = write_snapshot(m, tmp_path / "root").root
    report = audit(capture(m, image, tmp_path), root)
    assert report.complete, [f.to_json() for f in report.findings]
    assert report.cpu_method in ("crash_notes", "machine.json")
    saved = {row.cpu: row.pr_pid for row in report.cpus if row.note is not None}
    assert saved == {0: m.cpus.cpu(0).pid, 1: m.cpus.cpu(1).pid, 3: 4242}


def test_stale_header_after_dimm_removal_is_found(tmp_path: Path) -> None:
    m = Machine.new(mem_gib=2, cpus=2, possible=8, kernel="6.12.43")
    kx = Kexec(m)
    image = kexec_file_load(kx, KexecPayload.synthetic())
    assert image is not None
    rebuild_on_memory_events(m, kx, image)
    m.add_dimm(GIB)
    m.remove_dimm("dimm1")
    panic(m, 1)
    report = audit(capture(m, image, tmp_path), write_snapshot(m, tmp_path / "root").root)
    assert [f.kind for f in report.findings] == ["memory-extra"], "the header still lists the removed DIMM"
    assert "0x100000000-0x13fffffff" in report.findings[0].message


def test_a_loaded_machine_can_be_copied() -> None:
    import copy

    m = Machine.new(kernel="6.12.43")
    kx = Kexec(m)
    image = kexec_file_load(kx, KexecPayload.synthetic())
    assert image is not None
    twin = copy.deepcopy(m)
    assert isinstance(twin.kexec, Kexec) and twin.kexec is not kx and twin.kexec.machine is twin
    twin.add_dimm(GIB)
    assert "dimm1" not in m.memory.dimms
    assert twin.kexec.kexec_trylock() and not kx.lock.locked
    twin.cpu_eject(1)
    assert twin.cpus.present == (0,) and m.cpus.present == (0, 1)


BOOT = {"6.12.43": 8, "6.12": 2, "6.1": 8}


@needs_vectors
@pytest.mark.parametrize("kernel", sorted(BOOT))
def test_a_new_machine_after_kdump_load_shows_the_real_sysfs(kernel: str) -> None:
    """Every file of the real S0 snapshot but the truncated kcore and the boot log, to the byte."""
    s0 = next(s for s in vector_steps() if s.kernel == kernel and s.name == "S0")
    m = Machine.new(mem_gib=2, cpus=2, possible=BOOT[kernel], kernel=kernel)
    kexec_file_load(Kexec(m), KexecPayload.synthetic())
    files = snapshot_files(m)
    real = {str(p.relative_to(s0.root)) for p in s0.root.rglob("*") if p.is_file()}
    assert set(files) - real == {MODEL_STATE_FILE}
    for rel in sorted(real - {"proc/kcore", "var/log/dmesg"}):
        assert files[rel] == (s0.root / rel).read_bytes(), rel
