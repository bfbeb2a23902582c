"""Reading a kdump-compressed file by offset: headers checked, bitmaps streamed, pages on demand.

Mirrors what a reader of makedumpfile's output must do (crash's ``diskdump.c``, libkdumpfile's
``diskdump.c``): check the disk_dump_header and kdump_sub_header against the file's size, take
max_mapnr from the 64-bit field of header_version 6, find the ELF notes and VMCOREINFO the sub
header points at, and turn a pfn into its ``page_desc`` by counting the 2nd bitmap's bits before it.
Opening costs one pass over the two bitmaps; memory stays a few KiB whatever the dump's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from crash_hotplug.elf.notes import Note, iter_notes
from crash_hotplug.errors import DumpFormatError, ElfFormatError, MissingCodecError
from crash_hotplug.makedumpfile.bitmap import Bitmap, RankIndex, and_not, merge_runs, runs_of
from crash_hotplug.makedumpfile.codecs import CodecFailed, CodecMissing, decompress_page
from crash_hotplug.makedumpfile.diskdump import (
    COMPRESSION_FLAGS,
    DUMP_DH_COMPRESSED_INCOMPLETE,
    FMT,
    MAX_DUMP_LEVEL,
    SUB_HEADER_FIELD_OFFSETS,
    DiskDumpHeader,
    KdumpSubHeader,
    PageDesc,
)

__all__ = ["DUMP_LEVEL_BITS", "KdumpCompressed", "SplitDump", "dump_level_text"]

#: reads ``size`` bytes at ``offset`` (shorter at the end of the file)
Reader = Callable[[int, int], bytes]
Run = tuple[int, int]

#: VMCOREINFO is one page of text; notes a few KiB per CPU
_MAX_VMCOREINFO: Final = 1 << 20
_MAX_NOTES: Final = 64 << 20
_PD_COMPRESSION_MASK: Final = sum(COMPRESSION_FLAGS)

#: makedumpfile's ``-d`` bits, by what they leave out
DUMP_LEVEL_BITS: Final = ((1, "zero pages"), (2, "cache pages"), (4, "cache private pages"), (8, "user pages"),
                          (16, "free pages"))


def dump_level_text(level: int) -> str:
    """``-d 31 (zero pages, cache pages, ...)``: what a dump level leaves out."""
    kinds = [name for bit, name in DUMP_LEVEL_BITS if level & bit]
    return f"-d {level} ({', '.join(kinds) if kinds else 'nothing excluded'})"


@dataclass
class KdumpCompressed:
    """A checked kdump-compressed file. ``read`` reads the file; nothing else of it is held."""

    source: str
    read: Reader
    file_size: int
    header: DiskDumpHeader
    sub: KdumpSubHeader
    max_mapnr: int
    start_pfn: int
    end_pfn: int
    first: Bitmap
    second: Bitmap
    rank: RankIndex
    notes: bytes
    vmcoreinfo_text: bytes
    pd_offset: int
    present_pages: int
    dumped_pages: int
    warnings: list[str] = field(default_factory=list)

    # -----------------------------------------------------------------------------------------

    @classmethod
    def open(cls, read: Reader, file_size: int, source: str) -> KdumpCompressed:
        """Check the file's headers, notes and bitmaps; raises :class:`DumpFormatError` naming ``source``."""
        try:
            return cls._open(read, file_size, source)
        except DumpFormatError as e:
            raise e.with_source(source) from None

    @classmethod
    def _open(cls, read: Reader, file_size: int, source: str) -> KdumpCompressed:
        h = DiskDumpHeader.unpack(read(0, DiskDumpHeader.SIZE))
        h.check(file_size)
        bs = h.block_size
        sub = KdumpSubHeader.unpack(read(bs, KdumpSubHeader.SIZE), bs, h.header_version)

        def bad(what: str, name: str) -> DumpFormatError:
            return DumpFormatError(f"kdump_sub_header.{what}", fmt=FMT, offset=bs + SUB_HEADER_FIELD_OFFSETS[name])

        if not 0 <= sub.dump_level <= MAX_DUMP_LEVEL:
            raise bad(f"dump_level is {sub.dump_level}, not a makedumpfile -d level (0-31)", "dump_level")
        if sub.split not in (0, 1):
            raise bad(f"split is {sub.split}, not 0 or 1", "split")
        if h.header_version >= 6:
            max_mapnr = sub.max_mapnr_64
            if h.max_mapnr != min(max_mapnr, 0xFFFFFFFF):
                raise DumpFormatError(
                    f"disk_dump_header.max_mapnr {h.max_mapnr:#x} disagrees with kdump_sub_header.max_mapnr_64 "
                    f"{max_mapnr:#x}", fmt=FMT, offset=440)
            start, end = (sub.start_pfn_64, sub.end_pfn_64) if sub.split else (0, max_mapnr)
        else:
            max_mapnr = h.max_mapnr
            start, end = (sub.start_pfn, sub.end_pfn) if sub.split else (0, max_mapnr)
        if max_mapnr == 0:
            raise DumpFormatError("max_mapnr is 0: the dump maps no page", fmt=FMT, offset=440)
        half = h.bitmap_blocks // 2 * bs
        if half * 8 < max_mapnr:
            raise DumpFormatError(
                f"bitmap_blocks {h.bitmap_blocks}: each bitmap has {half * 8:#x} bits, fewer than max_mapnr "
                f"{max_mapnr:#x}", fmt=FMT, offset=436)
        if not start <= end <= max_mapnr:
            raise bad(f"start_pfn {start:#x} / end_pfn {end:#x} are not inside max_mapnr {max_mapnr:#x}",
                      "start_pfn_64" if h.header_version >= 6 else "start_pfn")
        hdr_end = (1 + h.sub_hdr_size) * bs

        def region(off: int, size: int, name: str, limit: int) -> bytes:
            if size == 0:
                return b""
            if size > limit or off < bs + KdumpSubHeader.SIZE or off + size > file_size:
                raise bad(f"offset_{name} {off:#x} size_{name} {size:#x}: not inside the file ({file_size:#x})",
                          f"offset_{name}")
            data = read(off, size)
            if len(data) != size:
                raise bad(f"offset_{name}: truncated", f"offset_{name}")
            return data

        vmcoreinfo = region(sub.offset_vmcoreinfo, sub.size_vmcoreinfo, "vmcoreinfo", _MAX_VMCOREINFO)
        notes = region(sub.offset_note, sub.size_note, "note", _MAX_NOTES)
        region(sub.offset_eraseinfo, sub.size_eraseinfo, "eraseinfo", _MAX_NOTES)
        try:
            for _ in iter_notes(notes):
                pass
        except ElfFormatError as e:
            raise DumpFormatError(f"ELF notes at offset_note: {e.what}", fmt=FMT,
                                  offset=sub.offset_note + e.offset) from None

        first = Bitmap(read, hdr_end, max_mapnr, what="1st bitmap", fmt=FMT)
        second = Bitmap(read, hdr_end + half, max_mapnr, what="2nd bitmap", fmt=FMT)
        present = 0
        for (base, a), (_, b) in zip(first.chunks(), second.chunks(), strict=True):
            present += int.from_bytes(a, "little").bit_count()
            stray = int.from_bytes(b, "little") & ~int.from_bytes(a, "little")
            if stray:
                pfn = base + (stray & -stray).bit_length() - 1
                raise DumpFormatError(
                    f"the 2nd bitmap has pfn {pfn:#x} dumped, which the 1st bitmap says did not exist",
                    fmt=FMT, offset=hdr_end + half + pfn // 8)
        rank = RankIndex(second)
        dumped = rank.rank(end) - rank.rank(start)
        pd_offset = (1 + h.sub_hdr_size + h.bitmap_blocks) * bs
        kd = cls(source, read, file_size, h, sub, max_mapnr, start, end, first, second, rank, notes, vmcoreinfo,
                 pd_offset, present, dumped)
        if kd.incomplete:
            kd.warnings.append("makedumpfile marked the dump incomplete (DUMP_DH_COMPRESSED_INCOMPLETE): "
                               "it stopped writing, most likely for lack of space")
            return kd
        pd_end = pd_offset + dumped * PageDesc.SIZE
        if pd_end > file_size:
            raise DumpFormatError(
                f"{dumped} page descriptors (one per page in the 2nd bitmap) end at {pd_end:#x}, past the end of "
                f"the file ({file_size:#x})", fmt=FMT, offset=pd_offset)
        if dumped:
            kd._desc(dumped - 1, start)  # the last page's data must be in the file too
        return kd

    # -----------------------------------------------------------------------------------------

    @property
    def incomplete(self) -> bool:
        return bool(self.header.status & DUMP_DH_COMPRESSED_INCOMPLETE)

    @property
    def split(self) -> bool:
        return bool(self.sub.split)

    @property
    def block_size(self) -> int:
        return self.header.block_size

    @property
    def dump_level(self) -> int | None:
        """``-d`` of the run that wrote the file (recorded from header_version 1 on)."""
        return self.sub.dump_level if self.header.header_version >= 1 else None

    def iter_notes(self) -> Iterator[Note]:
        return iter_notes(self.notes)

    def present_runs(self) -> Iterator[Run]:
        """pfn runs of the 1st bitmap: the pages that existed in the dumped machine's memory map."""
        return self.first.runs()

    def dumped_runs(self) -> Iterator[Run]:
        """pfn runs of the 2nd bitmap (inside ``[start_pfn, end_pfn)`` for one file of a split dump)."""
        for s, e in self.second.runs():
            s, e = max(s, self.start_pfn), min(e, self.end_pfn - 1)
            if s <= e:
                yield s, e

    def filtered_runs(self) -> Iterator[Run]:
        """pfn runs in the 1st bitmap but not the 2nd: left out by the dump level."""
        return merge_runs(r for base, c in and_not(self.first, self.second) for r in runs_of(c, base))

    def filtered_pages(self) -> int:
        return sum(int.from_bytes(c, "little").bit_count() for _, c in and_not(self.first, self.second))

    def _desc(self, index: int, pfn: int) -> PageDesc:
        pos = self.pd_offset + index * PageDesc.SIZE
        raw = self.read(pos, PageDesc.SIZE)
        if len(raw) < PageDesc.SIZE:
            raise DumpFormatError(f"page descriptor of pfn {pfn:#x} at {pos:#x} is past the end of the file",
                                  fmt=FMT, offset=pos, source=self.source)
        pd = PageDesc.unpack(raw, pos)
        bs = self.block_size
        if pd.offset < self.pd_offset or pd.offset + pd.size > self.file_size or not 0 < pd.size <= bs:
            raise DumpFormatError(
                f"page descriptor of pfn {pfn:#x}: data at {pd.offset:#x}, {pd.size} bytes, is not inside the "
                f"file's page data (from {self.pd_offset:#x} to {self.file_size:#x}, at most a {bs}-byte block)",
                fmt=FMT, offset=pos, source=self.source)
        if pd.flags & ~_PD_COMPRESSION_MASK or bin(pd.flags).count("1") > 1:
            raise DumpFormatError(f"page descriptor of pfn {pfn:#x}: flags {pd.flags:#x} name no single codec",
                                  fmt=FMT, offset=pos + 12, source=self.source)
        if not pd.flags and pd.size != bs:
            raise DumpFormatError(
                f"page descriptor of pfn {pfn:#x}: an uncompressed page of {pd.size} bytes, not {bs}",
                fmt=FMT, offset=pos + 8, source=self.source)
        return pd

    def read_page(self, pfn: int) -> bytes | None:
        """The dumped page ``pfn``; None when the file does not hold it (excluded, or not in this file)."""
        if not self.start_pfn <= pfn < self.end_pfn or not self.second.test(pfn):
            return None
        index = self.rank.rank(pfn) - self.rank.rank(self.start_pfn)
        if self.incomplete:
            # makedumpfile stopped writing: descriptors and data past where it stopped are not there
            try:
                pd = self._desc(index, pfn)
            except DumpFormatError:
                return None
        else:
            pd = self._desc(index, pfn)
        data = self.read(pd.offset, pd.size)
        if not pd.flags:
            return data
        try:
            return decompress_page(pd.flags, data, self.block_size)
        except CodecMissing as e:
            raise MissingCodecError(f"{self.source}: {FMT}: {e.args[0]}") from None
        except CodecFailed as e:
            raise DumpFormatError(f"page of pfn {pfn:#x} does not decompress: {e}", fmt=FMT, offset=pd.offset,
                                  source=self.source) from None



class SplitDump:
    """The parts of one ``makedumpfile --split`` dump read as one: every part carries the same
    headers and bitmaps and the pages of its own ``[start_pfn, end_pfn)``; together they cover
    ``[0, max_mapnr)`` without overlap (``reassemble_dumpfile`` in makedumpfile puts them back the same way)."""

    def __init__(self, parts: list[KdumpCompressed]) -> None:
        parts = sorted(parts, key=lambda p: p.start_pfn)
        first = parts[0]
        for p in parts:
            if not p.split:
                raise DumpFormatError("not a part of a split dump (kdump_sub_header.split is 0): give split parts "
                                      "together, or one whole dump", fmt=FMT, offset=first.block_size + 12,
                                      source=p.source)
            same = (p.max_mapnr, p.block_size, p.header.utsname, p.header.tv_sec, p.present_pages)
            if same != (first.max_mapnr, first.block_size, first.header.utsname, first.header.tv_sec,
                        first.present_pages):
                raise DumpFormatError(f"not a part of the same dump as {first.source} (max_mapnr, block_size, "
                                      "utsname, timestamp or 1st bitmap differ)", fmt=FMT, offset=0, source=p.source)
        pos = 0
        for p in parts:
            if p.start_pfn != pos:
                what = "overlaps the part before it" if p.start_pfn < pos else f"leaves pfns {pos:#x}-" \
                    f"{p.start_pfn - 1:#x} in no part"
                raise DumpFormatError(f"split part for pfns {p.start_pfn:#x}-{p.end_pfn:#x} {what}", fmt=FMT,
                                      offset=first.block_size + 80, source=p.source)
            pos = p.end_pfn
        if pos != first.max_mapnr:
            raise DumpFormatError(f"the parts end at pfn {pos:#x}, short of max_mapnr {first.max_mapnr:#x}: a part "
                                  "is missing", fmt=FMT, offset=first.block_size + 88, source=parts[-1].source)
        self.parts = parts
        self.source = " ".join(p.source for p in parts)

    @property
    def block_size(self) -> int:
        return self.parts[0].block_size

    @property
    def dump_level(self) -> int | None:
        return self.parts[0].dump_level

    @property
    def incomplete(self) -> bool:
        return any(p.incomplete for p in self.parts)

    @property
    def split(self) -> bool:
        return False  # the parts together are the whole dump

    @property
    def start_pfn(self) -> int:
        return 0

    @property
    def end_pfn(self) -> int:
        return self.parts[0].max_mapnr

    @property
    def pd_offset(self) -> int:
        return self.parts[0].pd_offset

    @property
    def warnings(self) -> list[str]:
        return [w for p in self.parts for w in p.warnings]

    def present_runs(self) -> Iterator[Run]:
        return self.parts[0].present_runs()

    def dumped_runs(self) -> Iterator[Run]:
        for p in self.parts:
            yield from p.dumped_runs()

    def filtered_runs(self) -> Iterator[Run]:
        return self.parts[0].filtered_runs()

    def read_page(self, pfn: int) -> bytes | None:
        for p in self.parts:
            if p.start_pfn <= pfn < p.end_pfn:
                return p.read_page(pfn)
        return None
