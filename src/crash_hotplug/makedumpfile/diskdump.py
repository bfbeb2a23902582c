"""The kdump-compressed file's fixed parts (makedumpfile's ``diskdump_mod.h``), x86_64 layout.

A file is a sequence of ``block_size`` blocks:

* block 0: ``struct disk_dump_header`` (signature ``"KDUMP   "``);
* ``sub_hdr_size`` blocks: ``struct kdump_sub_header``, then the VMCOREINFO text and the ELF notes
  it points at (``offset_vmcoreinfo``/``offset_note``, header_version 3 and 4 on);
* ``bitmap_blocks`` blocks: the 1st bitmap (pages that existed in the source's memory) and the
  2nd bitmap (pages written), one bit per pfn, lowest bit first, each half of the area;
* one ``struct page_desc`` per page set in the 2nd bitmap, in pfn order, then the page data.

Every unpack checks the bytes it needs are there and says which field failed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Self

from crash_hotplug.errors import DumpFormatError

__all__ = [
    "DISK_DUMP_HEADER",
    "DUMP_DH_COMPRESSED_INCOMPLETE",
    "DUMP_DH_COMPRESSED_LZO",
    "DUMP_DH_COMPRESSED_SNAPPY",
    "DUMP_DH_COMPRESSED_ZLIB",
    "DUMP_DH_COMPRESSED_ZSTD",
    "DUMP_DH_EXCLUDED_VMEMMAP",
    "FMT",
    "KDUMP_SIGNATURE",
    "KDUMP_SUB_HEADER",
    "PAGE_DESC",
    "DiskDumpHeader",
    "KdumpSubHeader",
    "NewUtsname",
    "PageDesc",
    "compression_name",
]

FMT: Final = "kdump-compressed"
KDUMP_SIGNATURE: Final = b"KDUMP   "
#: the signature of the older diskdump format (a kernel module of the RHEL 4 era), not read here
DISKDUMP_SIGNATURE: Final = b"DISKDUMP"

#: ``disk_dump_header.status`` and ``page_desc.flags`` bits
DUMP_DH_COMPRESSED_ZLIB: Final = 0x1
DUMP_DH_COMPRESSED_LZO: Final = 0x2
DUMP_DH_COMPRESSED_SNAPPY: Final = 0x4
DUMP_DH_COMPRESSED_INCOMPLETE: Final = 0x8
DUMP_DH_EXCLUDED_VMEMMAP: Final = 0x10
DUMP_DH_COMPRESSED_ZSTD: Final = 0x20
_STATUS_KNOWN: Final = 0x3F
COMPRESSION_FLAGS: Final = {
    DUMP_DH_COMPRESSED_ZLIB: "zlib",
    DUMP_DH_COMPRESSED_LZO: "lzo",
    DUMP_DH_COMPRESSED_SNAPPY: "snappy",
    DUMP_DH_COMPRESSED_ZSTD: "zstd",
}

#: ``struct new_utsname``: six 65-byte strings
UTS_LEN: Final = 65
UTS_FIELDS: Final = ("sysname", "nodename", "release", "version", "machine", "domainname")

#: signature, header_version, utsname, 6 bytes of padding, timestamp (tv_sec, tv_usec), status,
#: block_size, sub_hdr_size, bitmap_blocks, max_mapnr, total_ram_blocks, device_blocks,
#: written_blocks, current_cpu, nr_cpus
DISK_DUMP_HEADER: Final = struct.Struct(f"<8si{6 * UTS_LEN}s6xqqIiiIIIIIIi")
#: phys_base, dump_level, split, start_pfn, end_pfn, offset_vmcoreinfo, size_vmcoreinfo, offset_note,
#: size_note, offset_eraseinfo, size_eraseinfo, start_pfn_64, end_pfn_64, max_mapnr_64
KDUMP_SUB_HEADER: Final = struct.Struct("<QiiQQqQqQqQQQQ")
#: offset, size, flags, page_flags
PAGE_DESC: Final = struct.Struct("<qIIQ")

#: ``dump_level`` is a mask of five page kinds (makedumpfile -d 0..31)
MAX_DUMP_LEVEL: Final = 31


def compression_name(flags: int) -> str:
    """The codec a ``status`` or ``page_desc.flags`` word names ("none" when it names none)."""
    names = [n for bit, n in COMPRESSION_FLAGS.items() if flags & bit]
    return "+".join(names) if names else "none"


def _need(buf: bytes, layout: struct.Struct, what: str, offset: int) -> None:
    if len(buf) < layout.size:
        raise DumpFormatError(
            f"truncated: {what} needs {layout.size} bytes, the file has {len(buf)} there", fmt=FMT, offset=offset
        )


@dataclass(frozen=True, slots=True)
class NewUtsname:
    """``struct new_utsname`` (``include/uapi/linux/utsname.h``): what ``uname -a`` shows."""

    sysname: str = ""
    nodename: str = ""
    release: str = ""
    version: str = ""
    machine: str = ""
    domainname: str = ""

    @classmethod
    def unpack(cls, raw: bytes) -> Self:
        parts = [raw[i * UTS_LEN : (i + 1) * UTS_LEN].split(b"\0", 1)[0].decode("ascii", "replace")
                 for i in range(len(UTS_FIELDS))]
        return cls(*parts)

    def pack(self) -> bytes:
        out = b""
        for name in UTS_FIELDS:
            raw = getattr(self, name).encode()[: UTS_LEN - 1]
            out += raw.ljust(UTS_LEN, b"\0")
        return out


@dataclass(frozen=True, slots=True)
class DiskDumpHeader:
    """``struct disk_dump_header`` (464 bytes on x86_64)."""

    signature: bytes
    header_version: int
    utsname: NewUtsname
    tv_sec: int
    tv_usec: int
    status: int
    block_size: int
    sub_hdr_size: int
    bitmap_blocks: int
    max_mapnr: int
    total_ram_blocks: int
    device_blocks: int
    written_blocks: int
    current_cpu: int
    nr_cpus: int

    SIZE = DISK_DUMP_HEADER.size

    @classmethod
    def unpack(cls, buf: bytes) -> Self:
        _need(buf, DISK_DUMP_HEADER, "disk_dump_header", 0)
        v = DISK_DUMP_HEADER.unpack_from(buf)
        return cls(v[0], v[1], NewUtsname.unpack(v[2]), *v[3:])

    def pack(self) -> bytes:
        return DISK_DUMP_HEADER.pack(
            self.signature, self.header_version, self.utsname.pack(), self.tv_sec, self.tv_usec, self.status,
            self.block_size, self.sub_hdr_size, self.bitmap_blocks, self.max_mapnr, self.total_ram_blocks,
            self.device_blocks, self.written_blocks, self.current_cpu, self.nr_cpus,
        )

    @property
    def compression(self) -> str:
        return compression_name(self.status)

    def check(self, file_size: int) -> None:
        """The checks a reader needs before it trusts any offset derived from the header."""
        def bad(what: str, field_offset: int) -> DumpFormatError:
            return DumpFormatError(what, fmt=FMT, offset=field_offset)

        if self.signature != KDUMP_SIGNATURE:
            raise bad(f"signature is {self.signature!r}, not {KDUMP_SIGNATURE!r}", 0)
        if self.header_version < 1:
            raise bad(f"header_version is {self.header_version}: kdump headers start at 1", 8)
        bs = self.block_size
        if bs < 1024 or bs > 1 << 20 or bs & (bs - 1):
            raise bad(f"block_size is {bs}, not a page size (a power of two from 1 KiB to 1 MiB)", 428)
        if self.status & ~_STATUS_KNOWN:
            raise bad(f"status {self.status:#x} has flags no makedumpfile writes ({self.status & ~_STATUS_KNOWN:#x})",
                      424)
        if bin(self.status & 0x27).count("1") > 1:
            raise bad(f"status {self.status:#x} names more than one compression ({self.compression})", 424)
        if self.sub_hdr_size < 1 or (1 + self.sub_hdr_size) * bs > file_size:
            raise bad(f"sub_hdr_size {self.sub_hdr_size} blocks: the sub header would end at "
                      f"{(1 + self.sub_hdr_size) * bs:#x}, past the end of the file ({file_size:#x})", 432)
        if self.bitmap_blocks == 0 or self.bitmap_blocks % 2:
            raise bad(f"bitmap_blocks is {self.bitmap_blocks}: it holds two bitmaps of equal size", 436)
        end = (1 + self.sub_hdr_size + self.bitmap_blocks) * bs
        if end > file_size:
            raise bad(f"the bitmaps ({self.bitmap_blocks} blocks) end at {end:#x}, past the end of the file "
                      f"({file_size:#x})", 436)
        if self.nr_cpus < 0 or self.nr_cpus > 1 << 16:
            raise bad(f"nr_cpus is {self.nr_cpus}", 460)


@dataclass(frozen=True, slots=True)
class KdumpSubHeader:
    """``struct kdump_sub_header`` (104 bytes on x86_64); fields newer than ``header_version`` read as 0."""

    phys_base: int
    dump_level: int
    split: int
    start_pfn: int
    end_pfn: int
    offset_vmcoreinfo: int
    size_vmcoreinfo: int
    offset_note: int
    size_note: int
    offset_eraseinfo: int
    size_eraseinfo: int
    start_pfn_64: int
    end_pfn_64: int
    max_mapnr_64: int

    SIZE = KDUMP_SUB_HEADER.size

    @classmethod
    def unpack(cls, buf: bytes, offset: int, header_version: int) -> Self:
        _need(buf, KDUMP_SUB_HEADER, "kdump_sub_header", offset)
        v = list(KDUMP_SUB_HEADER.unpack_from(buf))
        # fields by the header_version that introduced them (makedumpfile leaves the rest zero)
        since = (1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 6)
        return cls(*(x if header_version >= s else 0 for x, s in zip(v, since, strict=True)))

    def pack(self) -> bytes:
        return KDUMP_SUB_HEADER.pack(
            self.phys_base, self.dump_level, self.split, self.start_pfn, self.end_pfn, self.offset_vmcoreinfo,
            self.size_vmcoreinfo, self.offset_note, self.size_note, self.offset_eraseinfo, self.size_eraseinfo,
            self.start_pfn_64, self.end_pfn_64, self.max_mapnr_64,
        )


#: byte offset of each sub header field inside the structure, for error messages
SUB_HEADER_FIELD_OFFSETS: Final = {
    "phys_base": 0, "dump_level": 8, "split": 12, "start_pfn": 16, "end_pfn": 24, "offset_vmcoreinfo": 32,
    "size_vmcoreinfo": 40, "offset_note": 48, "size_note": 56, "offset_eraseinfo": 64, "size_eraseinfo": 72,
    "start_pfn_64": 80, "end_pfn_64": 88, "max_mapnr_64": 96,
}


@dataclass(frozen=True, slots=True)
class PageDesc:
    """``struct page_desc`` (``page_desc_t``): where one dumped page's bytes are and how they are stored."""

    offset: int
    size: int
    flags: int
    page_flags: int

    SIZE = PAGE_DESC.size

    @classmethod
    def unpack(cls, buf: bytes, offset: int) -> Self:
        _need(buf, PAGE_DESC, "page_desc", offset)
        return cls(*PAGE_DESC.unpack_from(buf))

    def pack(self) -> bytes:
        return PAGE_DESC.pack(self.offset, self.size, self.flags, self.page_flags)
