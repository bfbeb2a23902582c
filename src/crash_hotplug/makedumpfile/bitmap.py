"""makedumpfile's page bitmaps, read piece by piece: one bit per pfn, bit ``pfn % 8`` of byte ``pfn // 8``.

Nothing here holds a whole bitmap: runs and counts stream over pieces of at most
:data:`CHUNK` bytes, and the rank index keeps one count per :data:`RANK_BLOCK` bytes, so a
512 GiB machine's 16 MiB bitmap costs a few KiB of memory and time proportional to its size
(long runs of 0x00 and 0xff bytes are skipped by the regular-expression engine, not by Python).
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Callable, Iterator
from typing import Final

from crash_hotplug.errors import DumpFormatError

__all__ = ["CHUNK", "RANK_BLOCK", "Bitmap", "RankIndex", "and_not", "merge_runs", "runs_of"]

#: reads ``size`` bytes at ``offset`` of the file (shorter at its end)
Reader = Callable[[int, int], bytes]
#: an inclusive run of pfns ``(first, last)``
Run = tuple[int, int]

CHUNK: Final = 1 << 20
RANK_BLOCK: Final = 4096
_PIECES: Final = re.compile(rb"\xff+|[^\x00\xff]", re.DOTALL)


def _byte_runs(b: int) -> tuple[Run, ...]:
    out: list[Run] = []
    bit = 0
    while bit < 8:
        if b >> bit & 1:
            start = bit
            while bit < 8 and b >> bit & 1:
                bit += 1
            out.append((start, bit - 1))
        else:
            bit += 1
    return tuple(out)


_BYTE_RUNS: Final = tuple(_byte_runs(b) for b in range(256))


def runs_of(chunk: bytes, first_bit: int) -> Iterator[Run]:
    """Runs of set bits in ``chunk`` (whose bit 0 is pfn ``first_bit``), not merged across pieces."""
    for m in _PIECES.finditer(chunk):
        s = m.start()
        if chunk[s] == 0xFF:
            yield first_bit + 8 * s, first_bit + 8 * m.end() - 1
        else:
            base = first_bit + 8 * s
            for a, z in _BYTE_RUNS[chunk[s]]:
                yield base + a, base + z


def merge_runs(runs: Iterator[Run]) -> Iterator[Run]:
    """Join runs that touch (the input ascending)."""
    cur: Run | None = None
    for s, e in runs:
        if cur is not None and s <= cur[1] + 1:
            cur = (cur[0], max(cur[1], e))
            continue
        if cur is not None:
            yield cur
        cur = (s, e)
    if cur is not None:
        yield cur


class Bitmap:
    """``nbits`` bits at ``offset`` of a file; bits past ``nbits`` in the last byte are ignored."""

    def __init__(self, read: Reader, offset: int, nbits: int, *, what: str, fmt: str) -> None:
        self.read = read
        self.offset = offset
        self.nbits = nbits
        self.nbytes = -(-nbits // 8)
        self.what = what
        self.fmt = fmt

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, bytes]]:
        """``(first pfn, bytes)`` pieces in order."""
        pos = 0
        while pos < self.nbytes:
            n = min(size, self.nbytes - pos)
            data = self.read(self.offset + pos, n)
            if len(data) != n:
                raise DumpFormatError(
                    f"truncated: the {self.what} ends at {self.offset + pos + len(data):#x}, "
                    f"{self.nbytes - pos - len(data)} bytes short", fmt=self.fmt, offset=self.offset + pos)
            if pos + n == self.nbytes and self.nbits % 8:
                data = data[:-1] + bytes([data[-1] & ((1 << (self.nbits % 8)) - 1)])
            yield pos * 8, data
            pos += n

    def runs(self) -> Iterator[Run]:
        """Runs of set bits, merged, ascending."""
        return merge_runs(r for base, c in self.chunks() for r in runs_of(c, base))

    def count(self) -> int:
        return sum(int.from_bytes(c, "little").bit_count() for _, c in self.chunks())

    def test(self, pfn: int) -> bool:
        if not 0 <= pfn < self.nbits:
            return False
        b = self.read(self.offset + pfn // 8, 1)
        return bool(b) and bool(b[0] >> (pfn % 8) & 1)


def and_not(a: Bitmap, b: Bitmap) -> Iterator[tuple[int, bytes]]:
    """Pieces of ``a & ~b`` (same length): pages in ``a`` that ``b`` lacks."""
    for (base, x), (_, y) in zip(a.chunks(), b.chunks(), strict=True):
        n = len(x)
        v = int.from_bytes(x, "little") & ~int.from_bytes(y, "little")
        yield base, (v & ((1 << (8 * n)) - 1)).to_bytes(n, "little")


class RankIndex:
    """How many bits are set before each pfn (the index of its ``page_desc``), one count per block.

    Built in one pass over the bitmap; a lookup reads one block. Memory: 8 bytes per
    :data:`RANK_BLOCK` bytes of bitmap (32 KiB for the 16 MiB bitmap of a 512 GiB machine).
    """

    def __init__(self, bitmap: Bitmap) -> None:
        self.bitmap = bitmap
        self.before = array("Q")
        total = 0
        for _, c in bitmap.chunks():
            for i in range(0, len(c), RANK_BLOCK):
                self.before.append(total)
                total += int.from_bytes(c[i : i + RANK_BLOCK], "little").bit_count()
        self.total = total

    def rank(self, pfn: int) -> int:
        """Set bits in ``[0, pfn)``."""
        if pfn >= self.bitmap.nbits:
            return self.total
        blk = pfn // (8 * RANK_BLOCK)
        start = blk * RANK_BLOCK
        data = self.bitmap.read(self.bitmap.offset + start, min(RANK_BLOCK, self.bitmap.nbytes - start))
        within = pfn - start * 8
        v = int.from_bytes(data, "little") & ((1 << within) - 1)
        return self.before[blk] + v.bit_count()
