"""kexec_load with the kexec-tools side: the userspace header, --hotplug, and the kernel's checks."""

from __future__ import annotations

import pytest

from crash_hotplug.crash.x86_64 import prepare_elf_headers
from crash_hotplug.elf.constants import PT_LOAD, PT_NOTE
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.kexec.kexec_core import Kexec, kimage_verify_digest
from crash_hotplug.kexec.kexec_file import KexecPayload
from crash_hotplug.kexec.kexec_load import crash_create_elf64_headers, kexec_load, kexec_load_unload, kexec_tools_load
from crash_hotplug.kexec.kimage import (
    KEXEC_ON_CRASH,
    KEXEC_UPDATE_ELFCOREHDR,
    KexecError,
    KexecSegment,
    kimage_find_elfcorehdr,
)
from crash_hotplug.kexec.lock import KexecBusyError
from crash_hotplug.kexec.purgatory import unpack_sha_regions
from crash_hotplug.machine.machine import GIB, Machine


def setup(kernel: str = "6.12.43", hotplug: bool = False) -> tuple[Machine, Kexec]:
    m = Machine.new(kernel=kernel, possible=8, cpus=2)
    m.cpu_hot_add(2)  # present but offline: kexec-tools still lists it
    return m, Kexec(m)


def test_userspace_header_lists_present_cpus_and_a_backup_region() -> None:
    m, kx = setup()
    image = kexec_tools_load(kx, KexecPayload.synthetic())
    hdr_seg = image.segment_named("elfcorehdr")
    assert len(hdr_seg.buf) % 1024 == 0 and hdr_seg.memsz == 16 * 1024
    core = ElfCore.parse(hdr_seg.buf)
    notes = [p.p_paddr for p in core.phdrs if p.p_type == PT_NOTE]
    assert notes == [m.cpus.cpu(c).crash_notes for c in (0, 1, 2)] + [m.vmcoreinfo_paddr]
    loads = [(p.p_paddr, p.p_memsz, p.p_offset) for p in core.phdrs if p.p_type == PT_LOAD]
    backup = image.segment_named("backup")
    assert loads[0] == (0x1000000, 0x2C30000, 0x1000000)
    assert loads[1] == (0x1000, 0x9EC00, backup.mem), "the first 640 KiB is dumped from its backup copy"
    assert loads[2:] == [(0x100000, 0x6EF00000, 0x100000), (0x7F000000, 0xFDF000, 0x7F000000)]
    assert image.cmdline.endswith(f" elfcorehdr={hdr_seg.mem // 1024}K")
    assert not image.file_mode and image.elfcorehdr_index == -1 and not image.hotplug_support
    assert kimage_find_elfcorehdr(image, m.mem) == image.segments.index(hdr_seg)


def test_without_hotplug_the_header_is_digested_so_a_rewrite_breaks_purgatory() -> None:
    m, kx = setup()
    image = kexec_tools_load(kx, KexecPayload.synthetic())
    assert not image.flags & KEXEC_UPDATE_ELFCOREHDR
    assert kimage_verify_digest(image, m)
    hdr = image.segment_named("elfcorehdr")
    kx.arch_kexec_unprotect_crashkres()
    m.add_dimm(GIB)
    m.mem.write(hdr.mem, prepare_elf_headers(m.kernel_state())[0])
    assert not kimage_verify_digest(image, m), "why the kernel must not touch it without --hotplug"


def test_with_hotplug_the_header_is_left_out_and_the_flag_passed() -> None:
    m, kx = setup()
    image = kexec_tools_load(kx, KexecPayload.synthetic(), hotplug=True)
    assert image.flags & KEXEC_UPDATE_ELFCOREHDR and image.hotplug_support
    hdr = image.segment_named("elfcorehdr")
    assert hdr.memsz == 921600, "ALIGN(/sys/kernel/crash_elfcorehdr_size = 917616, 1024) = 918528, page-rounded"
    pi = image.purgatory
    assert pi is not None
    regions = [r for r in unpack_sha_regions(m.mem.read(pi.symbol_addr("sha256_regions"), 256)) if r[1]]
    assert (hdr.mem, hdr.memsz) not in regions and len(regions) == len(image.segments) - 2
    kx.arch_kexec_unprotect_crashkres()
    m.add_dimm(GIB)
    m.mem.write(hdr.mem, prepare_elf_headers(m.kernel_state())[0])
    assert kimage_verify_digest(image, m)
    assert kx.crash_check_hotplug_support() == 1


def test_hotplug_needs_crash_hotplug_in_the_kernel() -> None:
    _m, kx = setup("6.1")
    with pytest.raises(KexecError, match="CONFIG_CRASH_HOTPLUG"):
        kexec_tools_load(kx, KexecPayload.synthetic(), hotplug=True)
    with pytest.raises(KexecError, match="unknown flags"):
        kexec_load(kx, 0, [], KEXEC_ON_CRASH | KEXEC_UPDATE_ELFCOREHDR)
    image = kexec_tools_load(kx, KexecPayload.synthetic())
    assert not image.hotplug_support and kx.crash_check_hotplug_support() == 0


def test_kernel_checks_segments() -> None:
    m, kx = setup()
    lo, hi = m.crashk_res  # type: ignore[misc]
    page = bytes(4096)
    with pytest.raises(KexecError, match="overlap"):
        kexec_load(kx, 0, [KexecSegment(page, 4096, lo, 8192), KexecSegment(page, 4096, lo + 4096, 4096)],
                   KEXEC_ON_CRASH)
    with pytest.raises(KexecError, match="outside"):
        kexec_load(kx, 0, [KexecSegment(page, 4096, lo - 4096, 4096)], KEXEC_ON_CRASH)
    with pytest.raises(KexecError, match="aligned"):
        kexec_load(kx, 0, [KexecSegment(page, 4096, lo + 1, 4096)], KEXEC_ON_CRASH)
    with pytest.raises(KexecError, match="more than 16"):
        kexec_load(kx, 0, [KexecSegment(page, 4096, lo + i * 4096, 4096) for i in range(17)], KEXEC_ON_CRASH)
    image = kexec_load(kx, 0, [KexecSegment(b"abc", 3, hi - 4095, 4096)], KEXEC_ON_CRASH)
    assert image is not None and m.mem.read(hi - 4095, 8) == b"abc" + bytes(5)
    assert kx.lock.trylock()
    with pytest.raises(KexecBusyError):
        kexec_load_unload(kx)
    kx.lock.unlock()
    kexec_load_unload(kx)
    assert not kx.kexec_crash_loaded()


def test_userspace_header_matches_kernel_header_shape() -> None:
    m, _ = setup()
    hdr = ElfCore.parse(crash_create_elf64_headers(m))
    assert hdr.ehdr.e_phnum == 3 + 1 + 1 + 3
    assert len(crash_create_elf64_headers(m)) == 1024


def test_generic_flag_is_known_from_6_10() -> None:
    from crash_hotplug.kexec.kimage import KEXEC_CRASH_HOTPLUG_SUPPORT
    from crash_hotplug.machine.kernel import KernelConfig, KernelVersion

    m, kx = setup()
    lo, _ = m.crashk_res  # type: ignore[misc]
    seg = [KexecSegment(b"", 0, lo, 4096)]
    image = kexec_load(kx, 0, seg, KEXEC_ON_CRASH | KEXEC_CRASH_HOTPLUG_SUPPORT)
    assert image is not None and image.hotplug_support
    m.config = KernelConfig(KernelVersion(6, 6), True)
    with pytest.raises(KexecError, match="unknown flags 0x8"):
        kexec_load(kx, 0, seg, KEXEC_ON_CRASH | KEXEC_CRASH_HOTPLUG_SUPPORT)
    assert kexec_load(kx, 0, seg, KEXEC_ON_CRASH | KEXEC_UPDATE_ELFCOREHDR) is not None
