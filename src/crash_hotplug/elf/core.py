"""Reading an ELF core: a raw kdump elfcorehdr (offsets are physical addresses) or a vmcore.

Bounded and lazy in the manner of pyelftools: the ELF header and program headers are checked
against the buffer's length before anything is decoded; notes are decoded when asked for. Every
failure is an :class:`ElfFormatError` carrying the offset and what was wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from crash_hotplug.elf.constants import (
    ELFCLASS64,
    ELFDATA2LSB,
    ELFMAG,
    ET_CORE,
    EV_CURRENT,
    PT_LOAD,
    PT_NOTE,
)
from crash_hotplug.elf.notes import Note, iter_notes
from crash_hotplug.elf.structs import Elf64_Ehdr, Elf64_Phdr
from crash_hotplug.errors import ElfFormatError, InputFileError
from crash_hotplug.fileio import file_size, open_regular, read_at

__all__ = ["MAX_NOTES_BYTES", "ElfCore", "pt_load_problems", "read_core_file"]

#: the most PT_NOTE bytes :func:`read_core_file` reads from a vmcore: 8192 CPUs' NT_PRSTATUS
#: (336 bytes each) and VMCOREINFO come to about 3 MiB
MAX_NOTES_BYTES = 16 << 20


@dataclass(frozen=True)
class ElfCore:
    """A parsed ELF64 core header and its program headers over the bytes they came from."""

    data: bytes
    ehdr: Elf64_Ehdr
    phdrs: tuple[Elf64_Phdr, ...]
    source: str = "<bytes>"
    #: size of the file the header came from when only its head was read (None: ``len(data)``)
    file_size: int | None = None

    @property
    def size(self) -> int:
        """Bytes in the file (or buffer) the header came from."""
        return len(self.data) if self.file_size is None else self.file_size

    @classmethod
    def parse(cls, data: bytes, source: str = "<bytes>") -> ElfCore:
        """Check and decode the header, as ``fs/proc/vmcore.c: parse_crash_elf64_headers`` does."""
        try:
            return cls._parse(data, source)
        except ElfFormatError as e:
            raise e.with_source(source) from None

    @classmethod
    def _parse(cls, data: bytes, source: str) -> ElfCore:
        if len(data) < 4 or data[:4] != ELFMAG:
            raise ElfFormatError("not an ELF file (no \\x7fELF magic)", offset=0)
        ehdr = Elf64_Ehdr.unpack(data, 0)
        if ehdr.ei_class != ELFCLASS64:
            raise ElfFormatError(f"EI_CLASS is {ehdr.ei_class}, expected ELFCLASS64 (2)", offset=4)
        if ehdr.ei_data != ELFDATA2LSB:
            raise ElfFormatError(f"EI_DATA is {ehdr.ei_data}, expected ELFDATA2LSB (1)", offset=5)
        if ehdr.ei_version != EV_CURRENT or ehdr.e_version != EV_CURRENT:
            raise ElfFormatError("ELF version is not EV_CURRENT", offset=6)
        if ehdr.e_type != ET_CORE:
            raise ElfFormatError(f"e_type is {ehdr.e_type}, expected ET_CORE (4)", offset=16)
        if ehdr.e_ehsize != Elf64_Ehdr.SIZE:
            raise ElfFormatError(f"e_ehsize is {ehdr.e_ehsize}, expected 64", offset=52)
        if ehdr.e_phentsize != Elf64_Phdr.SIZE:
            raise ElfFormatError(f"e_phentsize is {ehdr.e_phentsize}, expected 56", offset=54)
        if ehdr.e_phnum == 0:
            raise ElfFormatError("e_phnum is 0: no program headers", offset=56)
        end = ehdr.e_phoff + ehdr.e_phnum * Elf64_Phdr.SIZE
        if ehdr.e_phoff < Elf64_Ehdr.SIZE or end > len(data):
            raise ElfFormatError(
                f"e_phnum {ehdr.e_phnum} program headers at e_phoff {ehdr.e_phoff:#x} end at {end:#x}, "
                f"past the end of the data ({len(data):#x} bytes)",
                offset=56,
            )
        phdrs = tuple(
            Elf64_Phdr.unpack(data, ehdr.e_phoff + i * Elf64_Phdr.SIZE) for i in range(ehdr.e_phnum)
        )
        return cls(data, ehdr, phdrs, source)

    @property
    def used_size(self) -> int:
        """Bytes the header occupies: ``e_phoff + e_phnum * 56``."""
        return self.ehdr.e_phoff + self.ehdr.e_phnum * Elf64_Phdr.SIZE

    @property
    def notes_phdrs(self) -> list[Elf64_Phdr]:
        return [p for p in self.phdrs if p.p_type == PT_NOTE]

    @property
    def load_phdrs(self) -> list[Elf64_Phdr]:
        return [p for p in self.phdrs if p.p_type == PT_LOAD]

    @property
    def is_raw_elfcorehdr(self) -> bool:
        """True for a header as the crashed kernel builds it: every p_offset is the physical address.

        In a vmcore (``/proc/vmcore`` or a saved dump) p_offset is a file offset and there is one
        merged PT_NOTE whose p_paddr is 0. A header kexec-tools wrote for ``kexec_load`` points one
        PT_LOAD, the low memory purgatory backs up (``[0, 640K)`` on x86, ``[0, 64K)`` on ppc64), at
        the backup copy; its notes still sit at their physical addresses.
        """
        notes = self.notes_phdrs
        if notes and all(p.p_offset == p.p_paddr != 0 for p in notes):
            return sum(p.p_offset != p.p_paddr for p in self.load_phdrs) <= 1
        return all(p.p_offset == p.p_paddr for p in self.phdrs)

    def notes(self) -> Iterator[tuple[int, Note]]:
        """(index of the PT_NOTE, note) for each note whose data lies inside :attr:`data`.

        Only meaningful for a vmcore, where p_offset is a file offset.
        """
        for i, p in enumerate(self.phdrs):
            if p.p_type != PT_NOTE:
                continue
            if p.p_offset + p.p_filesz > len(self.data):
                raise ElfFormatError(
                    f"PT_NOTE {i} data [{p.p_offset:#x}, {p.p_offset + p.p_filesz:#x}) lies past the end "
                    f"of the file ({len(self.data):#x} bytes)",
                    offset=p.p_offset,
                    source=self.source,
                )
            try:
                for note in iter_notes(self.data, p.p_offset, p.p_filesz):
                    yield i, note
            except ElfFormatError as e:
                raise e.with_source(self.source) from None


def read_core_file(path: Path) -> ElfCore:
    """Parse the ELF core at ``path`` reading by offset: the ELF header, the program headers and,
    for a vmcore, its notes; never the memory data, so memory use is independent of the file's size.

    A missing, unreadable or non-regular file (a FIFO, device, directory) is an
    :class:`ElfFormatError` too.
    """
    source = str(path)
    try:
        with open_regular(path) as f:
            size = file_size(f)
            head = f.read(Elf64_Ehdr.SIZE)
            if len(head) < Elf64_Ehdr.SIZE or head[:4] != ELFMAG:
                return ElfCore.parse(head, source)  # raises, naming what is wrong
            ehdr = Elf64_Ehdr.unpack(head, 0)
            phend = ehdr.e_phoff + ehdr.e_phnum * Elf64_Phdr.SIZE
            if phend > size:
                raise ElfFormatError(
                    f"e_phnum {ehdr.e_phnum} program headers at e_phoff {ehdr.e_phoff:#x} end at {phend:#x}, "
                    f"past the end of the file ({size:#x} bytes)",
                    offset=56, source=source,
                )
            head = read_at(f, 0, max(phend, Elf64_Ehdr.SIZE), source=source, what="program headers")
            core = ElfCore.parse(head, source)
            if core.is_raw_elfcorehdr:
                return ElfCore(head, core.ehdr, core.phdrs, source, size)
            note_end = max((p.p_offset + p.p_filesz for p in core.notes_phdrs), default=phend)
            if note_end > size or note_end - phend > MAX_NOTES_BYTES:
                # notes() names the bad PT_NOTE against the bytes read when it is asked for
                return ElfCore(head, core.ehdr, core.phdrs, source, size)
            data = read_at(f, 0, max(note_end, len(head)), source=source, what="notes")
            return ElfCore(data, core.ehdr, core.phdrs, source, size)
    except InputFileError as e:
        raise ElfFormatError(e.what, offset=0, source=source) from None


def pt_load_problems(loads: Iterable[tuple[int, int, int]], *, limit: int = 8) -> list[str]:
    """What no kernel writes in the memory PT_LOADs of a header or vmcore, one line each.

    ``loads`` are ``(program header index, p_paddr, p_memsz)`` of the RAM ranges, without the
    kernel-text mapping (which aliases RAM by design). ``crash_prepare_elf64_headers`` writes one
    PT_LOAD per System RAM range in ascending address order, and System RAM ranges never overlap
    (``kernel/resource.c``), so a PT_LOAD that overlaps another, starts below the one before it or
    is empty cannot come from a kernel. At most ``limit`` lines, then a count of the rest.
    """
    items = sorted(loads)
    out: list[str] = []
    prev: tuple[int, int, int] | None = None
    for i, start, size in items:
        if size == 0:
            out.append(f"PT_LOAD {i} at {start:#x} has p_memsz 0: a kernel writes no empty range")
        elif start + size > 1 << 64:
            out.append(f"PT_LOAD {i} [{start:#x}, +{size:#x}) runs past the 64-bit address space")
        if prev is not None and start < prev[1]:
            out.append(f"PT_LOAD {i} at {start:#x} comes after PT_LOAD {prev[0]} at {prev[1]:#x}: "
                       "not in ascending address order as a kernel writes them")
        prev = (i, start, size)
    by_start = sorted(items, key=lambda t: (t[1], t[0]))
    reach: tuple[int, int, int] | None = None  # the range reaching furthest so far
    for i, start, size in by_start:
        if size == 0:
            continue
        if reach is not None and start < reach[1] + reach[2]:
            j, rs, rz = reach
            out.append(f"PT_LOAD {i} [{start:#x}-{start + size - 1:#x}] overlaps PT_LOAD {j} "
                       f"[{rs:#x}-{rs + rz - 1:#x}]: a kernel's RAM ranges never overlap")
        if reach is None or start + size > reach[1] + reach[2]:
            reach = (i, start, size)
    if len(out) > limit:
        out[limit:] = [f"and {len(out) - limit} more PT_LOAD layout problems"]
    return out
