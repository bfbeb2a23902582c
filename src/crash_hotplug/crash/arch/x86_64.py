"""The x86_64 crash hotplug handler (the ``CONFIG_CRASH_HOTPLUG`` half of ``arch/x86/kernel/crash.c``).

``arch_crash_handle_hotplug_event``: CPU events are skipped once every possible CPU is described
(kexec_file images, or any image whose header the kernel already rewrote); otherwise the header is
rebuilt from the machine as it is now, checked against the segment's ``memsz``, and copied over
the old one with the crash image hidden (``xchg(&kexec_crash_image, NULL)``) during the copy.

Under the ``rfc`` design (the 2021 RFC v1) the elfcorehdr is part of the purgatory digest, so after
the copy the handler digests the segments again and patches purgatory, as the seed describes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crash_hotplug.crash.arch import Outcome, write_elfcorehdr
from crash_hotplug.crash.core import CrashMemError
from crash_hotplug.crash.x86_64 import arch_crash_get_elfcorehdr_size, prepare_elf_headers
from crash_hotplug.kexec.kexec_file import kexec_purgatory_repatch
from crash_hotplug.kexec.kimage import (
    KEXEC_CRASH_HOTPLUG_SUPPORT,
    KEXEC_CRASH_HP_ADD_CPU,
    KEXEC_CRASH_HP_REMOVE_CPU,
    KEXEC_UPDATE_ELFCOREHDR,
    Kimage,
)
from crash_hotplug.machine.kernel import KernelConfig
from crash_hotplug.machine.memory import MemoryNotify

if TYPE_CHECKING:
    from crash_hotplug.crash.hotplug import CrashHotplug

__all__ = ["X86_64"]


class X86_64:
    """x86_64 behind :class:`~crash_hotplug.crash.arch.ArchCrashHotplug`."""

    name = "x86_64"

    def arch_crash_hotplug_support(self, image: Kimage, kexec_flags: int) -> bool:
        """``arch_crash_hotplug_support``: kexec_file images always; kexec_load images when
        kexec-tools passed ``KEXEC_UPDATE_ELFCOREHDR`` or ``KEXEC_CRASH_HOTPLUG_SUPPORT``."""
        if image.file_mode:
            return True
        return bool(kexec_flags & (KEXEC_UPDATE_ELFCOREHDR | KEXEC_CRASH_HOTPLUG_SUPPORT))

    def arch_crash_get_elfcorehdr_size(self, config: KernelConfig) -> int:
        return arch_crash_get_elfcorehdr_size(config)

    def arch_crash_handle_hotplug_event(self, hp: CrashHotplug, image: Kimage, arg: MemoryNotify | None) -> Outcome:
        """``arch_crash_handle_hotplug_event``"""
        cpu_event = image.hp_action in (KEXEC_CRASH_HP_ADD_CPU, KEXEC_CRASH_HP_REMOVE_CPU)
        if cpu_event and (image.file_mode or image.elfcorehdr_updated) and not hp.design.updates_on_cpu_events:
            return Outcome.CPU_SKIPPED
        machine = hp.kexec.machine
        try:
            elfbuf, _nr_ranges = prepare_elf_headers(machine.kernel_state(snapshot=False))
        except CrashMemError:
            machine.printk("crash hp: unable to create new elfcorehdr")
            return Outcome.BUILD_FAILED
        outcome = write_elfcorehdr(hp, image, elfbuf, "crash hp: update elfcorehdr elfsz {elfsz} > memsz {memsz}")
        if outcome is not Outcome.UPDATED:
            return outcome
        if hp.design.elfcorehdr_in_digest:
            hp.step("patch purgatory digest")
            kexec_purgatory_repatch(hp.kexec, image)
            hp.spend("purgatory_redigest_byte", sum(s.memsz for s in image.segments))
        machine.printk("crash hp: updated elfcorehdr")
        return Outcome.UPDATED
