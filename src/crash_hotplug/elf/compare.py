"""Field-by-field comparison of two elfcorehdrs, for reports that name what differs."""

from __future__ import annotations

from crash_hotplug.elf.constants import PT_NAMES
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.elf.structs import EHDR, Elf64_Ehdr, Elf64_Phdr
from crash_hotplug.errors import ElfFormatError

__all__ = ["first_difference"]

_EHDR_FIELDS = (
    "e_ident", "e_type", "e_machine", "e_version", "e_entry", "e_phoff", "e_shoff", "e_flags",
    "e_ehsize", "e_phentsize", "e_phnum", "e_shentsize", "e_shnum", "e_shstrndx",
)


def _fmt(v: int | bytes) -> str:
    return v.hex() if isinstance(v, bytes) else f"{v:#x}"


def first_difference(expected: bytes, actual: bytes) -> str | None:
    """None when the two are byte-identical; otherwise a sentence naming the first difference:
    the ELF header field, or the program header (index, type) and field, or the size/padding."""
    if expected == actual:
        return None
    if len(expected) < EHDR.size or len(actual) < EHDR.size:
        return f"sizes differ: expected {len(expected)} bytes, got {len(actual)}"
    e_h, a_h = Elf64_Ehdr.unpack(expected), Elf64_Ehdr.unpack(actual)
    for name in _EHDR_FIELDS:
        ev, av = getattr(e_h, name), getattr(a_h, name)
        if ev != av:
            return f"ELF header {name}: expected {_fmt(ev)}, got {_fmt(av)}"
    try:
        e_core, a_core = ElfCore.parse(expected, "expected"), ElfCore.parse(actual, "actual")
    except ElfFormatError as err:
        return f"header unreadable: {err}"
    for i, (ep, ap) in enumerate(zip(e_core.phdrs, a_core.phdrs, strict=False)):
        for name in Elf64_Phdr.FIELDS:
            ev, av = getattr(ep, name), getattr(ap, name)
            if ev != av:
                kind = PT_NAMES.get(ep.p_type, str(ep.p_type))
                return f"program header {i} (PT_{kind}) {name}: expected {ev:#x}, got {av:#x}"
    if len(expected) != len(actual):
        return f"same headers, but sizes differ: expected {len(expected)} bytes, got {len(actual)}"
    pos = next(i for i, (x, y) in enumerate(zip(expected, actual, strict=True)) if x != y)
    return f"same headers, but the padding differs at offset {pos:#x}"
