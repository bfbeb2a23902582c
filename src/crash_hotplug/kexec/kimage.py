"""``struct kimage`` and ``struct kexec_segment`` (``include/linux/kexec.h``), the kexec flags
(``include/uapi/linux/kexec.h``) and the crash hotplug action codes
(``include/linux/crash_core.h``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from crash_hotplug.elf.constants import ELFMAG
from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.kexec.purgatory import PurgatoryInfo
from crash_hotplug.machine.physmem import MemoryReader

__all__ = [
    "KEXEC_CRASH_HOTPLUG_SUPPORT",
    "KEXEC_CRASH_HP_ADD_CPU",
    "KEXEC_CRASH_HP_ADD_MEMORY",
    "KEXEC_CRASH_HP_INVALID_CPU",
    "KEXEC_CRASH_HP_NONE",
    "KEXEC_CRASH_HP_REMOVE_CPU",
    "KEXEC_CRASH_HP_REMOVE_MEMORY",
    "KEXEC_FILE_DEBUG",
    "KEXEC_FILE_NO_INITRAMFS",
    "KEXEC_FILE_ON_CRASH",
    "KEXEC_FILE_UNLOAD",
    "KEXEC_ON_CRASH",
    "KEXEC_PRESERVE_CONTEXT",
    "KEXEC_SEGMENT_MAX",
    "KEXEC_TYPE_CRASH",
    "KEXEC_TYPE_DEFAULT",
    "KEXEC_UPDATE_ELFCOREHDR",
    "KexecError",
    "KexecSegment",
    "Kimage",
    "kimage_find_elfcorehdr",
]

KEXEC_SEGMENT_MAX: Final = 16
KEXEC_TYPE_DEFAULT: Final = 0
KEXEC_TYPE_CRASH: Final = 1

#: kexec_load flags
KEXEC_ON_CRASH: Final = 0x00000001
KEXEC_PRESERVE_CONTEXT: Final = 0x00000002
KEXEC_UPDATE_ELFCOREHDR: Final = 0x00000004
KEXEC_CRASH_HOTPLUG_SUPPORT: Final = 0x00000008
KEXEC_ARCH_MASK: Final = 0xFFFF0000
#: kexec_file_load flags
KEXEC_FILE_UNLOAD: Final = 0x00000001
KEXEC_FILE_ON_CRASH: Final = 0x00000002
KEXEC_FILE_NO_INITRAMFS: Final = 0x00000004
KEXEC_FILE_DEBUG: Final = 0x00000008

#: ``image->hp_action`` values
KEXEC_CRASH_HP_NONE: Final = 0
KEXEC_CRASH_HP_ADD_CPU: Final = 1
KEXEC_CRASH_HP_REMOVE_CPU: Final = 2
KEXEC_CRASH_HP_ADD_MEMORY: Final = 3
KEXEC_CRASH_HP_REMOVE_MEMORY: Final = 4
#: the ``cpu`` argument of a memory event
KEXEC_CRASH_HP_INVALID_CPU: Final = 0xFFFFFFFF


class KexecError(CrashHotplugError):
    """A kexec system call failing: ``errno`` is the positive error code it would return."""

    def __init__(self, what: str, errno: int = 22) -> None:
        self.what = what
        self.errno = errno
        super().__init__(f"{what} (errno {errno})")


@dataclass
class KexecSegment:
    """``struct kexec_segment``: ``bufsz`` bytes of ``buf`` loaded at ``mem``, ``memsz`` bytes of
    memory (the rest zero). ``name`` says what it holds (kernel, initrd, ...)."""

    buf: bytes
    bufsz: int
    mem: int
    memsz: int
    name: str = ""

    @property
    def end(self) -> int:
        """Inclusive last byte in memory."""
        return self.mem + self.memsz - 1

    def overlaps(self, start: int, end: int) -> bool:
        return not (end < self.mem or start > self.end)


@dataclass
class Kimage:
    """``struct kimage``, with the fields the crash hotplug handler reads and writes."""

    type: int = KEXEC_TYPE_CRASH
    file_mode: bool = True
    segments: list[KexecSegment] = field(default_factory=list)
    start: int = 0
    cmdline: str = ""
    #: the segment index of the elfcorehdr; -1 until known (``do_kimage_alloc_init``)
    elfcorehdr_index: int = -1
    elfcorehdr_updated: bool = False
    #: whether the kernel may rewrite the image on hotplug (``update_elfcorehdr`` in 6.6-6.9)
    hotplug_support: bool = False
    hp_action: int = KEXEC_CRASH_HP_NONE
    elf_load_addr: int = 0
    elf_headers_sz: int = 0
    elf_headers: bytes = b""
    purgatory: PurgatoryInfo | None = None
    purgatory_index: int = -1
    #: names of the (regions, digest) symbols the purgatory uses
    digest_symbols: tuple[str, str] = ("purgatory_sha_regions", "purgatory_sha256_digest")
    flags: int = 0
    #: complete headers the elfcorehdr segment has room for (2: the ``ours`` double buffer)
    elfcorehdr_slots: int = 1
    #: which slot holds the header to dump (0: the one ``elfcorehdr=`` points at)
    elfcorehdr_active: int = 0

    @property
    def nr_segments(self) -> int:
        return len(self.segments)

    def is_destination_range(self, start: int, end: int) -> bool:
        """``kimage_is_destination_range``"""
        return any(s.overlaps(start, end) for s in self.segments)

    def segment_named(self, name: str) -> KexecSegment:
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(name)


def kimage_find_elfcorehdr(image: Kimage, mem: MemoryReader) -> int:
    """The segment whose memory starts with the ELF magic, the last one if several
    (``crash_handle_hotplug_event`` when ``elfcorehdr_index < 0``); -1 if none."""
    found = -1
    for i, s in enumerate(image.segments):
        if mem.read(s.mem, 4) == ELFMAG:
            found = i
    return found
