"""The capture kernel's ``/proc/vmcore`` (``fs/proc/vmcore.c``), and reading a saved vmcore back.

The capture side mirrors ``parse_crash_elf64_headers``: read the elfcorehdr at the ``elfcorehdr=``
address out of the crashed machine's memory, check it, merge every PT_NOTE into one
(``merge_note_headers_elf64``) and give each PT_LOAD a file offset (``process_ptload_program_headers_elf64``).
The result, :class:`Vmcore`, presents the file as ``read_vmcore`` does: the page-rounded header
buffer, the page-rounded note buffer, then each PT_LOAD's page-rounded physical window.

The reading side, :class:`VmcoreFile`, opens a vmcore (whole, or cut after its notes like a
``vmcore-headers.bin``) and gives its CPUs' NT_PRSTATUS, VMCOREINFO and PT_LOAD ranges, reading
only the bytes it is asked for.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from crash_hotplug.elf.constants import (
    ELFCLASS64,
    ELFMAG,
    EM_X86_64,
    ET_CORE,
    EV_CURRENT,
    NT_PRSTATUS,
    PT_LOAD,
    PT_NOTE,
)
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.elf.notes import pad4
from crash_hotplug.elf.prstatus import ElfPrstatus
from crash_hotplug.elf.structs import EHDR, NHDR, PHDR, Elf64_Ehdr, Elf64_Phdr
from crash_hotplug.elf.vmcoreinfo import VMCOREINFO_NOTE_NAME, parse_vmcoreinfo
from crash_hotplug.errors import CrashHotplugError, ElfFormatError, InputFileError
from crash_hotplug.fileio import open_regular
from crash_hotplug.machine.kernel import START_KERNEL_MAP, KernelVersion
from crash_hotplug.machine.physmem import PAGE_SIZE, MemoryReader

__all__ = [
    "ElfcorehdrNotSane",
    "LoadSegment",
    "PrstatusNote",
    "Vmcore",
    "VmcoreFile",
    "VmcoreNotInitialized",
    "VmcoreRange",
    "merge_note_headers_elf64",
    "note_p_align",
    "parse_crash_elf64_headers",
    "parse_elfcorehdr_param",
    "process_ptload_program_headers_elf64",
    "read_vmcore_file",
    "update_note_header_size_elf64",
    "write_vmcore",
]

_U64: Final = (1 << 64) - 1
#: "coredump, vmcore: Set p_align to 4 for PT_NOTE" (Linux 6.5); before it the merged PT_NOTE had 0
_NOTE_ALIGN_4_SINCE: Final = KernelVersion(6, 5)
#: a vmcore's notes are a few KiB per CPU; refuse to read a note segment larger than this
_MAX_NOTES_BYTES: Final = 64 << 20
#: ``disk_dump_header.signature`` of makedumpfile's compressed format
_KDUMP_SIGNATURE: Final = b"KDUMP   "


def _roundup(n: int, to: int = PAGE_SIZE) -> int:
    return -(-n // to) * to


def _rounddown(n: int, to: int = PAGE_SIZE) -> int:
    return n // to * to


def note_p_align(version: KernelVersion | None) -> int:
    """``p_align`` of the merged PT_NOTE: 4 from Linux 6.5 on (and when the version is unknown), 0 before."""
    return 4 if version is None or version >= _NOTE_ALIGN_4_SINCE else 0


def parse_elfcorehdr_param(cmdline: str) -> int:
    """The address in a capture kernel's ``elfcorehdr=[size[KMG]@]offset[KMG]`` (``setup_elfcorehdr``).

    Raises ``ValueError`` when the command line has no usable ``elfcorehdr=``.
    """
    m = re.search(r"(?:^|\s)elfcorehdr=(\S+)", cmdline)
    if not m:
        raise ValueError("no elfcorehdr= on the command line")
    value = m.group(1).rpartition("@")[2]
    v = re.fullmatch(r"(0[xX][0-9a-fA-F]+|\d+)([KMGkmg]?)", value)
    if not v:
        raise ValueError(f"elfcorehdr={m.group(1)}: not an address")
    shift = {"": 0, "k": 10, "m": 20, "g": 30}[v.group(2).lower()]
    return int(v.group(1), 0) << shift


class ElfcorehdrNotSane(ElfFormatError):
    """The check in ``parse_crash_elf64_headers`` failed ("Core image elf header is not sane")."""


class VmcoreNotInitialized(CrashHotplugError):
    """``vmcore_init`` gave up ("vmcore: not initialized"): no ``/proc/vmcore`` in the capture kernel."""


@dataclass(frozen=True, slots=True)
class VmcoreRange:
    """``struct vmcore_range``: a page-rounded physical window and where it sits in the file."""

    paddr: int
    size: int
    offset: int


@dataclass(frozen=True)
class Vmcore:
    """``/proc/vmcore`` as ``vmcore_init`` leaves it.

    ``elfcorebuf`` is the merged header, page-rounded (``elfcorebuf_sz``); ``elfnotes_buf`` the merged
    notes, page-rounded (``elfnotes_sz``), of which the first ``elfnotes_orig_sz`` bytes are notes;
    ``vmcore_list`` the memory windows in file order. ``warnings`` are the kernel's ``pr_warn`` lines.
    """

    elfcorebuf: bytes
    elfnotes_buf: bytes
    elfnotes_orig_sz: int
    vmcore_list: tuple[VmcoreRange, ...]
    warnings: tuple[str, ...] = ()

    @property
    def vmcore_size(self) -> int:
        """``get_vmcore_size``: what ``ls -l /proc/vmcore`` shows."""
        return len(self.elfcorebuf) + len(self.elfnotes_buf) + sum(m.size for m in self.vmcore_list)

    @property
    def core(self) -> ElfCore:
        """The merged ELF header and program headers."""
        return ElfCore.parse(self.elfcorebuf, "/proc/vmcore")

    def headers_and_notes(self) -> bytes:
        """The file up to the end of the PT_NOTE data (what a ``vmcore-headers.bin`` holds)."""
        return self.elfcorebuf + self.elfnotes_buf[: self.elfnotes_orig_sz]

    def read(self, mem: MemoryReader, pos: int, count: int) -> bytes:
        """``count`` bytes of the file from offset ``pos`` (``__read_vmcore``); short at the end of the file."""
        out = bytearray()
        count = max(0, min(count, self.vmcore_size - pos))
        head = self.elfcorebuf + self.elfnotes_buf
        if pos < len(head) and count:
            piece = head[pos : pos + count]
            out += piece
            pos += len(piece)
            count -= len(piece)
        for m in self.vmcore_list:
            if not count:
                break
            if pos < m.offset + m.size:
                n = min(m.offset + m.size - pos, count)
                out += mem.read(m.paddr + pos - m.offset, n)
                pos += n
                count -= n
        return bytes(out)

    def iter_chunks(self, mem: MemoryReader, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The whole file in order, in pieces of at most ``chunk_size`` bytes (``read_vmcore``)."""
        yield self.elfcorebuf
        yield self.elfnotes_buf
        for m in self.vmcore_list:
            pos, end = m.paddr, m.paddr + m.size
            while pos < end:
                n = min(chunk_size, end - pos)
                yield mem.read(pos, n)
                pos += n


def _check_sane(ehdr: Elf64_Ehdr) -> None:
    checks = (
        (ehdr.e_ident[:4] == ELFMAG, 0, "no \\x7fELF magic"),
        (ehdr.e_type == ET_CORE, 16, f"e_type is {ehdr.e_type}, not ET_CORE (4)"),
        (ehdr.e_machine == EM_X86_64, 18, f"e_machine is {ehdr.e_machine}, not EM_X86_64 (62)"),
        (ehdr.ei_class == ELFCLASS64, 4, f"EI_CLASS is {ehdr.ei_class}, not ELFCLASS64 (2)"),
        (ehdr.ei_version == EV_CURRENT, 6, f"EI_VERSION is {ehdr.ei_version}, not EV_CURRENT (1)"),
        (ehdr.e_version == EV_CURRENT, 20, f"e_version is {ehdr.e_version}, not EV_CURRENT (1)"),
        (ehdr.e_ehsize == Elf64_Ehdr.SIZE, 52, f"e_ehsize is {ehdr.e_ehsize}, not 64"),
        (ehdr.e_phentsize == Elf64_Phdr.SIZE, 54, f"e_phentsize is {ehdr.e_phentsize}, not 56"),
        (ehdr.e_phnum != 0, 56, "e_phnum is 0"),
    )
    for ok, offset, what in checks:
        if not ok:
            raise ElfcorehdrNotSane(f"Core image elf header is not sane: {what}", offset=offset, source="elfcorehdr")


def _phdrs(buf: bytearray, p_type: int) -> list[tuple[int, Elf64_Phdr]]:
    """(offset, program header) of every header of ``p_type`` in a header buffer."""
    view = bytes(buf)
    phnum = EHDR.unpack_from(view)[10]
    out = []
    for i in range(phnum):
        off = Elf64_Ehdr.SIZE + i * Elf64_Phdr.SIZE
        ph = Elf64_Phdr.unpack(view, off)
        if ph.p_type == p_type:
            out.append((off, ph))
    return out


def update_note_header_size_elf64(buf: bytearray, mem: MemoryReader) -> list[str]:
    """Set each PT_NOTE's ``p_memsz`` to the size of the notes really in it (``update_note_header_size_elf64``).

    Reads ``p_memsz`` bytes at ``p_offset`` and walks the records while ``n_namesz`` is not 0; a
    record that would pass ``p_memsz`` is dropped, and so is everything after it. Returns the
    warnings the kernel prints.
    """
    warnings: list[str] = []
    for off, ph in _phdrs(buf, PT_NOTE):
        max_sz = ph.p_memsz
        notes = mem.read(ph.p_offset, max_sz)
        real_sz = 0
        # The kernel has no bound here (a section without a zero header reads on); we stop at its end.
        while real_sz + NHDR.size <= max_sz:
            namesz, descsz, _ = NHDR.unpack_from(notes, real_sz)
            if namesz == 0:
                break
            sz = NHDR.size + pad4(namesz) + pad4(descsz)
            if real_sz + sz > max_sz:
                warnings.append(
                    f"Warning: Exceeded p_memsz, dropping PT_NOTE entry n_namesz={namesz:#x}, n_descsz={descsz:#x}"
                )
                break
            real_sz += sz
        PHDR.pack_into(buf, off, *ph.as_tuple()[:6], real_sz, ph.p_align)
        if real_sz == 0:
            warnings.append("Warning: Zero PT_NOTE entries found")
    return warnings


def merge_note_headers_elf64(
    buf: bytearray, elfsz: int, mem: MemoryReader, *, p_align: int = 4
) -> tuple[int, bytes, int, list[str]]:
    """Merge every PT_NOTE into one, placed first (``merge_note_headers_elf64``).

    ``buf`` holds the ELF header and program headers (``elfsz`` bytes used) and is rewritten in
    place. Returns ``(elfcorebuf_sz, elfnotes_buf, elfnotes_orig_sz, warnings)``: the page-rounded
    header size, the page-rounded note buffer and the size of the notes in it. With no note data at
    all the kernel's zero-sized ``vmcore_alloc_buf`` fails: :class:`VmcoreNotInitialized`.
    """
    warnings = update_note_header_size_elf64(buf, mem)
    view = bytes(buf)
    phnum = EHDR.unpack_from(view)[10]
    phdrs = [Elf64_Phdr.unpack(view, Elf64_Ehdr.SIZE + i * Elf64_Phdr.SIZE) for i in range(phnum)]
    notes = [p for p in phdrs if p.p_type == PT_NOTE]
    nr_ptnote = len(notes)
    phdr_sz = sum(p.p_memsz for p in notes)
    if phdr_sz == 0:
        raise VmcoreNotInitialized(
            f"not initialized: {nr_ptnote} PT_NOTE headers hold no note (vmcore_alloc_buf(0) fails with -ENOMEM)"
        )
    # copy_notes_elf64: the real note bytes of every PT_NOTE, in program-header order
    notes_buf = b"".join(mem.read(p.p_offset, p.p_memsz) for p in notes)
    notes_buf += bytes(_roundup(phdr_sz) - len(notes_buf))

    note_off = Elf64_Ehdr.SIZE + (phnum - nr_ptnote + 1) * Elf64_Phdr.SIZE
    merged = Elf64_Phdr(PT_NOTE, 0, _roundup(note_off), 0, 0, phdr_sz, phdr_sz, p_align)
    tmp = Elf64_Ehdr.SIZE
    buf[tmp : tmp + Elf64_Phdr.SIZE] = merged.pack()
    tmp += Elf64_Phdr.SIZE
    # Drop the other PT_NOTE headers by sliding what follows down over them (the kernel's memmove
    # assumes the notes come first, as every header builder puts them).
    shift = (nr_ptnote - 1) * Elf64_Phdr.SIZE
    elfsz -= shift
    count = elfsz - Elf64_Ehdr.SIZE - Elf64_Phdr.SIZE
    buf[tmp : tmp + count] = buf[tmp + shift : tmp + shift + count]
    buf[elfsz : elfsz + shift] = bytes(shift)
    elfsz = _roundup(elfsz)
    ehdr = list(EHDR.unpack_from(buf))
    ehdr[10] = phnum - nr_ptnote + 1
    EHDR.pack_into(buf, 0, *ehdr)
    return elfsz, notes_buf, phdr_sz, warnings


def process_ptload_program_headers_elf64(buf: bytearray, elfsz: int, elfnotes_sz: int) -> list[VmcoreRange]:
    """Give each PT_LOAD its file offset and list its page-rounded window (``process_ptload_program_headers_elf64``)."""
    ranges: list[VmcoreRange] = []
    vmcore_off = elfsz + elfnotes_sz
    for off, ph in _phdrs(buf, PT_LOAD):
        paddr = ph.p_offset
        start = _rounddown(paddr)
        end = _roundup(paddr + ph.p_memsz)
        size = end - start
        ranges.append(VmcoreRange(start, size, vmcore_off))
        new = Elf64_Phdr(ph.p_type, ph.p_flags, (vmcore_off + paddr - start) & _U64, ph.p_vaddr, ph.p_paddr,
                         ph.p_filesz, ph.p_memsz, ph.p_align)
        buf[off : off + Elf64_Phdr.SIZE] = new.pack()
        vmcore_off += size
    return ranges


def parse_crash_elf64_headers(
    mem: MemoryReader, elfcorehdr_addr: int, *, kernel_version: KernelVersion | None = None
) -> Vmcore:
    """``/proc/vmcore`` of the crashed machine whose memory is ``mem`` (``parse_crash_elf64_headers``).

    ``kernel_version`` is the capture kernel's (it decides the merged PT_NOTE's ``p_align``).
    Raises :class:`ElfcorehdrNotSane` when the header fails the kernel's check.
    """
    ehdr = Elf64_Ehdr.unpack(mem.read(elfcorehdr_addr, Elf64_Ehdr.SIZE))
    _check_sane(ehdr)
    elfsz = Elf64_Ehdr.SIZE + ehdr.e_phnum * Elf64_Phdr.SIZE
    buf = bytearray(mem.read(elfcorehdr_addr, elfsz))
    buf.extend(bytes(_roundup(elfsz) - elfsz))
    elfsz, notes_buf, notes_sz, warnings = merge_note_headers_elf64(
        buf, elfsz, mem, p_align=note_p_align(kernel_version)
    )
    ranges = process_ptload_program_headers_elf64(buf, elfsz, len(notes_buf))
    return Vmcore(bytes(buf[:elfsz]), notes_buf, notes_sz, tuple(ranges), tuple(warnings))


def write_vmcore(vmcore: Vmcore, mem: MemoryReader, out: BinaryIO | Path, *, chunk_size: int = 1 << 20) -> int:
    """Write the whole ``/proc/vmcore`` to ``out`` piece by piece; returns the bytes written."""
    if isinstance(out, Path):
        with out.open("wb") as f:
            return write_vmcore(vmcore, mem, f, chunk_size=chunk_size)
    total = 0
    for chunk in vmcore.iter_chunks(mem, chunk_size):
        out.write(chunk)
        total += len(chunk)
    return total


# ---------------------------------------------------------------------------------------------
# Reading a saved vmcore


@dataclass(frozen=True, slots=True)
class LoadSegment:
    """One PT_LOAD of a vmcore: ``[paddr, paddr + size)`` mapped at ``vaddr``; the first ``filesz``
    bytes are in the file at ``offset`` (``/proc/vmcore`` has all of them; a filtered dump may not)."""

    index: int
    paddr: int
    vaddr: int
    size: int
    offset: int
    filesz: int

    @property
    def end(self) -> int:
        """Last physical address (inclusive)."""
        return self.paddr + self.size - 1

    @property
    def is_kernel_text(self) -> bool:
        """The kernel-text mapping (``_text`` at ``__START_KERNEL_map`` and up), not a RAM range."""
        return self.vaddr >= START_KERNEL_MAP


@dataclass(frozen=True, slots=True)
class PrstatusNote:
    """One NT_PRSTATUS note: its position among the CPU notes and the saved ``elf_prstatus``."""

    index: int
    prstatus: ElfPrstatus
    desc: bytes

    @property
    def pr_pid(self) -> int:
        return self.prstatus.pr_pid


#: VMCOREINFO keys a report shows
VMCOREINFO_KEYS: Final = ("OSRELEASE", "BUILD-ID", "PAGESIZE", "KERNELOFFSET", "NUMBER(phys_base)", "CRASHTIME")


@dataclass(frozen=True)
class VmcoreFile:
    """A vmcore on disk: merged notes, PT_LOADs, and a bounded reader of its memory data."""

    path: Path
    core: ElfCore
    file_size: int
    prstatus: tuple[PrstatusNote, ...]
    vmcoreinfo: dict[str, str] = field(default_factory=dict)
    #: reads file bytes (offset, size) when the vmcore is not on disk but presented from memory
    reader: Callable[[int, int], bytes] | None = None

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> VmcoreFile:
        """A vmcore (or its headers and notes) already in memory."""
        vf = _decode(Path(source), data, len(data))
        return dataclasses.replace(vf, reader=lambda pos, size: data[pos : pos + size])

    @classmethod
    def from_vmcore(cls, vmcore: Vmcore, mem: MemoryReader, name: str = "/proc/vmcore") -> VmcoreFile:
        """The vmcore as the capture kernel presents it, read on demand from the crashed machine's
        memory instead of from a file (no multi-gigabyte copy)."""
        vf = _decode(Path(name), vmcore.headers_and_notes(), vmcore.vmcore_size)
        return dataclasses.replace(vf, reader=lambda pos, size: vmcore.read(mem, pos, size))

    @property
    def loads(self) -> list[LoadSegment]:
        return [
            LoadSegment(i, p.p_paddr, p.p_vaddr, p.p_memsz, p.p_offset, min(p.p_filesz, p.p_memsz))
            for i, p in enumerate(self.core.phdrs)
            if p.p_type == PT_LOAD
        ]

    @property
    def kernel_text(self) -> LoadSegment | None:
        return next((s for s in self.loads if s.is_kernel_text), None)

    @property
    def ram_loads(self) -> list[LoadSegment]:
        return [s for s in self.loads if not s.is_kernel_text]

    @property
    def data_start(self) -> int:
        """File offset where memory data begins (the first PT_LOAD's window)."""
        return min((_rounddown(s.offset) for s in self.loads if s.filesz), default=self.file_size)

    @property
    def data_end(self) -> int:
        """File size a complete vmcore has: the end of the last PT_LOAD's data."""
        return max((s.offset + s.filesz for s in self.loads), default=self.file_size)

    @property
    def has_data(self) -> bool:
        """True when every PT_LOAD's bytes are in the file."""
        return self.file_size >= self.data_end

    @property
    def headers_only(self) -> bool:
        """True for a file cut before any memory data (like ``vmcore-headers.bin``)."""
        return self.file_size <= self.data_start

    def key_vmcoreinfo(self) -> dict[str, str]:
        return {k: self.vmcoreinfo[k] for k in VMCOREINFO_KEYS if k in self.vmcoreinfo}

    def segment_for(self, paddr: int, size: int = 1) -> LoadSegment | None:
        """The RAM PT_LOAD whose file data holds ``[paddr, paddr + size)`` (the kernel-text one as a fallback)."""
        for seg in sorted(self.loads, key=lambda s: s.is_kernel_text):
            if seg.paddr <= paddr and paddr + size <= seg.paddr + seg.filesz:
                return seg
        return None

    def read_phys(self, paddr: int, size: int) -> bytes | None:
        """Bytes of physical memory from the file, or None when no PT_LOAD holds them or the file is short."""
        seg = self.segment_for(paddr, size)
        if seg is None:
            return None
        off = seg.offset + (paddr - seg.paddr)
        if off + size > self.file_size:
            return None
        if self.reader is not None:
            data = self.reader(off, size)
            return data if len(data) == size else None
        try:
            f = open_regular(self.path)
        except InputFileError:
            return None
        with f:
            f.seek(off)
            data = f.read(size)
        return data if len(data) == size else None


def _read_head(f: BinaryIO, source: str) -> bytes:
    head = f.read(Elf64_Ehdr.SIZE)
    if len(head) < Elf64_Ehdr.SIZE:
        raise ElfFormatError(
            f"truncated: {len(head)} bytes, an ELF header needs {Elf64_Ehdr.SIZE}", offset=0, source=source
        )
    if head.startswith(_KDUMP_SIGNATURE):
        raise ElfFormatError("a makedumpfile kdump-compressed file, not ELF (convert it with makedumpfile -E)",
                             offset=0, source=source)
    if head[:4] != ELFMAG:
        raise ElfFormatError("not an ELF file (no \\x7fELF magic)", offset=0, source=source)
    ehdr = Elf64_Ehdr.unpack(head)
    phend = ehdr.e_phoff + ehdr.e_phnum * Elf64_Phdr.SIZE
    f.seek(0)
    head = f.read(max(phend, Elf64_Ehdr.SIZE))
    core = ElfCore.parse(head, source)  # checks the header and that the program headers fit
    if len(core.notes_phdrs) > 1 or core.is_raw_elfcorehdr:
        raise ElfFormatError(
            f"{len(core.notes_phdrs)} PT_NOTE headers whose offsets are physical addresses: this is a raw "
            "elfcorehdr (what the crashed kernel keeps), not a vmcore",
            offset=Elf64_Ehdr.SIZE, source=source,
        )
    note_end = max((p.p_offset + p.p_filesz for p in core.notes_phdrs), default=0)
    if note_end - phend > _MAX_NOTES_BYTES:
        raise ElfFormatError(f"PT_NOTE data ends at {note_end:#x}: too large for a vmcore's notes",
                             offset=phend, source=source)
    if note_end > len(head):
        f.seek(0)
        head = f.read(note_end)
    return head


def read_vmcore_file(path: Path) -> VmcoreFile:
    """Open a vmcore (whole, or cut after its notes) and decode its notes.

    Raises :class:`ElfFormatError` naming the file on a truncated or inconsistent file.
    """
    source = str(path)
    try:
        with open_regular(path) as f:
            head = _read_head(f, source)
            size = f.seek(0, 2)
    except InputFileError as e:
        raise ElfFormatError(e.what, offset=0, source=source) from None
    except OSError as e:
        raise ElfFormatError(f"cannot read: {e.strerror}", offset=0, source=source) from None
    return _decode(path, head, size)


def _decode(path: Path, head: bytes, size: int) -> VmcoreFile:
    source = str(path)
    core = ElfCore.parse(head, source)
    if core.ehdr.e_machine != EM_X86_64:
        raise ElfFormatError(f"e_machine is {core.ehdr.e_machine}: only x86_64 (62) cores are read",
                             offset=18, source=source)
    prstatus: list[PrstatusNote] = []
    vmcoreinfo: dict[str, str] = {}
    for _, note in core.notes():
        if note.name == "CORE" and note.n_type == NT_PRSTATUS:
            try:
                ps = ElfPrstatus.unpack(note.desc)
            except ElfFormatError as e:
                raise ElfFormatError(e.what, offset=note.offset, source=source) from None
            prstatus.append(PrstatusNote(len(prstatus), ps, note.desc))
        elif note.name == VMCOREINFO_NOTE_NAME:
            vmcoreinfo = parse_vmcoreinfo(note.desc)
    return VmcoreFile(path, core, size, tuple(prstatus), vmcoreinfo)
