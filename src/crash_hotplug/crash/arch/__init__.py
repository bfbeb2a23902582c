"""The seam between the generic crash hotplug handler and an architecture (``include/linux/crash_core.h``:
``arch_crash_hotplug_support``, ``arch_crash_get_elfcorehdr_size``, ``arch_crash_handle_hotplug_event``).

Adding an architecture means adding a module with a class that satisfies :class:`ArchCrashHotplug`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from crash_hotplug.machine.kernel import KernelConfig
from crash_hotplug.machine.physmem import PAGE_SIZE

if TYPE_CHECKING:
    from crash_hotplug.crash.hotplug import CrashHotplug
    from crash_hotplug.kexec.kimage import Kimage
    from crash_hotplug.machine.memory import MemoryNotify

__all__ = ["ArchCrashHotplug", "Outcome", "write_elfcorehdr"]


class Outcome(StrEnum):
    """What one hotplug event did to the loaded kdump image."""

    UPDATED = "updated"
    #: x86: every possible CPU is already described
    CPU_SKIPPED = "cpu event skipped"
    LOCK_BUSY = "dropped: kexec lock busy"
    NO_IMAGE = "no crash image loaded"
    NO_HOTPLUG_SUPPORT = "image without hotplug support"
    NO_ELFCOREHDR = "elfcorehdr segment not found"
    TOO_BIG = "new header larger than the segment; old header kept"
    BUILD_FAILED = "unable to create new elfcorehdr; old header kept"
    NOT_HANDLED = "event not handled by this design"
    QUEUED = "queued for a coalesced update"
    UNCHANGED = "rebuilt header identical to the one in place; nothing written"
    DEFERRED = "kexec lock busy: deferred until it is released"
    WAITING = "waiting on the crash hotplug mutex for the update in progress"


class ArchCrashHotplug(Protocol):
    """What the generic handler asks of an architecture."""

    name: str

    def arch_crash_hotplug_support(self, image: Kimage, kexec_flags: int) -> bool:
        """May the kernel update this image on hotplug?"""
        ...

    def arch_crash_get_elfcorehdr_size(self, config: KernelConfig) -> int:
        """What ``/sys/kernel/crash_elfcorehdr_size`` prints."""
        ...

    def arch_crash_handle_hotplug_event(self, hp: CrashHotplug, image: Kimage, arg: MemoryNotify | None) -> Outcome:
        """Update the image for ``image.hp_action``; the kexec lock is held and the crash region writable."""
        ...


def write_elfcorehdr(hp: CrashHotplug, image: Kimage, elfbuf: bytes, too_big: str) -> Outcome:
    """Put a rebuilt header in the image's elfcorehdr segment, as both arch handlers do
    (``arch/x86/kernel/crash.c`` and ``arch/powerpc/kexec/crash.c``, ``arch_crash_handle_hotplug_event``):
    refuse a header larger than the segment (``too_big`` is the arch's printk, given the size and memsz),
    else hide the crash image, copy the header page by page and restore the image."""
    machine = hp.kexec.machine
    hp.spend("elfcorehdr_build_phdr", (len(elfbuf) - 64) // 56)
    seg = image.segments[image.elfcorehdr_index]
    if len(elfbuf) > seg.memsz:
        machine.printk(too_big.format(elfsz=len(elfbuf), memsz=seg.memsz))
        return Outcome.TOO_BIG
    kexec = hp.kexec
    # the crash image is invalid while its elfcorehdr is being rewritten
    hp.step("hide crash image")
    kexec.kexec_crash_image = None
    write = machine.mem.write
    stepped = hp.on_step is not None
    for off in range(0, len(elfbuf), PAGE_SIZE):
        if stepped:
            hp.step(f"copy elfcorehdr page {off // PAGE_SIZE}")
        write(seg.mem + off, elfbuf[off : off + PAGE_SIZE])
    hp.spend("elfcorehdr_copy_page", -(-len(elfbuf) // PAGE_SIZE), window="hidden")
    hp.step("restore crash image")
    kexec.kexec_crash_image = image
    return Outcome.UPDATED
