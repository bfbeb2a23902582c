"""Placing segments in memory (``kernel/kexec_file.c``: ``struct kexec_buf``, ``kexec_add_buffer``,
``kexec_locate_mem_hole``, ``locate_mem_hole_top_down`` / ``_bottom_up``) and copying them in
(``kernel/kexec_core.c: kimage_load_segment``).

For a crash image the only window searched is ``crashk_res``. Kernels before 6.8 began the
top-down search one byte too low ("kexec_file: fix incorrect temp_start value in
locate_mem_hole_top_down()", Dec 2023), which moves page-sized segments down a page: the 6.1
vector's purgatory sits at 0x7effa000, 6.12's at 0x7effb000. Sizes are page-rounded and the
alignment at least a page; a candidate that overlaps a placed segment moves one page and retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from crash_hotplug.kexec.kimage import KEXEC_SEGMENT_MAX, KexecError, KexecSegment, Kimage
from crash_hotplug.machine.physmem import PAGE_SIZE, PhysMem

__all__ = [
    "KEXEC_BUF_MEM_UNKNOWN",
    "KexecBuf",
    "kexec_add_buffer",
    "kexec_locate_mem_hole",
    "kimage_load_segment",
    "locate_mem_hole_bottom_up",
    "locate_mem_hole_top_down",
]

KEXEC_BUF_MEM_UNKNOWN: Final = -1
ULONG_MAX: Final = (1 << 64) - 1
EADDRNOTAVAIL: Final = 99


def _align_up(n: int, a: int) -> int:
    return -(-n // a) * a


@dataclass
class KexecBuf:
    """``struct kexec_buf``: what to place and where it may go."""

    buffer: bytes
    bufsz: int
    memsz: int
    buf_align: int = 1
    buf_min: int = 0
    buf_max: int = ULONG_MAX
    top_down: bool = True
    mem: int = KEXEC_BUF_MEM_UNKNOWN
    name: str = ""
    #: kernels before the Dec 2023 fix started the top-down search one byte low
    #: (``temp_end - memsz`` instead of ``temp_end - memsz + 1``)
    top_down_off_by_one: bool = False


def locate_mem_hole_top_down(image: Kimage, start: int, end: int, kbuf: KexecBuf) -> bool:
    """Highest aligned spot in ``[start, end]`` that overlaps no placed segment."""
    temp_end = min(end, kbuf.buf_max)
    temp_start = temp_end - kbuf.memsz + (0 if kbuf.top_down_off_by_one else 1)
    while True:
        temp_start = temp_start // kbuf.buf_align * kbuf.buf_align
        if temp_start < start or temp_start < kbuf.buf_min:
            return False
        temp_end = temp_start + kbuf.memsz - 1
        if image.is_destination_range(temp_start, temp_end):
            temp_start -= PAGE_SIZE
            continue
        kbuf.mem = temp_start
        return True


def locate_mem_hole_bottom_up(image: Kimage, start: int, end: int, kbuf: KexecBuf) -> bool:
    """Lowest aligned spot in ``[start, end]`` that overlaps no placed segment."""
    temp_start = max(start, kbuf.buf_min)
    while True:
        temp_start = _align_up(temp_start, kbuf.buf_align)
        temp_end = temp_start + kbuf.memsz - 1
        if temp_end > end or temp_end > kbuf.buf_max:
            return False
        if image.is_destination_range(temp_start, temp_end):
            temp_start += PAGE_SIZE
            continue
        kbuf.mem = temp_start
        return True


def kexec_locate_mem_hole(image: Kimage, kbuf: KexecBuf, windows: list[tuple[int, int]]) -> None:
    """Try each window (``crashk_res`` for a crash image) until one has room; ``-EADDRNOTAVAIL``."""
    if kbuf.mem != KEXEC_BUF_MEM_UNKNOWN:
        return
    for start, end in windows:
        if end - start + 1 < kbuf.memsz or end < kbuf.buf_min or start > kbuf.buf_max:
            continue
        place = locate_mem_hole_top_down if kbuf.top_down else locate_mem_hole_bottom_up
        if place(image, start, end, kbuf):
            return
    raise KexecError(f"no room for {kbuf.name or 'segment'} of {kbuf.memsz:#x} bytes", EADDRNOTAVAIL)


def kexec_add_buffer(image: Kimage, kbuf: KexecBuf, windows: list[tuple[int, int]]) -> KexecSegment:
    """``kexec_add_buffer``: round memsz to a page, align to at least a page, place, append."""
    if not image.file_mode:
        raise KexecError("kexec_add_buffer is for kexec_file_load images")
    if image.nr_segments >= KEXEC_SEGMENT_MAX:
        raise KexecError(f"more than KEXEC_SEGMENT_MAX ({KEXEC_SEGMENT_MAX}) segments")
    kbuf.memsz = _align_up(kbuf.memsz, PAGE_SIZE)
    kbuf.buf_align = max(kbuf.buf_align, PAGE_SIZE)
    kexec_locate_mem_hole(image, kbuf, windows)
    seg = KexecSegment(kbuf.buffer, kbuf.bufsz, kbuf.mem, kbuf.memsz, kbuf.name)
    image.segments.append(seg)
    return seg


def kimage_load_segment(mem: PhysMem, seg: KexecSegment) -> None:
    """``kimage_load_crash_segment``: copy ``bufsz`` bytes to ``mem`` and zero the rest of ``memsz``.

    A small segment (up to 64 KiB: boot parameters, purgatory, a kexec-tools header) goes in one
    write of its buffer and zeros as one bytes object, the same object for the same buffer, so a
    reload that loads it where the last load put it is seen at once to change nothing. A larger one
    is two writes, the buffer and the zeros, each an object memory already holds when unchanged
    (a kernel's buffer, or the zeros behind a header that changed)."""
    data = seg.buf[: seg.bufsz]
    rest = seg.memsz - len(data)
    if rest <= 0:
        mem.write(seg.mem, data)
    elif type(data) is bytes and seg.memsz <= _PADDED_MAX_SIZE:
        mem.write(seg.mem, _padded(data, seg.memsz))
    else:
        mem.write(seg.mem, data)
        mem.zero(seg.mem + len(data), rest)


def _padded(data: bytes, memsz: int) -> bytes:
    """``data`` followed by zeros up to ``memsz`` bytes; the last few used are kept by the buffer's
    identity (the entry holds the buffer, so its ``id`` cannot be reused while it is kept)."""
    key = (id(data), memsz)
    hit = _PADDED.pop(key, None)
    if hit is not None and hit[0] is data:
        # most recently used last: the purgatory and boot parameters of every reload stay while headers come and go
        _PADDED[key] = hit
        return hit[1]
    padded = data + bytes(memsz - len(data))
    if len(_PADDED) >= _PADDED_MAX:
        del _PADDED[next(iter(_PADDED))]
    _PADDED[key] = (data, padded)
    return padded


#: padded segment buffers by (id of the buffer, memsz): (buffer, padded bytes)
_PADDED: dict[tuple[int, int], tuple[bytes, bytes]] = {}
_PADDED_MAX: Final = 16
_PADDED_MAX_SIZE: Final = 64 << 10
