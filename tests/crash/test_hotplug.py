"""The generic handler's edges: a header that outgrows its segment, a kexec_load image, sysfs."""

from __future__ import annotations

import dataclasses

from crash_hotplug.crash.arch import Outcome
from crash_hotplug.crash.hotplug import CrashHotplug
from crash_hotplug.crash.ours import OursCrashHotplug
from crash_hotplug.crash.panic import crash_kexec
from crash_hotplug.crash.vmcore import VmcoreFile, parse_elfcorehdr_param
from crash_hotplug.kexec.kexec_core import Kexec, kimage_verify_digest
from crash_hotplug.kexec.kexec_file import KexecPayload, kexec_file_load
from crash_hotplug.machine.machine import MIB, Machine
from crash_hotplug.scenario import run_scenario


def test_a_header_too_big_for_its_segment_leaves_the_old_one() -> None:
    """64 possible CPUs and room for 4 ranges: the segment is one page (72 program headers)."""
    m = Machine.new(mem_gib=2, possible=64, slots=16)
    m.config = dataclasses.replace(m.config, nr_cpus_default=64, crash_max_memory_ranges=4)
    kx = Kexec(m)
    hp = CrashHotplug(kx).crash_hotplug_init()
    image = kexec_file_load(kx, KexecPayload.synthetic())
    assert image is not None and image.segments[image.elfcorehdr_index].memsz == 4096
    seg = image.segments[image.elfcorehdr_index]
    before = m.mem.read(seg.mem, seg.memsz)
    for _ in range(8):
        before = m.mem.read(seg.mem, seg.memsz)
        m.add_dimm(128 * MIB)
        if hp.records[-1].outcome is not Outcome.UPDATED:
            break
    assert hp.records[-1].outcome is Outcome.TOO_BIG
    assert m.mem.read(seg.mem, seg.memsz) == before, "nothing half-written"
    assert "crash hp: update elfcorehdr elfsz 8192 > memsz 4096" in m.dmesg()
    res = crash_kexec(kx, m.cpus.online[-1])
    assert res.vmcore is not None
    ram = [(s.paddr, s.end) for s in VmcoreFile.from_vmcore(res.vmcore, m.mem).ram_loads]
    last = max(d.end for d in m.memory.dimms.values())
    assert all(e < last for _, e in ram), "the fourth DIMM is missing from the dump, visibly"


def test_kexec_load_header_is_replaced_by_the_kernels_on_the_first_event() -> None:
    run = run_scenario([{"op": "load"}], design="upstream", syscall="kexec_load")
    assert run.image is not None and not run.image.file_mode and run.image.hotplug_support
    from crash_hotplug.elf.core import ElfCore

    before = ElfCore.parse(run.header())
    assert len(before.notes_phdrs) == 3, "kexec-tools lists present CPUs (2) and VMCOREINFO"
    run.apply({"op": "add_cpus", "n": 1})
    assert run.hotplug is not None and run.hotplug.records[0].outcome is Outcome.UPDATED
    after = ElfCore.parse(run.header())
    assert len(after.notes_phdrs) == 9, "the kernel's header lists every possible CPU"
    run.apply({"op": "add_cpus", "n": 1})
    assert run.hotplug.records[-1].outcome is Outcome.CPU_SKIPPED


def test_sysfs_crash_hotplug_reads() -> None:
    run = run_scenario([], design="upstream")
    assert run.crash_hotplug_attr() == 0, "no crash image loaded"
    run.apply({"op": "load"})
    assert run.crash_hotplug_attr() == 1
    old = run_scenario([{"op": "load"}], design="none", kernel="6.1")
    assert old.crash_hotplug_attr() is None, "no attribute on a kernel without crash hotplug"


def test_ours_keeps_purgatory_and_the_capture_command_line_valid() -> None:
    run = run_scenario([{"op": "load"}, {"op": "add_dimm", "size_mib": 1024},
                        {"op": "add_dimm", "size_mib": 1024}], design="ours")
    assert isinstance(run.hotplug, OursCrashHotplug) and run.image is not None
    seg = run.image.segments[run.image.elfcorehdr_index]
    assert run.image.elfcorehdr_slots == 2 and seg.memsz == 2 * 921600
    assert run.image.elfcorehdr_active == 0, "two updates: back on slot 0"
    assert parse_elfcorehdr_param(run.image.cmdline) == seg.mem, "elfcorehdr= points at slot 0, always"
    assert kimage_verify_digest(run.image, run.machine), "the segment is outside the digest"
    run.apply({"op": "add_dimm", "size_mib": 1024})
    assert run.image.elfcorehdr_active == 1
    res = crash_kexec(run.kexec, 0)
    assert res.vmcore is not None, "the panic copies slot 1 to slot 0; purgatory still verifies"
