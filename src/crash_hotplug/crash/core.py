"""Generic crash header code (``kernel/crash_core.c``; ``kernel/kexec_file.c`` before 6.6).

``struct crash_mem`` with ``crash_exclude_mem_range`` in both of its upstream forms, and
``crash_prepare_elf64_headers``, which turns the range list and the kernel's state into the
elfcorehdr bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat

from crash_hotplug.elf.constants import EM_X86_64, PF_R, PF_W, PF_X, PT_LOAD, PT_NOTE
from crash_hotplug.elf.structs import PHDR, Elf64_Ehdr, Elf64_Phdr
from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.machine.kernel import KernelState

__all__ = [
    "ELF_CORE_HEADER_ALIGN",
    "CrashMem",
    "CrashMemError",
    "crash_exclude_mem_range",
    "crash_prepare_elf64_headers",
    "elfcorehdr_nr_phdr",
]

#: ``include/linux/crash_core.h``
ELF_CORE_HEADER_ALIGN = 4096
_RWX = PF_R | PF_W | PF_X


class CrashMemError(CrashHotplugError):
    """``-ENOMEM`` from ``crash_exclude_mem_range``: a split needs a slot the array lacks."""


@dataclass
class CrashMem:
    """``struct crash_mem``: sorted inclusive ranges in an array of ``max_nr_ranges`` slots."""

    max_nr_ranges: int
    ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def nr_ranges(self) -> int:
        return len(self.ranges)


def crash_exclude_mem_range(mem: CrashMem, mstart: int, mend: int, *, rewritten: bool = True) -> None:
    """Cut ``[mstart, mend]`` out of ``mem`` (``crash_exclude_mem_range``).

    ``rewritten`` selects the 6.8+ form (one pass over every overlapping range; a split fails when
    ``nr_ranges >= max_nr_ranges``). The older form stops after the first partial overlap and fails
    a split when the overlapping range sits in the array's last slot.
    """
    if rewritten:
        _exclude_v2(mem, mstart, mend)
    else:
        _exclude_v1(mem, mstart, mend)


def _exclude_v2(mem: CrashMem, mstart: int, mend: int) -> None:
    r = mem.ranges
    i = 0
    while i < len(r):
        start, end = r[i]
        if mstart > end:
            i += 1
            continue
        if mend < start:
            break
        p_start, p_end = max(mstart, start), min(mend, end)
        if p_start == start and p_end == end:
            del r[i]
            continue
        if p_start > start and p_end < end:
            if len(r) >= mem.max_nr_ranges:
                raise CrashMemError(f"no slot to split [{start:#x}-{end:#x}] around [{mstart:#x}-{mend:#x}]")
            r[i] = (start, p_start - 1)
            r.insert(i + 1, (p_end + 1, end))
            i += 2
            continue
        r[i] = (start, p_start - 1) if p_start != start else (p_end + 1, end)
        i += 1


def _exclude_v1(mem: CrashMem, mstart: int, mend: int) -> None:
    r = mem.ranges
    i = 0
    split: tuple[int, int] | None = None
    while i < len(r):
        start, end = r[i]
        if mstart > end or mend < start:
            i += 1
            continue
        p_start, p_end = max(mstart, start), min(mend, end)
        if p_start == start and p_end == end:
            last = i == len(r) - 1
            del r[i]
            if last:
                return
            continue
        if p_start > start and p_end < end:
            r[i] = (start, p_start - 1)
            split = (p_end + 1, end)
        elif p_start != start:
            r[i] = (start, p_start - 1)
        else:
            r[i] = (p_end + 1, end)
        break
    if split is None:
        return
    if i == mem.max_nr_ranges - 1:
        raise CrashMemError(f"no slot to split around [{mstart:#x}-{mend:#x}]")
    r.insert(i + 1, split)


def elfcorehdr_nr_phdr(state: KernelState, nr_ranges: int) -> int:
    """Program headers the buffer is sized for: possible CPUs + VMCOREINFO + ranges + kernel text."""
    return len(state.possible) + 1 + nr_ranges + 1


class _NotesCache:
    """The packed CPU PT_NOTEs of the last build, reused while the same CPU list and the same
    ``crash_notes`` mapping are passed (possible CPUs and their note buffers are fixed at boot, so
    every hotplug rebuild on one machine hits it). Keys are compared by identity, and the cache holds
    them, so a reused ``id`` can never match."""

    key: tuple[object, object, int] | None = None
    value: bytes = b""


def _cpu_note_phdrs(state: KernelState) -> bytes:
    cpus, notes, size = state.header_cpus, state.crash_notes, state.crash_notes_size
    key = _NotesCache.key
    if key is not None and key[0] is cpus and key[1] is notes and key[2] == size:
        return _NotesCache.value
    addrs = [notes[c] for c in cpus]
    packed = b"".join(map(PHDR.pack,
        repeat(PT_NOTE), repeat(0), addrs, repeat(0), addrs, repeat(size), repeat(size), repeat(0)
    ))
    _NotesCache.key, _NotesCache.value = (cpus, notes, size), packed
    return packed


def crash_prepare_elf64_headers(
    state: KernelState, mem: CrashMem, need_kernel_map: bool, *, elf_arch: int = EM_X86_64
) -> bytes:
    """The elfcorehdr buffer (``crash_prepare_elf64_headers``), zero-padded to ``ELF_CORE_HEADER_ALIGN``.

    Order: one PT_NOTE per CPU (``state.header_cpus``), the VMCOREINFO PT_NOTE, the kernel-text
    PT_LOAD when ``need_kernel_map``, one PT_LOAD per range. Offsets are physical addresses.
    """
    nr_phdr = elfcorehdr_nr_phdr(state, mem.nr_ranges)
    elf_sz = Elf64_Ehdr.SIZE + nr_phdr * Elf64_Phdr.SIZE
    elf_sz = -(-elf_sz // ELF_CORE_HEADER_ALIGN) * ELF_CORE_HEADER_ALIGN

    parts = [b"", _cpu_note_phdrs(state)]
    vmci = state.vmcoreinfo_paddr
    parts.append(PHDR.pack(PT_NOTE, 0, vmci, 0, vmci, state.vmcoreinfo_size, state.vmcoreinfo_size, 0))
    if need_kernel_map:
        parts.append(PHDR.pack(PT_LOAD, _RWX, state.text_paddr, state.text_vaddr, state.text_paddr,
                               state.text_size, state.text_size, 0))
    po = state.page_offset
    starts = [s for s, _ in mem.ranges]
    # u64 as in the kernel: a range a caller left inverted (powerpc's remove_mem_range split) wraps
    lens = [(e - s + 1) & 0xFFFFFFFFFFFFFFFF for s, e in mem.ranges]
    vaddrs = [(po + s) & 0xFFFFFFFFFFFFFFFF for s in starts]
    parts.extend(map(PHDR.pack,
        repeat(PT_LOAD), repeat(_RWX), starts, vaddrs, starts, lens, lens, repeat(0)
    ))
    phnum = len(state.header_cpus) + 1 + int(need_kernel_map) + len(starts)
    parts[0] = Elf64_Ehdr.core(machine=elf_arch, phnum=phnum).pack()
    parts.append(bytes(elf_sz - Elf64_Ehdr.SIZE - phnum * Elf64_Phdr.SIZE))
    return b"".join(parts)
