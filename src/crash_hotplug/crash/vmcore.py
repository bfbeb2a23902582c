"""The capture kernel's ``/proc/vmcore`` (``fs/proc/vmcore.c``), and reading a saved vmcore back.

The capture side mirrors ``parse_crash_elf64_headers``: read the elfcorehdr at the ``elfcorehdr=``
address out of the crashed machine's memory, check it, merge every PT_NOTE into one
(``merge_note_headers_elf64``) and give each PT_LOAD a file offset (``process_ptload_program_headers_elf64``).
The result, :class:`Vmcore`, presents the file as ``read_vmcore`` does: the page-rounded header
buffer, the page-rounded note buffer, then each PT_LOAD's page-rounded physical window.

The reading side, :class:`VmcoreFile`, opens a vmcore in any format kdump writes -- ELF (whole, cut
after its notes like a ``vmcore-headers.bin``, or filtered by ``makedumpfile -E``), kdump-compressed,
flattened, from a file or a pipe -- and gives its CPUs' NT_PRSTATUS, VMCOREINFO and memory map,
reading only the bytes it is asked for.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from crash_hotplug.elf.constants import (
    ELFCLASS64,
    ELFMAG,
    EM_PPC64,
    EM_X86_64,
    ET_CORE,
    EV_CURRENT,
    NT_PRSTATUS,
    PT_LOAD,
    PT_NOTE,
)
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.elf.notes import Note, pad4
from crash_hotplug.elf.prstatus import ElfPrstatus
from crash_hotplug.elf.prstatus_ppc64 import ElfPrstatusPpc64
from crash_hotplug.elf.structs import EHDR, NHDR, PHDR, Elf64_Ehdr, Elf64_Phdr
from crash_hotplug.elf.vmcoreinfo import VMCOREINFO_NOTE_NAME, parse_vmcoreinfo
from crash_hotplug.errors import CrashHotplugError, DumpFormatError, ElfFormatError, InputFileError
from crash_hotplug.fileio import open_regular
from crash_hotplug.machine.kernel import START_KERNEL_MAP, KernelVersion
from crash_hotplug.machine.physmem import PAGE_SIZE, MemoryReader
from crash_hotplug.makedumpfile.diskdump import DISKDUMP_SIGNATURE, KDUMP_SIGNATURE
from crash_hotplug.makedumpfile.diskdump import FMT as KDUMP_FMT
from crash_hotplug.makedumpfile.flattened import MDF_HEADER, is_flattened, rearrange
from crash_hotplug.makedumpfile.kdump import KdumpCompressed, SplitDump

__all__ = [
    "ElfcorehdrNotSane",
    "LoadSegment",
    "PrstatusNote",
    "Vmcore",
    "VmcoreFile",
    "VmcoreNotInitialized",
    "VmcoreRange",
    "merge_note_headers_elf64",
    "merge_ranges",
    "note_p_align",
    "parse_crash_elf64_headers",
    "parse_elfcorehdr_param",
    "process_ptload_program_headers_elf64",
    "read_vmcore_file",
    "read_vmcore_files",
    "sniff_format",
    "subtract_ranges",
    "update_note_header_size_elf64",
    "write_vmcore",
]

_U64: Final = (1 << 64) - 1
#: "coredump, vmcore: Set p_align to 4 for PT_NOTE" (Linux 6.5); before it the merged PT_NOTE had 0
_NOTE_ALIGN_4_SINCE: Final = KernelVersion(6, 5)
#: a vmcore's notes are a few KiB per CPU; refuse to read a note segment larger than this
_MAX_NOTES_BYTES: Final = 64 << 20


def _roundup(n: int, to: int = PAGE_SIZE) -> int:
    return -(-n // to) * to


def _rounddown(n: int, to: int = PAGE_SIZE) -> int:
    return n // to * to


def note_p_align(version: KernelVersion | None) -> int:
    """``p_align`` of the merged PT_NOTE: 4 from Linux 6.5 on (and when the version is unknown), 0 before."""
    return 4 if version is None or version >= _NOTE_ALIGN_4_SINCE else 0


@functools.lru_cache(maxsize=64)
def parse_elfcorehdr_param(cmdline: str) -> int:
    """The address in a capture kernel's ``elfcorehdr=[size[KMG]@]offset[KMG]`` (``setup_elfcorehdr``).

    Raises ``ValueError`` when the command line has no usable ``elfcorehdr=``. A function of the
    string alone: the last few answers are kept (a reload storm asks about the same line again).
    """
    m = re.search(r"(?:^|\s)elfcorehdr=(\S+)", cmdline)
    if not m:
        raise ValueError("no elfcorehdr= on the command line")
    value = m.group(1).rpartition("@")[2]
    v = re.fullmatch(r"(0[xX][0-9a-fA-F]+|[0-9]+)([KMGkmg]?)", value)
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
    #: the layout of the core's e_machine (x86_64, or ppc64 for EM_PPC64)
    prstatus: ElfPrstatus | ElfPrstatusPpc64
    desc: bytes

    @property
    def pr_pid(self) -> int:
        return self.prstatus.pr_pid


#: VMCOREINFO keys a report shows
VMCOREINFO_KEYS: Final = ("OSRELEASE", "BUILD-ID", "PAGESIZE", "KERNELOFFSET", "NUMBER(phys_base)", "CRASHTIME")

#: an inclusive physical range
PhysRange = tuple[int, int]


def merge_ranges(ranges: Iterable[PhysRange]) -> list[PhysRange]:
    """Inclusive ranges sorted, with overlapping and adjacent ones joined."""
    out: list[PhysRange] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def subtract_ranges(a: Iterable[PhysRange], b: list[PhysRange]) -> list[PhysRange]:
    """The parts of ``a`` not covered by ``b`` (both merged and ascending)."""
    out: list[PhysRange] = []
    for s, e in a:
        cur = s
        for bs, be in b:
            if be < cur or bs > e:
                continue
            if bs > cur:
                out.append((cur, bs - 1))
            cur = max(cur, be + 1)
            if cur > e:
                break
        if cur <= e:
            out.append((cur, e))
    return out


class _FileSource:
    """An open file read by offset, without moving a shared position; closed when dropped."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.size = os.fstat(f.fileno()).st_size

    def read(self, pos: int, size: int) -> bytes:
        if pos < 0 or size <= 0:
            return b""
        return os.pread(self.f.fileno(), size, pos)

    def __del__(self) -> None:
        self.f.close()


@dataclass(frozen=True)
class VmcoreFile:
    """A vmcore on disk in any of the formats kdump writes, read by offset.

    ``dump_format`` is ``ELF`` (``/proc/vmcore`` copied, or ``makedumpfile -E``),
    ``kdump-compressed`` (``makedumpfile -c/-l/-p/-z``), or either of them ``flattened`` (``-F``).
    For ELF, ``core`` holds the program headers; for kdump-compressed, ``kdump`` the checked
    headers and bitmaps. The memory map a dump describes is :meth:`present_ranges` (PT_LOADs'
    ``p_memsz``, or the 1st bitmap); the bytes it holds :meth:`iter_dumped_ranges`
    (``p_filesz``, or the 2nd bitmap).
    """

    path: Path
    core: ElfCore | None
    file_size: int
    prstatus: tuple[PrstatusNote, ...]
    vmcoreinfo: dict[str, str] = field(default_factory=dict)
    #: reads file bytes (offset, size); None reads ``path``
    reader: Callable[[int, int], bytes] | None = None
    dump_format: str = "ELF"
    kdump: KdumpCompressed | SplitDump | None = None

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
        if self.core is None:
            return []
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
    def page_size(self) -> int:
        return self.kdump.block_size if self.kdump is not None else PAGE_SIZE

    @property
    def page_granular(self) -> bool:
        """True when the memory map is a page bitmap (kdump-compressed), not byte ranges."""
        return self.kdump is not None

    @property
    def dump_level(self) -> int | None:
        """makedumpfile's ``-d`` when the file records it (kdump-compressed only)."""
        return self.kdump.dump_level if self.kdump is not None else None

    @property
    def warnings(self) -> list[str]:
        return list(self.kdump.warnings) if self.kdump is not None else []

    @property
    def data_start(self) -> int:
        """File offset where memory data begins (the first PT_LOAD's window)."""
        if self.kdump is not None:
            return self.kdump.pd_offset
        return min((_rounddown(s.offset) for s in self.loads if s.filesz), default=self.file_size)

    @property
    def data_end(self) -> int:
        """File size a complete vmcore has: the end of the last PT_LOAD's data."""
        if self.kdump is not None:
            return self.file_size
        return max((s.offset + s.filesz for s in self.loads), default=self.file_size)

    @property
    def has_data(self) -> bool:
        """True when every page the dump says it holds is in the file."""
        if self.kdump is not None:
            return not self.kdump.incomplete
        return self.file_size >= self.data_end

    @property
    def headers_only(self) -> bool:
        """True for a file cut before any memory data (like ``vmcore-headers.bin``)."""
        if self.kdump is not None:
            return False
        return self.file_size <= self.data_start

    def present_ranges(self) -> list[PhysRange]:
        """RAM the dump's memory map lists: RAM PT_LOADs (``p_memsz``), or the 1st bitmap's pages."""
        if self.kdump is not None:
            ps = self.page_size
            return [(s * ps, (e + 1) * ps - 1) for s, e in self.kdump.present_runs()]
        return merge_ranges((s.paddr, s.end) for s in self.ram_loads if s.size > 0)

    def iter_dumped_ranges(self) -> Iterator[PhysRange]:
        """RAM whose bytes are in the file, ascending: ``p_filesz`` of each RAM PT_LOAD, or the 2nd bitmap."""
        if self.kdump is not None:
            ps = self.page_size
            return ((s * ps, (e + 1) * ps - 1) for s, e in self.kdump.dumped_runs())
        return iter(merge_ranges((s.paddr, s.paddr + s.filesz - 1) for s in self.ram_loads if s.filesz))

    def iter_filtered_ranges(self) -> Iterator[PhysRange]:
        """RAM in the memory map whose bytes the file leaves out (a dump level's filtering), ascending."""
        if self.kdump is not None:
            ps = self.page_size
            return ((s * ps, (e + 1) * ps - 1) for s, e in self.kdump.filtered_runs())
        tails = merge_ranges((s.paddr + s.filesz, s.end) for s in self.ram_loads if s.filesz < s.size)
        return iter(subtract_ranges(tails, list(self.iter_dumped_ranges())))

    def key_vmcoreinfo(self) -> dict[str, str]:
        return {k: self.vmcoreinfo[k] for k in VMCOREINFO_KEYS if k in self.vmcoreinfo}

    def segment_for(self, paddr: int, size: int = 1) -> LoadSegment | None:
        """The RAM PT_LOAD whose file data holds ``[paddr, paddr + size)`` (the kernel-text one as a fallback)."""
        for seg in sorted(self.loads, key=lambda s: s.is_kernel_text):
            if seg.paddr <= paddr and paddr + size <= seg.paddr + seg.filesz:
                return seg
        return None

    def _read(self, off: int, size: int) -> bytes:
        if self.reader is not None:
            return self.reader(off, size)
        try:
            f = open_regular(self.path)
        except InputFileError:
            return b""
        with f:
            f.seek(off)
            return f.read(size)

    def read_phys(self, paddr: int, size: int) -> bytes | None:
        """Bytes of physical memory from the file, or None when the file does not hold all of them."""
        if self.kdump is not None:
            ps = self.page_size
            out = bytearray()
            for pfn in range(paddr // ps, (paddr + size - 1) // ps + 1):
                page = self.kdump.read_page(pfn)
                if page is None:
                    return None
                out += page
            skip = paddr % ps
            return bytes(out[skip : skip + size])
        seg = self.segment_for(paddr, size)
        if seg is None:
            return None
        off = seg.offset + (paddr - seg.paddr)
        if off + size > self.file_size:
            return None
        data = self._read(off, size)
        return data if len(data) == size else None


def _read_head(read: Callable[[int, int], bytes], source: str) -> bytes:
    head = read(0, Elf64_Ehdr.SIZE)
    if len(head) < Elf64_Ehdr.SIZE:
        raise ElfFormatError(
            f"truncated: {len(head)} bytes, an ELF header needs {Elf64_Ehdr.SIZE}", offset=0, source=source
        )
    if head[:4] != ELFMAG:
        raise ElfFormatError("not an ELF file (no \\x7fELF magic)", offset=0, source=source)
    ehdr = Elf64_Ehdr.unpack(head)
    phend = ehdr.e_phoff + ehdr.e_phnum * Elf64_Phdr.SIZE
    head = read(0, max(phend, Elf64_Ehdr.SIZE))
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
        head = read(0, note_end)
    return head


_COPY: Final = 1 << 20


def _spool(src: BinaryIO, head: bytes) -> BinaryIO:
    """A pipe's bytes in an unnamed temporary file (removed when closed), copied a piece at a time."""
    tmp = tempfile.TemporaryFile()  # noqa: SIM115 (returned open, closed with its reader)
    tmp.write(head)
    while piece := src.read(_COPY):
        tmp.write(piece)
    tmp.flush()
    return tmp


def _open_stream(path: Path, source: str) -> tuple[BinaryIO, bool]:
    """The file to read by offset and whether it came from a flattened stream."""
    if str(path) == "-":
        src: BinaryIO = sys.stdin.buffer
    else:
        src = open_regular(path)  # a FIFO or device is refused: "-" reads a pipe
    head = src.read(MDF_HEADER.size)
    if is_flattened(head):
        tmp = tempfile.TemporaryFile()  # noqa: SIM115 (returned open, closed with its reader)
        try:
            rearrange(src, tmp, source=source, head=head)
        except BaseException:
            tmp.close()
            raise
        finally:
            if src is not sys.stdin.buffer:
                src.close()
        tmp.flush()
        return tmp, True
    if src is sys.stdin.buffer:
        return _spool(src, head), False
    return src, False


def sniff_format(path: Path) -> str:
    """``ELF``, ``kdump-compressed``, ``flattened`` or ``unknown``, from the file's first bytes."""
    if str(path) == "-":
        return "unknown"
    try:
        with open_regular(path) as f:
            head = f.read(MDF_HEADER.size)
    except (InputFileError, OSError):
        return "unknown"
    if is_flattened(head):
        return "flattened"
    if head[:8] == KDUMP_SIGNATURE:
        return KDUMP_FMT
    return "ELF" if head[:4] == ELFMAG else "unknown"


def read_vmcore_file(path: Path) -> VmcoreFile:
    """Open a vmcore in any format kdump writes (``-`` reads standard input): ELF whole or cut after
    its notes, kdump-compressed, or flattened; decode its notes; read nothing else yet.

    Raises :class:`ElfFormatError` or :class:`DumpFormatError` naming the file and the format on
    a truncated or inconsistent file.
    """
    source = "<stdin>" if str(path) == "-" else str(path)
    try:
        f, flattened = _open_stream(path, source)
    except InputFileError as e:
        raise ElfFormatError(e.what, offset=0, source=source) from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ElfFormatError(f"no room in {tempfile.gettempdir()} for the file the stream is rebuilt into: "
                                 "point TMPDIR at a larger directory", offset=0, source=source) from None
        raise ElfFormatError(f"cannot read: {e.strerror}", offset=0, source=source) from None
    src = _FileSource(f)
    prefix = "flattened " if flattened else ""
    sig = src.read(0, 8)
    try:
        if sig == KDUMP_SIGNATURE:
            return _decode_kdump(path, src, prefix)
        if sig == DISKDUMP_SIGNATURE:
            raise DumpFormatError("a diskdump file (\"DISKDUMP\", the RHEL 4 era dump module): not read here; "
                                  "crash reads it", fmt="diskdump", offset=0, source=source)
        if sig[:4] != ELFMAG:
            raise ElfFormatError(
                "not a vmcore: no ELF magic, no kdump-compressed signature (\"KDUMP   \") and no flattened "
                "signature (\"makedumpfile\")", offset=0, source=source)
        head = _read_head(src.read, source)
        vf = _decode(path, head, src.size)
        return dataclasses.replace(vf, reader=src.read, dump_format=prefix + "ELF")
    except DumpFormatError as e:
        if flattened and e.fmt == KDUMP_FMT:
            raise DumpFormatError(e.what, fmt=f"flattened {KDUMP_FMT} (offset in the file makedumpfile -R rebuilds)",
                                  offset=e.offset, source=source) from None
        raise
    except ElfFormatError as e:
        if flattened:
            raise e.with_source(f"{source}: flattened ELF (offset in the file makedumpfile -R rebuilds)") from None
        raise
    except OSError as e:
        raise ElfFormatError(f"cannot read: {e.strerror}", offset=0, source=source) from None


def read_vmcore_files(paths: list[Path]) -> VmcoreFile:
    """One vmcore, or the parts of one ``makedumpfile --split`` dump given together (any order)."""
    if len(paths) == 1:
        return read_vmcore_file(paths[0])
    if any(str(p) == "-" for p in paths):
        raise ElfFormatError("standard input (-) takes one whole dump, not a part of a split one", offset=0,
                             source="<stdin>")
    files = [read_vmcore_file(p) for p in paths]
    parts: list[KdumpCompressed] = []
    for vf in files:
        if not isinstance(vf.kdump, KdumpCompressed):
            raise ElfFormatError(f"{vf.dump_format}: only kdump-compressed parts of a --split dump are read "
                                 "together", offset=0, source=str(vf.path))
        parts.append(vf.kdump)
    split = SplitDump(parts)
    first = files[[vf.kdump for vf in files].index(split.parts[0])]
    return dataclasses.replace(first, path=Path(split.source), kdump=split,
                               dump_format=f"{first.dump_format}, {len(parts)} --split parts")


def _decode_notes(notes: Iterable[Note], source: str,
                  machine: int = EM_X86_64) -> tuple[tuple[PrstatusNote, ...], dict[str, str]]:
    prstatus: list[PrstatusNote] = []
    unpack = ElfPrstatusPpc64.unpack if machine == EM_PPC64 else ElfPrstatus.unpack
    vmcoreinfo: dict[str, str] = {}
    for note in notes:
        if note.name == "CORE" and note.n_type == NT_PRSTATUS:
            try:
                ps = unpack(note.desc)
            except ElfFormatError as e:
                raise ElfFormatError(e.what, offset=note.offset, source=source) from None
            prstatus.append(PrstatusNote(len(prstatus), ps, note.desc))
        elif note.name == VMCOREINFO_NOTE_NAME:
            vmcoreinfo = parse_vmcoreinfo(note.desc)
    return tuple(prstatus), vmcoreinfo


def _decode_kdump(path: Path, src: _FileSource, prefix: str) -> VmcoreFile:
    source = "<stdin>" if str(path) == "-" else str(path)
    kd = KdumpCompressed.open(src.read, src.size, source)
    machine = kd.header.utsname.machine
    if machine != "x86_64":
        raise DumpFormatError(f"utsname.machine is {machine!r}: only x86_64 dumps are read", fmt=KDUMP_FMT,
                              offset=8 + 4 + 4 * 65, source=source)
    try:
        prstatus, vmcoreinfo = _decode_notes(kd.iter_notes(), source)
    except ElfFormatError as e:
        raise DumpFormatError(f"ELF notes: {e.what}", fmt=KDUMP_FMT, offset=kd.sub.offset_note + e.offset,
                              source=source) from None
    if not vmcoreinfo and kd.vmcoreinfo_text:
        vmcoreinfo = parse_vmcoreinfo(kd.vmcoreinfo_text)
    return VmcoreFile(path, None, src.size, prstatus, vmcoreinfo, reader=src.read,
                      dump_format=prefix + KDUMP_FMT, kdump=kd)


def _decode(path: Path, head: bytes, size: int) -> VmcoreFile:
    source = str(path)
    core = ElfCore.parse(head, source)
    if core.ehdr.e_machine not in (EM_X86_64, EM_PPC64):
        raise ElfFormatError(f"e_machine is {core.ehdr.e_machine}: only x86_64 (62) and ppc64 (21) cores are read",
                             offset=18, source=source)
    prstatus, vmcoreinfo = _decode_notes((n for _, n in core.notes()), source, core.ehdr.e_machine)
    return VmcoreFile(path, core, size, prstatus, vmcoreinfo)
