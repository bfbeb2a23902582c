"""An FDT blob and libfdt's read-write operations on it, byte for byte (``scripts/dtc/libfdt/fdt.h``,
``fdt.c``, ``fdt_ro.c``, ``fdt_rw.c``).

The header is ten big-endian 32-bit words; the memory reservation block is (address, size) pairs
ending with (0, 0); the structure block is a stream of tags (``FDT_BEGIN_NODE`` + name,
``FDT_PROP`` + length + name offset + value, ``FDT_END_NODE``, ``FDT_NOP``, ``FDT_END``) padded to
4 bytes; the strings block holds NUL-terminated property names.

:class:`FdtBlob` edits in place inside ``totalsize`` as libfdt does: a splice moves everything
behind the edit point with ``memmove`` and leaves whatever bytes were there in the gap it opens
(``fdt_splice_``), property names are looked up anywhere in the strings block, a suffix of a longer
name included (``fdt_find_string_``), a new property goes first in its node (``fdt_add_property_``)
and a new subnode goes after the parent's properties, before its other subnodes
(``fdt_add_subnode_namelen``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Final, Self

from crash_hotplug.errors import FdtFormatError

__all__ = [
    "FDT_BEGIN_NODE",
    "FDT_END",
    "FDT_END_NODE",
    "FDT_MAGIC",
    "FDT_NOP",
    "FDT_PROP",
    "FDT_V17_SIZE",
    "FdtBlob",
    "FdtHeader",
    "fdt_tagalign",
]

FDT_MAGIC: Final = 0xD00DFEED
FDT_BEGIN_NODE: Final = 0x1
FDT_END_NODE: Final = 0x2
FDT_PROP: Final = 0x3
FDT_NOP: Final = 0x4
FDT_END: Final = 0x9
FDT_TAGSIZE: Final = 4
#: ``struct fdt_header`` for version 17
HEADER: Final = struct.Struct(">10I")
FDT_V17_SIZE: Final = HEADER.size
RSV_ENTRY: Final = struct.Struct(">QQ")
_U32: Final = struct.Struct(">I")
_PROP_HDR: Final = struct.Struct(">III")


def fdt_tagalign(n: int) -> int:
    """``FDT_TAGALIGN``: round up to the 4-byte tag alignment."""
    return (n + FDT_TAGSIZE - 1) & ~(FDT_TAGSIZE - 1)


@dataclass(frozen=True, slots=True)
class FdtHeader:
    """``struct fdt_header``."""

    magic: int
    totalsize: int
    off_dt_struct: int
    off_dt_strings: int
    off_mem_rsvmap: int
    version: int
    last_comp_version: int
    boot_cpuid_phys: int
    size_dt_strings: int
    size_dt_struct: int

    SIZE: ClassVar[int] = HEADER.size
    FIELDS: ClassVar[tuple[str, ...]] = (
        "magic", "totalsize", "off_dt_struct", "off_dt_strings", "off_mem_rsvmap", "version",
        "last_comp_version", "boot_cpuid_phys", "size_dt_strings", "size_dt_struct",
    )

    def pack(self) -> bytes:
        return HEADER.pack(*(getattr(self, f) for f in self.FIELDS))

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, source: str = "<bytes>") -> Self:
        """The header, checked the way ``fdt_check_header`` checks it (version 17 blocks)."""
        if len(buf) < HEADER.size:
            raise FdtFormatError(f"{len(buf)} bytes is shorter than the {HEADER.size}-byte FDT header",
                                 offset=0, source=source)
        h = cls(*HEADER.unpack_from(buf))
        if h.magic != FDT_MAGIC:
            raise FdtFormatError(f"bad magic {h.magic:#010x} (an FDT starts with 0xd00dfeed)", offset=0, source=source)
        if h.version < 16 or h.last_comp_version > 17:
            raise FdtFormatError(f"unsupported FDT version {h.version} (last compatible {h.last_comp_version})",
                                 offset=0x14, source=source)
        if h.totalsize > len(buf):
            raise FdtFormatError(f"totalsize {h.totalsize} exceeds the {len(buf)} bytes present",
                                 offset=4, source=source)
        if h.totalsize < HEADER.size:
            raise FdtFormatError(f"totalsize {h.totalsize} is smaller than the header", offset=4, source=source)
        for name, off, size in (("structure", h.off_dt_struct, h.size_dt_struct),
                                ("strings", h.off_dt_strings, h.size_dt_strings)):
            if off < HEADER.size or off + size > h.totalsize:
                raise FdtFormatError(f"{name} block [{off:#x}, {off + size:#x}) lies outside [0x28, totalsize "
                                     f"{h.totalsize:#x})", offset=8 if name == "structure" else 12, source=source)
        if h.off_mem_rsvmap < HEADER.size or h.off_mem_rsvmap + RSV_ENTRY.size > h.totalsize:
            raise FdtFormatError(f"memory reservation block at {h.off_mem_rsvmap:#x} lies outside the blob",
                                 offset=16, source=source)
        return h


class FdtBlob:
    """A device tree blob of ``totalsize`` bytes, read and edited the way libfdt does."""

    def __init__(self, data: bytes | bytearray, source: str = "<bytes>") -> None:
        self.source = source
        hdr = FdtHeader.unpack(data, source)
        self.buf = bytearray(data[: hdr.totalsize])

    # -- header fields --------------------------------------------------------------------
    def _hget(self, index: int) -> int:
        return int(_U32.unpack_from(self.buf, 4 * index)[0])

    def _hset(self, index: int, value: int) -> None:
        _U32.pack_into(self.buf, 4 * index, value)

    @property
    def header(self) -> FdtHeader:
        return FdtHeader(*HEADER.unpack_from(self.buf))

    @property
    def totalsize(self) -> int:
        return self._hget(1)

    @property
    def off_dt_struct(self) -> int:
        return self._hget(2)

    @property
    def off_dt_strings(self) -> int:
        return self._hget(3)

    @property
    def size_dt_strings(self) -> int:
        return self._hget(8)

    @property
    def size_dt_struct(self) -> int:
        return self._hget(9)

    def data(self) -> bytes:
        return bytes(self.buf)

    # -- errors ---------------------------------------------------------------------------
    def _bad(self, what: str, offset: int) -> FdtFormatError:
        return FdtFormatError(what, offset=offset, source=self.source)

    # -- reading (fdt.c / fdt_ro.c) ---------------------------------------------------------
    def mem_rsvmap(self) -> list[tuple[int, int]]:
        """The memory reservation entries before the (0, 0) terminator (``fdt_get_mem_rsv``)."""
        out: list[tuple[int, int]] = []
        off = self._hget(4)
        while True:
            if off + RSV_ENTRY.size > self.totalsize:
                raise self._bad("memory reservation block has no (0, 0) terminator", off)
            addr, size = RSV_ENTRY.unpack_from(self.buf, off)
            if addr == 0 and size == 0:
                return out
            out.append((addr, size))
            off += RSV_ENTRY.size

    def string(self, stroff: int) -> str:
        """The property name at ``stroff`` in the strings block (``fdt_get_string``)."""
        base, size = self.off_dt_strings, self.size_dt_strings
        if not 0 <= stroff < size:
            raise self._bad(f"property name offset {stroff} is outside the {size}-byte strings block", base)
        end = self.buf.find(b"\0", base + stroff, base + size)
        if end < 0:
            raise self._bad(f"property name at strings offset {stroff} has no NUL", base + stroff)
        try:
            return self.buf[base + stroff : end].decode("ascii")
        except UnicodeDecodeError:
            raise self._bad(f"property name at strings offset {stroff} is not ASCII", base + stroff) from None

    def next_tag(self, offset: int) -> tuple[int, int]:
        """(tag, offset of the next tag) for the tag at structure offset ``offset`` (``fdt_next_tag``)."""
        size = self.size_dt_struct
        base = self.off_dt_struct
        if offset < 0 or offset + FDT_TAGSIZE > size:
            raise self._bad("structure block ends inside a tag (no FDT_END)", base + max(offset, 0))
        tag = int(_U32.unpack_from(self.buf, base + offset)[0])
        nxt = offset + FDT_TAGSIZE
        if tag == FDT_BEGIN_NODE:
            end = self.buf.find(b"\0", base + nxt, base + size)
            if end < 0:
                raise self._bad("node name runs past the structure block", base + nxt)
            nxt = end - base + 1
        elif tag == FDT_PROP:
            if nxt + 8 > size:
                raise self._bad("property header runs past the structure block", base + offset)
            length = int(_U32.unpack_from(self.buf, base + nxt)[0])
            nxt += 8 + length
            if nxt > size:
                raise self._bad(f"property of {length} bytes runs past the structure block", base + offset)
        elif tag not in (FDT_END_NODE, FDT_NOP, FDT_END):
            raise self._bad(f"unknown structure tag {tag:#x}", base + offset)
        return tag, fdt_tagalign(nxt)

    def node_name(self, offset: int) -> str:
        base = self.off_dt_struct + offset + FDT_TAGSIZE
        end = self.buf.find(b"\0", base, self.off_dt_struct + self.size_dt_struct)
        try:
            return self.buf[base:end].decode("ascii")
        except UnicodeDecodeError:
            raise self._bad("node name is not ASCII", base) from None

    def _check_node(self, offset: int) -> int:
        """Offset just past the node's BEGIN_NODE tag and name (``fdt_check_node_offset_``)."""
        tag, nxt = self.next_tag(offset)
        if tag != FDT_BEGIN_NODE:
            raise self._bad(f"structure offset {offset:#x} is not a node", self.off_dt_struct + offset)
        return nxt

    def property_at(self, offset: int) -> tuple[str, bytes]:
        base = self.off_dt_struct + offset
        _tag, length, nameoff = _PROP_HDR.unpack_from(self.buf, base)
        return self.string(nameoff), bytes(self.buf[base + 12 : base + 12 + length])

    def properties(self, node: int) -> list[tuple[int, str, bytes]]:
        """(offset, name, value) of each property of ``node``, in blob order."""
        out: list[tuple[int, str, bytes]] = []
        off = self._check_node(node)
        while True:
            tag, nxt = self.next_tag(off)
            if tag == FDT_PROP:
                out.append((off, *self.property_at(off)))
            elif tag != FDT_NOP:
                return out
            off = nxt

    def get_property(self, node: int, name: str) -> bytes | None:
        """``fdt_getprop``: the value, or None."""
        for _off, pname, value in self.properties(node):
            if pname == name:
                return value
        return None

    def subnodes(self, node: int) -> list[int]:
        """Offsets of the direct subnodes of ``node`` (``fdt_for_each_subnode``)."""
        out: list[int] = []
        off = self._check_node(node)
        depth = 0
        while True:
            tag, nxt = self.next_tag(off)
            if tag == FDT_BEGIN_NODE:
                if depth == 0:
                    out.append(off)
                depth += 1
            elif tag == FDT_END_NODE:
                if depth == 0:
                    return out
                depth -= 1
            elif tag == FDT_END:
                raise self._bad("FDT_END inside a node", self.off_dt_struct + off)
            off = nxt

    def node_end(self, node: int) -> int:
        """Offset just past the node's FDT_END_NODE (``fdt_node_end_offset_``)."""
        off = self._check_node(node)
        depth = 1
        while depth:
            tag, off = self.next_tag(off)
            if tag == FDT_BEGIN_NODE:
                depth += 1
            elif tag == FDT_END_NODE:
                depth -= 1
            elif tag == FDT_END:
                raise self._bad("FDT_END inside a node", self.off_dt_struct + off)
        return off

    def subnode_offset(self, parent: int, name: str) -> int | None:
        for off in self.subnodes(parent):
            if self.node_name(off) == name:
                return off
        return None

    def path_offset(self, path: str) -> int | None:
        """``fdt_path_offset`` for an absolute path without aliases; None when absent."""
        off = 0
        for part in (p for p in path.split("/") if p):
            found = self.subnode_offset(off, part)
            if found is None:
                return None
            off = found
        return off

    # -- writing (fdt_rw.c) -------------------------------------------------------------------
    def _data_size(self) -> int:
        """``fdt_data_size_``: where the last block ends."""
        return self.off_dt_strings + self.size_dt_strings

    def _splice(self, pos: int, oldlen: int, newlen: int) -> None:
        """``fdt_splice_``: make ``oldlen`` bytes at ``pos`` ``newlen`` long, moving what follows."""
        end = self._data_size()
        if pos + oldlen > end or end - oldlen + newlen < pos:
            raise self._bad("splice outside the blob", pos)
        if end - oldlen + newlen > self.totalsize:
            raise FdtNoSpaceError(f"needs {end - oldlen + newlen - self.totalsize} more bytes than totalsize "
                                  f"{self.totalsize}", offset=pos, source=self.source)
        tail = bytes(self.buf[pos + oldlen : end])
        self.buf[pos + newlen : pos + newlen + len(tail)] = tail

    def _splice_struct(self, offset: int, oldlen: int, newlen: int) -> None:
        delta = newlen - oldlen
        self._splice(self.off_dt_struct + offset, oldlen, newlen)
        self._hset(9, self.size_dt_struct + delta)
        self._hset(3, self.off_dt_strings + delta)

    def _find_add_string(self, name: str) -> int:
        """``fdt_find_add_string_``: the offset of ``name`` (first match of name + NUL anywhere in the
        block, so a suffix of a longer name counts), appending it when absent."""
        s = name.encode("ascii") + b"\0"
        base, size = self.off_dt_strings, self.size_dt_strings
        found = self.buf.find(s, base, base + size)
        if found >= 0:
            return found - base
        self._splice(base + size, 0, len(s))
        self.buf[base + size : base + size + len(s)] = s
        self._hset(8, size + len(s))
        return size

    def del_node(self, node: int) -> None:
        """``fdt_del_node``"""
        end = self.node_end(node)
        self._splice_struct(node, end - node, 0)

    def add_subnode(self, parent: int, name: str) -> int:
        """``fdt_add_subnode``: an empty node after ``parent``'s properties; its offset."""
        if self.subnode_offset(parent, name) is not None:
            raise self._bad(f"node {name!r} already exists", self.off_dt_struct + parent)
        off = self._check_node(parent)
        while True:
            tag, nxt = self.next_tag(off)
            if tag not in (FDT_PROP, FDT_NOP):
                break
            off = nxt
        raw = name.encode("ascii")
        namelen = fdt_tagalign(len(raw) + 1)
        nodelen = FDT_TAGSIZE + namelen + FDT_TAGSIZE
        self._splice_struct(off, 0, nodelen)
        base = self.off_dt_struct + off
        _U32.pack_into(self.buf, base, FDT_BEGIN_NODE)
        self.buf[base + 4 : base + 4 + namelen] = raw + bytes(namelen - len(raw))
        _U32.pack_into(self.buf, base + 4 + namelen, FDT_END_NODE)
        return off

    def setprop(self, node: int, name: str, value: bytes) -> None:
        """``fdt_setprop``: resize an existing property in place, or add one first in the node. The
        padding after a new value keeps whatever bytes the splice left there, as libfdt does."""
        for off, pname, old in self.properties(node):
            if pname == name:
                oldlen = fdt_tagalign(len(old))
                self._splice_struct(off + 12, oldlen, fdt_tagalign(len(value)))
                base = self.off_dt_struct + off
                _U32.pack_into(self.buf, base + 4, len(value))
                self.buf[base + 12 : base + 12 + len(value)] = value
                return
        allocated_from = self.size_dt_strings
        nameoff = self._find_add_string(name)
        off = self._check_node(node)
        proplen = 12 + fdt_tagalign(len(value))
        try:
            self._splice_struct(off, 0, proplen)
        except FdtNoSpaceError:
            if self.size_dt_strings != allocated_from:  # fdt_del_last_string_
                self._hset(8, allocated_from)
            raise
        base = self.off_dt_struct + off
        _PROP_HDR.pack_into(self.buf, base, FDT_PROP, len(value), nameoff)
        self.buf[base + 12 : base + 12 + len(value)] = value


class FdtNoSpaceError(FdtFormatError):
    """``-FDT_ERR_NOSPACE``: the edit does not fit in ``totalsize``."""
