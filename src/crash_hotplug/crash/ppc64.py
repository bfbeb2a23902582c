"""The powerpc64 part of the crash code (``arch/powerpc/kexec/ranges.c``, ``crash.c``, ``core_64.c``).

``get_crash_memory_ranges`` lists the memblock memory (the first 64 KiB as their own range),
cuts out the crashkernel region, adds RTAS (exact size, though it lies inside the crashkernel
region) and sorts without merging; ``remove_mem_range`` cuts a range being hot-removed (the
memory notifier runs before memblock forgets it); the generic builder then writes one PT_NOTE
per possible CPU, VMCOREINFO and the ranges, without a kernel-text PT_LOAD, and
``sync_backup_region_phdr`` points the ``[0, 64K)`` PT_LOAD at the backup copy purgatory makes.
``update_cpus_node`` rewrites ``/cpus`` of the crash kernel's FDT from the live device tree with
libfdt (:class:`~crash_hotplug.fdt.blob.FdtBlob`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from crash_hotplug.crash.core import CrashMem, crash_exclude_mem_range, crash_prepare_elf64_headers
from crash_hotplug.elf.constants import EM_PPC64
from crash_hotplug.elf.structs import PHDR, Elf64_Ehdr, Elf64_Phdr
from crash_hotplug.errors import ElfFormatError
from crash_hotplug.fdt.blob import FdtBlob
from crash_hotplug.machine.kernel import KernelState
from crash_hotplug.machine.pseries import OfNode
from crash_hotplug.machine.resource import walk_system_ram_res

__all__ = [
    "BACKUP_SRC_END",
    "BACKUP_SRC_SIZE",
    "BACKUP_SRC_START",
    "OfNode",
    "arch_crash_get_elfcorehdr_size",
    "backup_start_from_header",
    "for_each_mem_range",
    "get_crash_memory_ranges",
    "prepare_elf_headers_ppc64",
    "remove_mem_range",
    "sync_backup_region_phdr",
    "update_cpus_node",
]

#: ``arch/powerpc/include/asm/crashdump-ppc64.h``
BACKUP_SRC_START: Final = 0
BACKUP_SRC_END: Final = 0xFFFF
BACKUP_SRC_SIZE: Final = BACKUP_SRC_END - BACKUP_SRC_START + 1
_U64: Final = (1 << 64) - 1
#: ``MEM_RANGE_CHUNK_SZ`` (2 KiB) of 16-byte ranges: the slots ``realloc_mem_ranges`` adds at a time
_RANGE_CHUNK: Final = 2048 // 16


def for_each_mem_range(state: KernelState) -> list[tuple[int, int]]:
    """memblock.memory as inclusive ranges: the top-level System RAM of iomem with adjacent
    ranges merged, as ``memblock_add`` merges neighbours (pseries adds one LMB at a time)."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(walk_system_ram_res(state.iomem)):
        if out and out[-1][1] + 1 == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _sort_memory_ranges(cmem: CrashMem, merge: bool) -> None:
    """``sort_memory_ranges``: by start; with ``merge``, overlapping or adjacent ranges join."""
    r = sorted(cmem.ranges)
    if merge and r:
        out = [r[0]]
        for s, e in r[1:]:
            ps, pe = out[-1]
            if s <= pe + 1:
                out[-1] = (ps, max(pe, e))
            else:
                out.append((s, e))
        r = out
    cmem.ranges[:] = r


def _add_mem_range(cmem: CrashMem, base: int, size: int) -> None:
    """``add_mem_range``: one more range, growing the array by a chunk when full. The end is
    computed in u64 as the kernel does (``base + size - 1``)."""
    if cmem.nr_ranges >= cmem.max_nr_ranges:
        cmem.max_nr_ranges += _RANGE_CHUNK
    cmem.ranges.append((base, (base + size - 1) & _U64))


def get_crash_memory_ranges(state: KernelState, rtas: tuple[int, int] | None) -> CrashMem:
    """``get_crash_memory_ranges`` (``rtas`` is (base, size) from ``/rtas``; OPAL is absent on pseries)."""
    cmem = CrashMem(max_nr_ranges=_RANGE_CHUNK)
    for start, end in for_each_mem_range(state):
        base, size = start, end - start + 1
        if base == BACKUP_SRC_START:
            if size > BACKUP_SRC_SIZE:
                base, size = BACKUP_SRC_END + 1, size - BACKUP_SRC_SIZE
            else:
                continue
        _add_mem_range(cmem, base, size)
        if cmem.nr_ranges == cmem.max_nr_ranges:
            _sort_memory_ranges(cmem, True)
    if cmem.nr_ranges == cmem.max_nr_ranges:
        cmem.max_nr_ranges += _RANGE_CHUNK
    if state.crashk_res is not None:
        crash_exclude_mem_range(cmem, *state.crashk_res, rewritten=state.config.exclude_mem_range_rewritten)
    if rtas is not None:
        _add_mem_range(cmem, rtas[0], rtas[1])
    _add_mem_range(cmem, BACKUP_SRC_START, BACKUP_SRC_SIZE)
    _sort_memory_ranges(cmem, False)
    return cmem


def remove_mem_range(cmem: CrashMem, base: int, size: int, *, split_size_fix: bool = True) -> None:
    """``remove_mem_range`` as in ``ranges.c``: drop, trim or split the range that holds
    ``[base, base + size)``.

    A split keeps ``[mstart, base - 1]`` and adds the upper half with the kernel's arithmetic, which
    has two versions, both modelled byte for byte:

    * ``split_size_fix`` (the default): "powerpc/kdump: Fix size calculation for hot-removed memory
      ranges" (2025, in stable 6.12.y; Debian's 6.12.113 has it): ``size = mend - end + 1`` taken
      before the lower half is trimmed, so the upper range is ``[end + 1, mend + 1]``, one byte
      longer than the memory. Seen in the lab: offlining LMB ``0x80000000`` of
      ``[0x40000000, 0xbfffffff]`` gives the PT_LOAD ``0x90000000`` + ``0x30000001``.
    * without it (6.9 as merged, 849599b702ef): ``size = (base - 1) - end`` after the trim, in u64:
      the inverted range ``[end + 1, base - 1]``, a PT_LOAD with a wrapped size.
    """
    if not size:
        return
    end = base + size - 1
    i = 0
    while i < cmem.nr_ranges:
        mstart, mend = cmem.ranges[i]
        if not (base >= mstart and end <= mend):
            i += 1
            continue
        if base == mstart and end == mend:
            del cmem.ranges[i]
            return
        if base == mstart:
            cmem.ranges[i] = (end + 1, mend)
            return
        if end == mend:
            cmem.ranges[i] = (mstart, base - 1)
            return
        upper = (mend - end + 1) if split_size_fix else ((base - 1) - end) & _U64
        cmem.ranges[i] = (mstart, base - 1)
        _add_mem_range(cmem, end + 1, upper)
        i += 1


def sync_backup_region_phdr(elfbuf: bytearray, backup_start: int) -> None:
    """``sync_backup_region_phdr`` (to the header): the PT_LOAD of ``[0, 64K)`` reads from the backup."""
    view = memoryview(elfbuf)
    phnum = Elf64_Ehdr.unpack(view).e_phnum
    for i in range(phnum):
        off = Elf64_Ehdr.SIZE + i * Elf64_Phdr.SIZE
        ph = Elf64_Phdr.unpack(view, off)
        if ph.p_paddr == BACKUP_SRC_START:
            PHDR.pack_into(elfbuf, off, ph.p_type, ph.p_flags, backup_start, ph.p_vaddr, ph.p_paddr,
                           ph.p_filesz, ph.p_memsz, ph.p_align)
            return


def backup_start_from_header(elfbuf: bytes) -> int | None:
    """``machine_kexec_post_load`` for a kexec_load image: the backup address is the ``p_offset``
    of the PT_LOAD kexec-tools wrote for ``[0, 64K)`` (``sync_backup_region_phdr``, to the kimage)."""
    try:
        phnum = Elf64_Ehdr.unpack(elfbuf).e_phnum
        for i in range(phnum):
            ph = Elf64_Phdr.unpack(elfbuf, Elf64_Ehdr.SIZE + i * Elf64_Phdr.SIZE)
            if ph.p_paddr == BACKUP_SRC_START and ph.p_type == 1:
                return ph.p_offset
    except ElfFormatError:
        return None
    return None


def prepare_elf_headers_ppc64(state: KernelState, rtas: tuple[int, int] | None, backup_start: int | None,
                              removed: tuple[int, int] | None = None, *,
                              split_size_fix: bool = True) -> tuple[bytes, int]:
    """(elfcorehdr buffer, number of ranges) as ``update_crash_elfcorehdr`` builds it; ``removed`` is
    (base, size) of memory going offline (``KEXEC_CRASH_HP_REMOVE_MEMORY``); ``split_size_fix``
    picks ``remove_mem_range``'s split arithmetic (see there)."""
    cmem = get_crash_memory_ranges(state, rtas)
    if removed is not None:
        remove_mem_range(cmem, *removed, split_size_fix=split_size_fix)
    buf = bytearray(crash_prepare_elf64_headers(state, cmem, need_kernel_map=False, elf_arch=EM_PPC64))
    if backup_start is not None:
        sync_backup_region_phdr(buf, backup_start)
    return bytes(buf), cmem.nr_ranges


def arch_crash_get_elfcorehdr_size(possible_cpus: int, crash_max_memory_ranges: int, memory_hotplug: bool) -> int:
    """``arch_crash_get_elfcorehdr_size`` on powerpc: the ELF header, one PT_NOTE per possible CPU,
    VMCOREINFO and, with memory hotplug, ``CRASH_MAX_MEMORY_RANGES`` PT_LOADs."""
    n = possible_cpus + 1 + (crash_max_memory_ranges if memory_hotplug else 0)
    return Elf64_Ehdr.SIZE + n * Elf64_Phdr.SIZE


def update_cpus_node(blob: FdtBlob, cpus: Sequence[OfNode]) -> None:
    """``update_cpus_node``: delete every ``device_type = "cpu"`` subnode of ``/cpus`` from the FDT,
    then add each CPU node of the live tree (``cpus``, in ``for_each_child_of_node`` order) with its
    properties (``add_node_props``), all in place within ``totalsize``."""
    cpus_off = blob.path_offset("/cpus")
    if cpus_off is None:
        raise KeyError("/cpus")
    prev = cpus_off
    while True:
        subs = blob.subnodes(cpus_off)
        if prev == cpus_off:
            cand = subs[0] if subs else None
        else:
            after = [s for s in subs if s > prev]
            cand = after[0] if after else None
        if cand is None:
            break
        dt = blob.get_property(cand, "device_type")
        if dt is None or dt.split(b"\0", 1)[0] != b"cpu":
            prev = cand
            continue
        blob.del_node(cand)
    for node in cpus:
        if not node.is_cpu:
            continue
        off = blob.add_subnode(cpus_off, node.full_name)
        for name, value in node.properties:
            blob.setprop(off, name, value)
