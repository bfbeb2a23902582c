"""The x86_64 part of the crash code (``arch/x86/kernel/crash.c``).

``prepare_elf_headers`` collects System RAM from the iomem tree, cuts out the low 1 MiB and the
crashkernel reservations and calls the generic builder with the kernel-text mapping;
``crash_load_segments`` sizes the elfcorehdr segment for hotplug; ``arch_crash_get_elfcorehdr_size``
is what ``/sys/kernel/crash_elfcorehdr_size`` prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from crash_hotplug.crash.core import (
    CrashMem,
    crash_exclude_mem_range,
    crash_prepare_elf64_headers,
)
from crash_hotplug.elf.constants import PN_XNUM
from crash_hotplug.elf.structs import Elf64_Ehdr, Elf64_Phdr
from crash_hotplug.machine.kernel import KernelConfig, KernelState
from crash_hotplug.machine.resource import system_ram_ranges, walk_system_ram_res
from crash_hotplug.snapshot.reader import read_kernel_state

__all__ = [
    "SZ_1M",
    "arch_crash_get_elfcorehdr_size",
    "crash_load_segments_memsz",
    "elf_header_exclude_ranges",
    "elfcorehdr_from_root",
    "fill_up_crash_elf_data",
    "prepare_elf_headers",
]

SZ_1M = 1 << 20
PAGE_SIZE = 4096


def fill_up_crash_elf_data(state: KernelState) -> CrashMem:
    """A ``crash_mem`` holding every System RAM range, with two spare slots for splits
    (``fill_up_crash_elf_data`` + ``prepare_elf64_ram_headers_callback``)."""
    ranges = list(walk_system_ram_res(state.iomem))
    return CrashMem(max_nr_ranges=len(ranges) + 2, ranges=ranges)


def elf_header_exclude_ranges(state: KernelState, cmem: CrashMem) -> None:
    """Cut the always-reserved low 1 MiB and the crashkernel regions (``elf_header_exclude_ranges``)."""
    rewritten = state.config.exclude_mem_range_rewritten
    crash_exclude_mem_range(cmem, 0, SZ_1M - 1, rewritten=rewritten)
    if state.crashk_res is not None:
        crash_exclude_mem_range(cmem, *state.crashk_res, rewritten=rewritten)
    if state.crashk_low_res is not None and state.crashk_low_res[1]:
        crash_exclude_mem_range(cmem, *state.crashk_low_res, rewritten=rewritten)


def prepare_elf_headers(state: KernelState, extra_exclusions: Sequence[tuple[int, int]] = ()) -> tuple[bytes, int]:
    """(elfcorehdr buffer, number of memory ranges) as ``prepare_elf_headers`` returns them.

    ``extra_exclusions`` is not upstream: the ``ours`` design cuts offline memory blocks out too
    (one more spare slot per exclusion, since each may split a range).
    """
    rams = system_ram_ranges(state.iomem)
    extra = tuple(extra_exclusions)
    last = _LAST_BUILT.get("last")
    if last is not None and last[0] is rams and last[1] is state and last[2] == extra:
        # the same state object (frozen: every field the same object) over the same ranges
        return last[4]
    rest = _headers_key(state, extra)
    if last is not None and last[0] is rams and last[3] == rest:
        _LAST_BUILT["last"] = (rams, state, extra, rest, last[4])
        return last[4]
    key = (rams, *rest)
    hit = _BUILT.get(key)
    if hit is None:
        cmem = fill_up_crash_elf_data(state)
        elf_header_exclude_ranges(state, cmem)
        if extra_exclusions:
            cmem.max_nr_ranges += len(extra_exclusions)
            for start, end in extra_exclusions:
                crash_exclude_mem_range(cmem, start, end, rewritten=True)
        hit = crash_prepare_elf64_headers(state, cmem, need_kernel_map=True), cmem.nr_ranges
        if len(_BUILT) >= _BUILT_MAX:
            del _BUILT[next(iter(_BUILT))]
        _BUILT[key] = hit
    # the System RAM tuple and the state are held with the result, so a later tree's tuple or a
    # later state is never taken for them
    _LAST_BUILT["last"] = (rams, state, extra, rest, hit)
    return hit


def _headers_key(state: KernelState, extra_exclusions: Sequence[tuple[int, int]]) -> tuple[object, ...]:
    """Everything :func:`prepare_elf_headers` reads but the System RAM ranges, by value: with equal
    ranges, equal keys build equal bytes (the possible CPUs size the buffer even where the present
    ones get the notes)."""
    cpus = state.header_cpus
    return (state.config, state.crashk_res, state.crashk_low_res,
            tuple(extra_exclusions), state.possible, cpus, tuple(map(state.crash_notes.__getitem__, cpus)),
            state.crash_notes_size,
            state.vmcoreinfo_paddr, state.vmcoreinfo_size, state.text_vaddr, state.text_paddr, state.text_size,
            state.page_offset)


#: the last few headers built, by everything they were built from (a hotplug storm rebuilds the
#: same header for every block of a DIMM: on x86 the System RAM resource is the whole DIMM's)
_BUILT: dict[tuple[object, ...], tuple[bytes, int]] = {}
_BUILT_MAX = 8
#: the last result handed out with what it was made from: the System RAM tuple (compared by
#: identity: the tree's tuple stays the same object until the tree changes), the state (by identity:
#: a frozen state whose crash_notes mapping is not changed in place, as :mod:`.core` assumes for
#: its packed notes), the extra exclusions, and the rest of the key (by value)
_LAST_BUILT: dict[str, tuple[tuple[tuple[int, int], ...], KernelState, tuple[tuple[int, int], ...],
                             tuple[object, ...], tuple[bytes, int]]] = {}


def crash_load_segments_memsz(config: KernelConfig, bufsz: int, nr_mem_ranges: int) -> int:
    """The elfcorehdr segment's ``memsz`` before page rounding (``crash_load_segments``).

    With ``CONFIG_CRASH_HOTPLUG`` the segment has room for VMCOREINFO, the kernel map,
    ``NR_CPUS_DEFAULT`` CPUs and ``CRASH_MAX_MEMORY_RANGES`` ranges (or the current ranges without
    memory hotplug); past ``PN_XNUM`` headers it keeps the built size.
    """
    if not config.crash_hotplug:
        return bufsz
    if config.memory_hotplug:
        pnum = 2 + config.nr_cpus_default + config.crash_max_memory_ranges
    else:
        pnum = nr_mem_ranges + 2 + config.nr_cpus_default
    if pnum >= PN_XNUM:
        return bufsz
    return pnum * Elf64_Phdr.SIZE + Elf64_Ehdr.SIZE


def arch_crash_get_elfcorehdr_size(config: KernelConfig) -> int:
    """``/sys/kernel/crash_elfcorehdr_size`` (no room for the ELF header itself)."""
    if not config.crash_hotplug:
        return 0
    n = 2 + config.nr_cpus_default
    if config.memory_hotplug:
        n += config.crash_max_memory_ranges
    return n * Elf64_Phdr.SIZE


def elfcorehdr_from_root(root: Path, kernel_version: str | None = None) -> bytes:
    """The elfcorehdr the kernel of the machine state under ``root`` builds for kexec_file_load."""
    return prepare_elf_headers(read_kernel_state(root, kernel_version=kernel_version))[0]
