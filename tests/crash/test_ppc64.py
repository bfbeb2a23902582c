"""powerpc range handling (``ranges.c``) and the arch seam, without the vectors."""

from __future__ import annotations

from crash_hotplug.crash.arch import ArchCrashHotplug
from crash_hotplug.crash.arch.ppc64 import Ppc64
from crash_hotplug.crash.core import CrashMem
from crash_hotplug.crash.ppc64 import remove_mem_range, sync_backup_region_phdr
from crash_hotplug.elf.constants import EM_PPC64
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.elf.structs import PHDR, Elf64_Ehdr
from crash_hotplug.kexec.kimage import KEXEC_CRASH_HOTPLUG_SUPPORT, KEXEC_UPDATE_ELFCOREHDR, Kimage
from tests.conftest import needs_ppc64_vectors, ppc64_steps

G = 1 << 30
LMB = 256 << 20


def _mem(*ranges: tuple[int, int]) -> CrashMem:
    return CrashMem(16, list(ranges))


def test_remove_mem_range_drop_and_trim() -> None:
    m = _mem((0, 0xFFFF), (0x40000000, 0xBFFFFFFF))
    remove_mem_range(m, 0xB0000000, LMB)
    assert m.ranges == [(0, 0xFFFF), (0x40000000, 0xAFFFFFFF)]
    remove_mem_range(m, 0x40000000, LMB)
    assert m.ranges == [(0, 0xFFFF), (0x50000000, 0xAFFFFFFF)]
    remove_mem_range(m, 0, 0x10000)
    assert m.ranges == [(0x50000000, 0xAFFFFFFF)]
    remove_mem_range(m, 0x50000000, 0x60000000)
    assert m.ranges == []


def test_remove_mem_range_split_keeps_the_kernels_arithmetic() -> None:
    """With the 2025 size fix (the kernels Debian ships now) the upper half is one byte too long,
    [end + 1, mend + 1], as a real 6.12.113 showed in the lab; as merged in 6.9 it is the inverted
    range [end + 1, base - 1] (size (base - 1) - end in u64)."""
    m = _mem((0x40000000, 0xBFFFFFFF))
    remove_mem_range(m, 0x80000000, LMB)
    assert m.ranges == [(0x40000000, 0x7FFFFFFF), (0x90000000, 0xC0000000)]
    m = _mem((0x40000000, 0xBFFFFFFF))
    remove_mem_range(m, 0x80000000, LMB, split_size_fix=False)
    assert m.ranges == [(0x40000000, 0x7FFFFFFF), (0x90000000, 0x7FFFFFFF)]


def test_remove_mem_range_outside_any_range_is_a_no_op() -> None:
    m = _mem((0x40000000, 0x7FFFFFFF))
    remove_mem_range(m, 0x80000000, LMB)
    remove_mem_range(m, 0x3FFFF000, 0x2000)  # straddles a range start: not "part of" any entry
    assert m.ranges == [(0x40000000, 0x7FFFFFFF)]


def test_sync_backup_region_phdr() -> None:
    buf = bytearray(Elf64_Ehdr.core(machine=EM_PPC64, phnum=2).pack())
    buf += PHDR.pack(1, 7, 0x10000, 0xC000000000010000, 0x10000, 0x1000, 0x1000, 0)
    buf += PHDR.pack(1, 7, 0, 0xC000000000000000, 0, 0x10000, 0x10000, 0)
    sync_backup_region_phdr(buf, 0x2289F000)
    loads = ElfCore.parse(bytes(buf)).load_phdrs
    assert [p.p_offset for p in loads] == [0x10000, 0x2289F000]


def test_hotplug_support_needs_the_generic_flag() -> None:
    arch: type[ArchCrashHotplug] = Ppc64  # the class satisfies the protocol
    del arch
    img = Kimage(file_mode=False)
    assert Ppc64.arch_crash_hotplug_support(None, img, KEXEC_CRASH_HOTPLUG_SUPPORT)  # type: ignore[arg-type]
    assert not Ppc64.arch_crash_hotplug_support(None, img, KEXEC_UPDATE_ELFCOREHDR)  # type: ignore[arg-type]


@needs_ppc64_vectors
def test_dimm_removal_header_between_lmbs() -> None:
    """Removing dimm1 (4 LMBs from 0x80000000) ascending: the first LMB splits [1G, 3G) and the
    header built for that event carries the split's upper PT_LOAD, one byte too long (the size-fixed
    arithmetic, as the lab's 6.12.113 wrote it for an offlined LMB); the next event (memblock has
    dropped the first LMB) trims a range and rebuilds an exact one."""
    from tests.crash.test_ppc64_vectors import _run

    run = _run()
    run.run([{"op": "load"}, {"op": "add_dimm", "idx": 1, "size_mib": 1024}])
    headers: list[bytes] = []
    run.hp.on_step = lambda name: headers.append(run.header()) if name == "restore crash image" else None
    run.apply({"op": "del_dimm", "idx": 1})
    assert len(headers) == 4
    first = [(p.p_paddr, p.p_memsz) for p in ElfCore.parse(headers[0]).load_phdrs]
    assert (0x90000000, 0x30000001) in first
    second = [(p.p_paddr, p.p_memsz) for p in ElfCore.parse(headers[1]).load_phdrs]
    assert (0x40000000, 0x40000000) in second and (0xA0000000, 0x20000000) in second
    assert run.header() == next(s for s in ppc64_steps() if s.name == "S3").header
