"""The VMCOREINFO note (``include/linux/vmcore_info.h``, ``kernel/vmcore_info.c``).

One page of ``KEY=value`` lines under note name ``VMCOREINFO`` (type 0). Its physical address and
size are what ``/sys/kernel/vmcoreinfo`` prints: ``"%pa %x"`` -- the size in hex without ``0x``.
"""

from __future__ import annotations

from typing import Final

from crash_hotplug.elf.notes import append_elf_note, final_note, note_size

__all__ = [
    "VMCOREINFO_BYTES",
    "VMCOREINFO_NOTE_NAME",
    "VMCOREINFO_NOTE_SIZE",
    "build_vmcoreinfo_note",
    "parse_vmcoreinfo",
]

VMCOREINFO_NOTE_NAME: Final = "VMCOREINFO"
VMCOREINFO_BYTES: Final = 4096
#: two note headers + the padded name + one page of text: 4132 with 4 KiB pages
VMCOREINFO_NOTE_SIZE: Final = note_size(VMCOREINFO_NOTE_NAME, VMCOREINFO_BYTES) + 12


def parse_vmcoreinfo(desc: bytes) -> dict[str, str]:
    """``KEY=value`` lines of a VMCOREINFO descriptor (stops at the first NUL)."""
    text = desc.split(b"\0", 1)[0].decode("ascii", errors="replace")
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def build_vmcoreinfo_note(items: dict[str, str]) -> bytes:
    """A VMCOREINFO note followed by the terminating header, as ``crash_save_vmcoreinfo`` leaves it."""
    text = "".join(f"{k}={v}\n" for k, v in items.items()).encode()
    if len(text) > VMCOREINFO_BYTES:
        raise ValueError(f"VMCOREINFO text of {len(text)} bytes exceeds one page")
    return append_elf_note(VMCOREINFO_NOTE_NAME, 0, text) + final_note()
