"""makedumpfile's flattened format (``-F``, what goes over ssh): a stream of pieces of a file, each
with the file offset it belongs at (``makedumpfile.h``: ``makedumpfile_header``,
``makedumpfile_data_header``; ``makedumpfile -R`` puts them back).

A 4096-byte header (signature ``"makedumpfile"``, big-endian ``type`` 1 and ``version`` 1), then
any number of ``(offset, buf_size)`` big-endian headers each followed by ``buf_size`` bytes, in any
order, and an end marker whose offset and size are -1. :func:`rearrange` reads the stream once,
front to back (so it works on a pipe), writing each piece where it belongs, a bounded piece at a time.
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Final

from crash_hotplug.errors import DumpFormatError

__all__ = [
    "MDF_DATA_HEADER",
    "MDF_HEADER",
    "MDF_HEADER_SIZE",
    "MDF_SIGNATURE",
    "is_flattened",
    "rearrange",
    "write_flattened",
]

FMT: Final = "flattened"
MDF_SIGNATURE: Final = b"makedumpfile".ljust(16, b"\0")
TYPE_FLAT_HEADER: Final = 1
VERSION_FLAT_HEADER: Final = 1
#: signature, type, version (big-endian, whatever the dumped machine was)
MDF_HEADER: Final = struct.Struct(">16sqq")
MDF_HEADER_SIZE: Final = 4096
#: offset, buf_size
MDF_DATA_HEADER: Final = struct.Struct(">qq")
END_FLAG_FLAT_HEADER: Final = -1
#: no dump is larger than this; a piece placed past it is corruption, not data (a hostile offset
#: would otherwise make a sparse file of exabytes)
MAX_REARRANGED: Final = 1 << 50
_COPY: Final = 1 << 20


def is_flattened(head: bytes) -> bool:
    """True when ``head`` starts with the flattened format's signature."""
    return head[:16] == MDF_SIGNATURE


def _read_exact(src: BinaryIO, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = src.read(n - len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


def rearrange(src: BinaryIO, dst: BinaryIO, *, source: str = "<stream>", head: bytes = b"") -> int:
    """Write the file ``src`` flattens into ``dst`` (seekable); returns its size.

    ``head`` is what was already read from ``src`` (at most the 4096-byte header). Raises
    :class:`DumpFormatError` naming the stream position of a bad header, a piece that is cut short
    or a stream that ends without its end marker.
    """
    def bad(what: str, pos: int) -> DumpFormatError:
        return DumpFormatError(what, fmt=FMT, offset=pos, source=source)

    header = head + _read_exact(src, MDF_HEADER_SIZE - len(head))
    if len(header) < MDF_HEADER.size:
        raise bad(f"truncated: {len(header)} bytes, the makedumpfile header needs {MDF_HEADER.size}", 0)
    sig, typ, version = MDF_HEADER.unpack_from(header)
    if sig != MDF_SIGNATURE:
        raise bad(f"signature is {sig!r}, not 'makedumpfile'", 0)
    if typ != TYPE_FLAT_HEADER:
        raise bad(f"type is {typ}, not TYPE_FLAT_HEADER (1)", 16)
    if version != VERSION_FLAT_HEADER:
        raise bad(f"version is {version}, not 1", 24)
    if len(header) < MDF_HEADER_SIZE:
        raise bad(f"truncated: the stream ends at {len(header):#x}, inside the {MDF_HEADER_SIZE}-byte header", 0)
    pos = MDF_HEADER_SIZE
    size = 0
    while True:
        raw = _read_exact(src, MDF_DATA_HEADER.size)
        if len(raw) < MDF_DATA_HEADER.size:
            raise bad("truncated: the stream ends without the end marker (offset -1); was the transfer cut?", pos)
        offset, buf_size = MDF_DATA_HEADER.unpack(raw)
        if offset == END_FLAG_FLAT_HEADER and buf_size == END_FLAG_FLAT_HEADER:
            return size
        if offset < 0 or buf_size < 0 or offset + buf_size > MAX_REARRANGED:
            raise bad(f"data header offset {offset:#x} size {buf_size:#x}: not a place in a dump file", pos)
        pos += MDF_DATA_HEADER.size
        dst.seek(offset)
        left = buf_size
        while left:
            piece = src.read(min(left, _COPY))
            if not piece:
                raise bad(f"truncated: a piece of {buf_size} bytes for offset {offset:#x} is cut after "
                          f"{buf_size - left}", pos)
            dst.write(piece)
            left -= len(piece)
        pos += buf_size
        size = max(size, offset + buf_size)


def write_flattened(pieces: list[tuple[int, bytes]], out: BinaryIO) -> None:
    """A flattened stream of ``(offset, bytes)`` pieces in the order given, with its end marker."""
    out.write(MDF_HEADER.pack(MDF_SIGNATURE, TYPE_FLAT_HEADER, VERSION_FLAT_HEADER).ljust(MDF_HEADER_SIZE, b"\0"))
    for offset, data in pieces:
        out.write(MDF_DATA_HEADER.pack(offset, len(data)))
        out.write(data)
    out.write(MDF_DATA_HEADER.pack(END_FLAG_FLAT_HEADER, END_FLAG_FLAT_HEADER))
