"""A device tree blob as nodes and properties, and the writer back to a blob.

:func:`fdt_parse` keeps what the bytes say beyond the tree (reservation entries, where each block
sits, the strings block as laid out, the bytes between and after the blocks), so that
:func:`fdt_write` of an unchanged :class:`Fdt` gives the same bytes back. A writer that starts from
a bare tree (:meth:`Fdt.build`) lays the blocks out in the usual order (header, reservation map,
structure, strings) with property names stored in first-use order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from crash_hotplug.errors import FdtFormatError
from crash_hotplug.fdt.blob import (
    FDT_BEGIN_NODE,
    FDT_END,
    FDT_END_NODE,
    FDT_MAGIC,
    FDT_NOP,
    FDT_PROP,
    FDT_V17_SIZE,
    RSV_ENTRY,
    FdtBlob,
    FdtHeader,
    fdt_tagalign,
)

__all__ = ["Fdt", "FdtNode", "FdtProperty", "fdt_parse", "fdt_write"]

_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class FdtProperty:
    name: str
    value: bytes
    #: the bytes after the value up to the 4-byte tag alignment when they are not zero (libfdt's
    #: ``fdt_setprop`` leaves what was there); not part of the property's meaning
    pad: bytes = field(default=b"", compare=False)
    #: where the parsed blob pointed for the name (libfdt may point into a longer name's tail)
    nameoff: int | None = field(default=None, compare=False)

    def as_u32s(self) -> tuple[int, ...]:
        n = len(self.value) // 4
        return struct.unpack(f">{n}I", self.value[: 4 * n])

    def as_str(self) -> str:
        return self.value.rstrip(b"\0").decode("ascii", "replace")


@dataclass
class FdtNode:
    name: str
    props: list[FdtProperty] = field(default_factory=list)
    children: list[FdtNode] = field(default_factory=list)

    def prop(self, name: str) -> FdtProperty | None:
        return next((p for p in self.props if p.name == name), None)

    def child(self, name: str) -> FdtNode | None:
        return next((c for c in self.children if c.name == name), None)

    def find(self, path: str) -> FdtNode | None:
        node: FdtNode | None = self
        for part in (p for p in path.split("/") if p):
            node = node.child(part) if node is not None else None
        return node

    def walk(self, prefix: str = "") -> Iterator[tuple[str, FdtNode]]:
        path = prefix + "/" + self.name if prefix or self.name else "/"
        path = path.replace("//", "/")
        yield path, self
        for c in self.children:
            yield from c.walk("" if path == "/" else path)


@dataclass
class Fdt:
    """A parsed blob: the tree plus the layout needed to write the same bytes again."""

    root: FdtNode
    mem_rsvmap: list[tuple[int, int]]
    boot_cpuid_phys: int = 0
    version: int = 17
    last_comp_version: int = 16
    #: the strings block as laid out (names not found in it are appended by the writer)
    strings: bytes = b""
    #: (off_mem_rsvmap, off_dt_struct, totalsize); None lays the blocks out back to back
    layout: tuple[int, int, int] | None = None
    #: bytes of the blob that belong to no block, by offset (filler between blocks, free space)
    filler: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def build(cls, root: FdtNode, mem_rsvmap: list[tuple[int, int]], boot_cpuid_phys: int = 0,
              *, extra: int = 0) -> Fdt:
        """A new tree with the blocks back to back and ``extra`` free bytes at the end."""
        fdt = cls(root, mem_rsvmap, boot_cpuid_phys)
        if extra:
            size = len(fdt_write(fdt))
            fdt.layout = (FDT_V17_SIZE, FDT_V17_SIZE + RSV_ENTRY.size * (len(mem_rsvmap) + 1), size + extra)
        return fdt


def fdt_parse(data: bytes, source: str = "<bytes>") -> Fdt:
    """The tree and layout of the blob in ``data``; :class:`FdtFormatError` on bad bytes."""
    blob = FdtBlob(data, source)
    h = blob.header
    if h.version >= 17 and h.off_dt_strings < h.off_dt_struct + h.size_dt_struct and \
            h.off_dt_strings >= h.off_dt_struct:
        raise FdtFormatError("strings block overlaps the structure block", offset=12, source=source)
    stack: list[FdtNode] = []
    root: FdtNode | None = None
    off = 0
    while True:
        tag, nxt = blob.next_tag(off)
        if tag == FDT_BEGIN_NODE:
            node = FdtNode(blob.node_name(off))
            if stack:
                stack[-1].children.append(node)
            elif root is None:
                root = node
            else:
                raise FdtFormatError("a second root node", offset=h.off_dt_struct + off, source=source)
            stack.append(node)
        elif tag == FDT_PROP:
            if not stack:
                raise FdtFormatError("property outside any node", offset=h.off_dt_struct + off, source=source)
            name, value = blob.property_at(off)
            start = h.off_dt_struct + off + 12 + len(value)
            pad = bytes(blob.buf[start : h.off_dt_struct + nxt])
            nameoff = int(_U32.unpack_from(blob.buf, h.off_dt_struct + off + 8)[0])
            stack[-1].props.append(FdtProperty(name, value, pad if any(pad) else b"", nameoff))
        elif tag == FDT_END_NODE:
            if not stack:
                raise FdtFormatError("FDT_END_NODE without a node", offset=h.off_dt_struct + off, source=source)
            stack.pop()
        elif tag == FDT_END:
            break
        elif tag == FDT_NOP:
            raise FdtFormatError("FDT_NOP tags are not kept by this reader", offset=h.off_dt_struct + off,
                                 source=source)
        off = nxt
    if stack or root is None:
        raise FdtFormatError("structure block ends with a node open", offset=h.off_dt_struct + off, source=source)
    if nxt != h.size_dt_struct:
        raise FdtFormatError(f"{h.size_dt_struct - nxt} bytes after FDT_END in the structure block",
                             offset=h.off_dt_struct + nxt, source=source)
    rsv = blob.mem_rsvmap()
    fdt = Fdt(root, rsv, h.boot_cpuid_phys, h.version, h.last_comp_version,
              strings=bytes(blob.buf[h.off_dt_strings : h.off_dt_strings + h.size_dt_strings]),
              layout=(h.off_mem_rsvmap, h.off_dt_struct, h.totalsize))
    rsv_end = h.off_mem_rsvmap + RSV_ENTRY.size * (len(rsv) + 1)
    used = sorted([(0, FDT_V17_SIZE), (h.off_mem_rsvmap, rsv_end),
                   (h.off_dt_struct, h.off_dt_struct + h.size_dt_struct),
                   (h.off_dt_strings, h.off_dt_strings + h.size_dt_strings)])
    pos = 0
    for start, end in [*used, (h.totalsize, h.totalsize)]:
        if start > pos and any(blob.buf[pos:start]):
            fdt.filler[pos] = bytes(blob.buf[pos:start])
        pos = max(pos, end)
    return fdt


def _struct_block(fdt: Fdt) -> tuple[bytes, bytes]:
    strings = bytearray(fdt.strings)
    index: dict[str, int] = {}
    pos = 0
    for raw in bytes(strings).split(b"\0")[:-1]:
        index.setdefault(raw.decode("ascii", "replace"), pos)
        pos += len(raw) + 1

    def nameoff(p: FdtProperty) -> int:
        """The parsed offset when it still names the property; else a whole-name match in the kept
        strings block, else appended (as dtc and kexec-tools do)."""
        name = p.name
        raw = name.encode("ascii") + b"\0"
        if p.nameoff is not None and strings[p.nameoff : p.nameoff + len(raw)] == raw:
            return p.nameoff
        if name not in index:
            index[name] = len(strings)
            strings.extend(name.encode("ascii") + b"\0")
        return index[name]

    out = bytearray()

    def emit(node: FdtNode) -> None:
        raw = node.name.encode("ascii") + b"\0"
        out.extend(_U32.pack(FDT_BEGIN_NODE) + raw + bytes(fdt_tagalign(len(raw)) - len(raw)))
        for p in node.props:
            out.extend(struct.pack(">III", FDT_PROP, len(p.value), nameoff(p)))
            padlen = fdt_tagalign(len(p.value)) - len(p.value)
            out.extend(p.value + (p.pad if len(p.pad) == padlen else bytes(padlen)))
        for c in node.children:
            emit(c)
        out.extend(_U32.pack(FDT_END_NODE))

    emit(fdt.root)
    out.extend(_U32.pack(FDT_END))
    return bytes(out), bytes(strings)


def fdt_write(fdt: Fdt) -> bytes:
    """The blob for ``fdt``: the parsed layout when it has one, the blocks back to back otherwise."""
    dt_struct, dt_strings = _struct_block(fdt)
    rsv = b"".join(RSV_ENTRY.pack(a, s) for a, s in [*fdt.mem_rsvmap, (0, 0)])
    if fdt.layout is None:
        off_rsv = FDT_V17_SIZE
        off_struct = off_rsv + len(rsv)
        total = off_struct + len(dt_struct) + len(dt_strings)
    else:
        off_rsv, off_struct, total = fdt.layout
    off_strings = off_struct + len(dt_struct)
    if off_struct < off_rsv + len(rsv) or off_strings + len(dt_strings) > total:
        raise FdtFormatError(f"the tree ({len(dt_struct)} + {len(dt_strings)} bytes) does not fit the layout "
                             f"(totalsize {total})", offset=0)
    buf = bytearray(total)
    hdr = FdtHeader(FDT_MAGIC, total, off_struct, off_strings, off_rsv, fdt.version, fdt.last_comp_version,
                    fdt.boot_cpuid_phys, len(dt_strings), len(dt_struct))
    for off, raw in fdt.filler.items():
        buf[off : off + len(raw)] = raw
    buf[0:FDT_V17_SIZE] = hdr.pack()
    buf[off_rsv : off_rsv + len(rsv)] = rsv
    buf[off_struct:off_strings] = dt_struct
    buf[off_strings : off_strings + len(dt_strings)] = dt_strings
    return bytes(buf)
