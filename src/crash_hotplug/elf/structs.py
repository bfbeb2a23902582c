"""One declaration per on-disk structure, shared by the writer and the reader.

``Elf64_Ehdr``, ``Elf64_Phdr`` and ``Elf64_Nhdr`` from ``include/uapi/linux/elf.h``, little-endian
(kdump cores on x86_64 are ELFDATA2LSB). Each class knows its ``struct`` layout, packs itself and
unpacks from a buffer at an offset with a bounds check that names the offset on failure.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from crash_hotplug.elf.constants import (
    EI_NIDENT,
    ELFCLASS64,
    ELFDATA2LSB,
    ELFMAG,
    ELFOSABI_NONE,
    EM_X86_64,
    ET_CORE,
    EV_CURRENT,
)
from crash_hotplug.errors import ElfFormatError

__all__ = ["EHDR", "NHDR", "PHDR", "Elf64_Ehdr", "Elf64_Nhdr", "Elf64_Phdr", "unpack_at"]

#: Elf64_Ehdr: e_ident[16], e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags,
#: e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
#: Elf64_Phdr: p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
PHDR = struct.Struct("<IIQQQQQQ")
#: Elf64_Nhdr: n_namesz, n_descsz, n_type
NHDR = struct.Struct("<III")


def unpack_at(layout: struct.Struct, buf: bytes | memoryview, offset: int, what: str) -> tuple[int, ...]:
    """Unpack ``layout`` at ``offset``; raise :class:`ElfFormatError` if ``buf`` is too short."""
    if offset < 0 or offset + layout.size > len(buf):
        raise ElfFormatError(
            f"{what} needs {layout.size} bytes but only {max(0, len(buf) - offset)} remain",
            offset=offset,
        )
    return layout.unpack_from(buf, offset)


@dataclass(frozen=True, slots=True)
class Elf64_Ehdr:
    """``Elf64_Ehdr`` (64 bytes)."""

    e_ident: bytes
    e_type: int
    e_machine: int
    e_version: int
    e_entry: int
    e_phoff: int
    e_shoff: int
    e_flags: int
    e_ehsize: int
    e_phentsize: int
    e_phnum: int
    e_shentsize: int
    e_shnum: int
    e_shstrndx: int

    SIZE: ClassVar[int] = EHDR.size

    @classmethod
    def core(cls, *, machine: int = EM_X86_64, phnum: int, osabi: int = ELFOSABI_NONE) -> Self:
        """The header of a kdump core: ET_CORE, ELFCLASS64, LSB, program headers right after it."""
        ident = ELFMAG + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT, osabi]) + bytes(EI_NIDENT - 8)
        return cls(ident, ET_CORE, machine, EV_CURRENT, 0, EHDR.size, 0, 0, EHDR.size, PHDR.size, phnum, 0, 0, 0)

    def pack(self) -> bytes:
        return EHDR.pack(
            self.e_ident, self.e_type, self.e_machine, self.e_version, self.e_entry, self.e_phoff,
            self.e_shoff, self.e_flags, self.e_ehsize, self.e_phentsize, self.e_phnum,
            self.e_shentsize, self.e_shnum, self.e_shstrndx,
        )

    @classmethod
    def unpack(cls, buf: bytes | memoryview, offset: int = 0) -> Self:
        return cls(*unpack_at(EHDR, buf, offset, "ELF header"))  # type: ignore[arg-type]

    @property
    def ei_class(self) -> int:
        return self.e_ident[4]

    @property
    def ei_data(self) -> int:
        return self.e_ident[5]

    @property
    def ei_version(self) -> int:
        return self.e_ident[6]

    @property
    def ei_osabi(self) -> int:
        return self.e_ident[7]


@dataclass(frozen=True, slots=True)
class Elf64_Phdr:
    """``Elf64_Phdr`` (56 bytes)."""

    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_align: int

    SIZE: ClassVar[int] = PHDR.size
    FIELDS: ClassVar[tuple[str, ...]] = (
        "p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_align",
    )

    def pack(self) -> bytes:
        return PHDR.pack(
            self.p_type, self.p_flags, self.p_offset, self.p_vaddr, self.p_paddr,
            self.p_filesz, self.p_memsz, self.p_align,
        )

    @classmethod
    def unpack(cls, buf: bytes | memoryview, offset: int) -> Self:
        return cls(*unpack_at(PHDR, buf, offset, "program header"))

    def as_tuple(self) -> tuple[int, ...]:
        return (
            self.p_type, self.p_flags, self.p_offset, self.p_vaddr, self.p_paddr,
            self.p_filesz, self.p_memsz, self.p_align,
        )


@dataclass(frozen=True, slots=True)
class Elf64_Nhdr:
    """``Elf64_Nhdr`` (12 bytes): name size (with NUL), descriptor size, type."""

    n_namesz: int
    n_descsz: int
    n_type: int

    SIZE: ClassVar[int] = NHDR.size

    def pack(self) -> bytes:
        return NHDR.pack(self.n_namesz, self.n_descsz, self.n_type)

    @classmethod
    def unpack(cls, buf: bytes | memoryview, offset: int) -> Self:
        return cls(*unpack_at(NHDR, buf, offset, "note header"))
