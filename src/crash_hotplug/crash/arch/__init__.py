"""The seam between the generic crash hotplug handler and an architecture (``include/linux/crash_core.h``:
``arch_crash_hotplug_support``, ``arch_crash_get_elfcorehdr_size``, ``arch_crash_handle_hotplug_event``).

Adding an architecture means adding a module with a class that satisfies :class:`ArchCrashHotplug`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from crash_hotplug.machine.kernel import KernelConfig

if TYPE_CHECKING:
    from crash_hotplug.crash.hotplug import CrashHotplug
    from crash_hotplug.kexec.kimage import Kimage
    from crash_hotplug.machine.memory import MemoryNotify

__all__ = ["ArchCrashHotplug", "Outcome"]


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
