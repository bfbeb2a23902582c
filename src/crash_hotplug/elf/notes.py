"""ELF note records as the kernel writes them (``kernel/vmcore_info.c``: ``append_elf_note``, ``final_note``).

A record is a 12-byte ``Elf64_Nhdr``, the name (with its NUL) padded to 4 bytes, and the
descriptor padded to 4 bytes. A list of records ends with an all-zero header.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from crash_hotplug.elf.structs import NHDR, unpack_at
from crash_hotplug.errors import ElfFormatError

__all__ = ["Note", "append_elf_note", "final_note", "iter_notes", "note_size", "pad4"]


def pad4(n: int) -> int:
    """Round ``n`` up to a multiple of 4 (the kernel's ``ALIGN(n, 4)`` for note fields)."""
    return (n + 3) & ~3


def note_size(name: str, desc_len: int) -> int:
    """Bytes one note record occupies: header, padded name with NUL, padded descriptor."""
    return NHDR.size + pad4(len(name) + 1) + pad4(desc_len)


@dataclass(frozen=True, slots=True)
class Note:
    """One note record: ``name`` without the NUL, ``n_type``, the descriptor bytes, where it sat."""

    name: str
    n_type: int
    desc: bytes
    offset: int = 0

    @property
    def size(self) -> int:
        return note_size(self.name, len(self.desc))


def append_elf_note(name: str, n_type: int, desc: bytes) -> bytes:
    """One note record (``append_elf_note``)."""
    raw_name = name.encode() + b"\0"
    return b"".join((
        NHDR.pack(len(raw_name), len(desc), n_type),
        raw_name.ljust(pad4(len(raw_name)), b"\0"),
        desc.ljust(pad4(len(desc)), b"\0"),
    ))


def final_note() -> bytes:
    """The all-zero header that ends a note list (``final_note``)."""
    return bytes(NHDR.size)


def iter_notes(buf: bytes | memoryview, offset: int = 0, size: int | None = None) -> Iterator[Note]:
    """Notes in ``buf[offset:offset+size]``, stopping at a zero ``n_namesz`` (as ``/proc/vmcore`` does).

    Raises :class:`ElfFormatError` when a record would run past the region or the buffer.
    """
    end = len(buf) if size is None else offset + size
    if end > len(buf):
        raise ElfFormatError(f"note region of {size} bytes runs past the end ({len(buf)} bytes)", offset=offset)
    pos = offset
    while pos + NHDR.size <= end:
        namesz, descsz, n_type = unpack_at(NHDR, buf, pos, "note header")
        if namesz == 0:
            return
        rec = NHDR.size + pad4(namesz) + pad4(descsz)
        if pos + rec > end:
            raise ElfFormatError(
                f"note of {rec} bytes (n_namesz {namesz}, n_descsz {descsz}) overflows its region ending at {end:#x}",
                offset=pos,
            )
        name_bytes = bytes(buf[pos + NHDR.size : pos + NHDR.size + namesz])
        name = name_bytes.rstrip(b"\0").decode("ascii", errors="replace")
        dstart = pos + NHDR.size + pad4(namesz)
        yield Note(name, n_type, bytes(buf[dstart : dstart + descsz]), pos)
        pos += rec
