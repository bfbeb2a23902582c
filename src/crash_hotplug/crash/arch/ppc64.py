"""The powerpc64 crash hotplug handler (the ``CONFIG_CRASH_HOTPLUG`` half of
``arch/powerpc/kexec/crash.c``).

``arch_crash_handle_hotplug_event``: a CPU add rewrites the crash kernel FDT's ``/cpus`` node from
the live device tree (``update_crash_fdt``), so the capture kernel can boot on a hot-added CPU; a
CPU removal does nothing (an offline CPU may stay in the FDT); a memory add or removal rebuilds the
elfcorehdr (``update_crash_elfcorehdr``), cutting the range going away out of it at once. Both
rewrites hide the crash image while they copy (``xchg(&kexec_crash_image, NULL)``).

The kimage's ``arch.backup_start`` (set by ``machine_kexec_post_load`` from kexec-tools' header for
a kexec_load image) is kept here per image: :meth:`Ppc64.machine_kexec_post_load`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crash_hotplug.crash.arch import Outcome, write_elfcorehdr
from crash_hotplug.crash.core import CrashMemError
from crash_hotplug.crash.ppc64 import (
    arch_crash_get_elfcorehdr_size,
    backup_start_from_header,
    prepare_elf_headers_ppc64,
    update_cpus_node,
)
from crash_hotplug.errors import FdtFormatError
from crash_hotplug.fdt.blob import FDT_MAGIC, FdtBlob
from crash_hotplug.kexec.kimage import (
    KEXEC_CRASH_HOTPLUG_SUPPORT,
    KEXEC_CRASH_HP_ADD_CPU,
    KEXEC_CRASH_HP_ADD_MEMORY,
    KEXEC_CRASH_HP_REMOVE_CPU,
    KEXEC_CRASH_HP_REMOVE_MEMORY,
    Kimage,
)
from crash_hotplug.machine.kernel import KernelConfig
from crash_hotplug.machine.memory import MemoryNotify
from crash_hotplug.machine.physmem import PAGE_SIZE
from crash_hotplug.machine.pseries import Pseries

if TYPE_CHECKING:
    from crash_hotplug.crash.hotplug import CrashHotplug
    from crash_hotplug.machine.protmem import GuardedPhysMem

__all__ = ["Ppc64", "get_fdt_index"]


def get_fdt_index(image: Kimage, mem: GuardedPhysMem) -> int:
    """``get_fdt_index``: the first segment whose memory starts with the FDT magic; -1 if none."""
    for i, s in enumerate(image.segments):
        if int.from_bytes(mem.read(s.mem, 4), "big") == FDT_MAGIC:
            return i
    return -1


class Ppc64:
    """powerpc64 behind :class:`~crash_hotplug.crash.arch.ArchCrashHotplug`, for one pseries guest."""

    name = "ppc64le"

    def __init__(self, platform: Pseries) -> None:
        self.platform = platform
        #: ``image->arch.backup_start`` by image
        self._backup_start: dict[int, int] = {}

    def machine_kexec_post_load(self, image: Kimage, elfcorehdr: bytes) -> None:
        """``machine_kexec_post_load``: remember where kexec-tools put the backup of ``[0, 64K)``."""
        start = backup_start_from_header(elfcorehdr)
        if start is not None:
            self._backup_start[id(image)] = start

    def backup_start(self, image: Kimage) -> int | None:
        return self._backup_start.get(id(image))

    def arch_crash_hotplug_support(self, image: Kimage, kexec_flags: int) -> bool:
        """``arch_crash_hotplug_support``: kexec_file images always; kexec_load images only with the
        generic ``KEXEC_CRASH_HOTPLUG_SUPPORT`` (powerpc never knew ``KEXEC_UPDATE_ELFCOREHDR``)."""
        if image.file_mode:
            return True
        return bool(kexec_flags & KEXEC_CRASH_HOTPLUG_SUPPORT)

    def arch_crash_get_elfcorehdr_size(self, config: KernelConfig) -> int:
        """``/sys/kernel/crash_elfcorehdr_size``: sized by the possible CPUs, not ``NR_CPUS``."""
        return arch_crash_get_elfcorehdr_size(len(self.platform.machine.cpus.possible),
                                              config.crash_max_memory_ranges, config.memory_hotplug)

    def arch_crash_handle_hotplug_event(self, hp: CrashHotplug, image: Kimage, arg: MemoryNotify | None) -> Outcome:
        """``arch_crash_handle_hotplug_event``"""
        if image.hp_action == KEXEC_CRASH_HP_REMOVE_CPU:
            return Outcome.CPU_SKIPPED
        if image.hp_action == KEXEC_CRASH_HP_ADD_CPU:
            return self.update_crash_fdt(hp, image)
        if image.hp_action in (KEXEC_CRASH_HP_ADD_MEMORY, KEXEC_CRASH_HP_REMOVE_MEMORY):
            return self.update_crash_elfcorehdr(hp, image, arg)
        hp.kexec.machine.printk("crash hp: Unknown hotplug action")
        return Outcome.NOT_HANDLED

    def update_crash_elfcorehdr(self, hp: CrashHotplug, image: Kimage, mn: MemoryNotify | None) -> Outcome:
        """``update_crash_elfcorehdr``"""
        machine = hp.kexec.machine
        removed = None
        if image.hp_action == KEXEC_CRASH_HP_REMOVE_MEMORY and mn is not None:
            removed = (mn.start, mn.nr_pages * PAGE_SIZE)
        try:
            elfbuf, _n = prepare_elf_headers_ppc64(machine.kernel_state(snapshot=False), self.platform.rtas,
                                                   self.backup_start(image), removed)
        except CrashMemError:
            machine.printk("crash hp: Failed to prepare elf header")
            return Outcome.BUILD_FAILED
        return write_elfcorehdr(hp, image, elfbuf, "crash hp: Updated crash elfcorehdr elfsz {elfsz} > memsz {memsz}")

    def update_crash_fdt(self, hp: CrashHotplug, image: Kimage) -> Outcome:
        """``update_crash_fdt``: rewrite ``/cpus`` of the FDT segment in place, image hidden meanwhile."""
        machine = hp.kexec.machine
        idx = get_fdt_index(image, machine.mem)
        if idx < 0:
            machine.printk("crash hp: Unable to locate FDT segment.")
            return Outcome.NOT_HANDLED
        seg = image.segments[idx]
        size = int.from_bytes(machine.mem.read(seg.mem + 4, 4), "big")
        kexec = hp.kexec
        hp.step("hide crash image")
        kexec.kexec_crash_image = None
        outcome = Outcome.UPDATED
        try:
            blob = FdtBlob(machine.mem.read(seg.mem, min(size, seg.memsz)), f"FDT segment at {seg.mem:#x}")
            update_cpus_node(blob, self.platform.cpus_nodes)
        except (FdtFormatError, KeyError):
            machine.printk("crash hp: Failed to update crash FDT")
            outcome = Outcome.BUILD_FAILED
        else:
            hp.step("write crash FDT")
            machine.mem.write(seg.mem, blob.data())
            hp.spend("elfcorehdr_copy_page", -(-len(blob.data()) // PAGE_SIZE), window="hidden")
        hp.step("restore crash image")
        kexec.kexec_crash_image = image
        return outcome
