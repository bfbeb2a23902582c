"""Physical memory that holds bytes: sparse pages over a deterministic background pattern.

A page nobody wrote reads as :func:`page_pattern` of its frame number and the machine's seed, so a
vmcore taken from the model can be checked byte for byte without storing gigabytes. Writes (the
kdump segments, ``crash_notes``, VMCOREINFO) are kept page by page. Large regions whose every page
holds the same bytes (the ``struct page`` array behind ``vmemmap``) are kept once, as a fill
(:meth:`PhysMem.fill`); they count as written.

A model machine written out as a snapshot records its seed in :data:`MODEL_STATE_FILE`, so a tool
reading the snapshot (the vmcore audit) can recompute the expected bytes of any unwritten page.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import deque
from itertools import repeat
from typing import Final, Protocol

__all__ = ["MODEL_STATE_FILE", "PAGE_SIZE", "MemoryReader", "PhysMem", "page_pattern", "zeros"]

PAGE_SIZE: Final = 4096
#: snapshot file (beside proc/ and sys/) that a model machine writes: JSON with at least
#: ``{"memory_pattern_seed": int}``
MODEL_STATE_FILE: Final = "var/lib/crash-hotplug/machine.json"


#: ranges of this many bytes (at least, at most) read or written whole are remembered until memory
#: under them changes, at most :data:`_HELD_MAX` of them
_HELD_SIZES: Final = (2 * PAGE_SIZE, 2 << 20)
_HELD_MAX: Final = 32
#: pfn bits of a granule of :attr:`PhysMem._granules` (2 MiB)
_GRANULE_BITS: Final = 9
#: zero-filled buffers by size (see :meth:`PhysMem.zero`)
_ZEROS: dict[int, bytes] = {}


class MemoryReader(Protocol):
    """Anything that can read physical memory."""

    def read(self, paddr: int, size: int) -> bytes: ...


def zeros(size: int) -> bytes:
    """``size`` zero bytes; up to 2 MiB the same object for the same size, so a write of zeros
    memory already holds (a reload's zeroed buffer where the last one was) is seen at once."""
    z = _ZEROS.get(size)
    if z is None:
        z = bytes(size)
        if size <= _HELD_SIZES[1]:
            if len(_ZEROS) >= _HELD_MAX:
                del _ZEROS[next(iter(_ZEROS))]
            _ZEROS[size] = z
    return z


def page_pattern(pfn: int, seed: int = 0) -> bytes:
    """The 4096 bytes an unwritten page frame holds: SHA-256 of (seed, pfn) repeated."""
    block = hashlib.sha256(seed.to_bytes(8, "little") + pfn.to_bytes(8, "little")).digest()
    return block * (PAGE_SIZE // len(block))


class PhysMem:
    """Sparse physical memory: written pages are stored, every other page reads as its pattern."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._pages: dict[int, bytearray] = {}
        #: sorted, disjoint ``[start_pfn, end_pfn)`` regions whose unwritten pages all hold one page of bytes
        self._fills: list[tuple[int, int, bytes]] = []
        #: how many writes were made (cheap change detection for observers)
        self.writes = 0
        #: what memory holds at (paddr, size), for large ranges just read or written whole, until
        #: a change touches them: a digest of the kdump segments reads the same megabytes after
        #: every header rewrite, and a reload writes the same segments where the last one did
        self._held: dict[tuple[int, int], bytes] = {}
        self._held_lo = 1 << 64
        self._held_hi = 0
        #: the 2 MiB granules (pfn >> 9) a page was ever stored in: a drop over granules outside
        #: it has nothing to forget
        self._granules: set[int] = set()

    def _page_span(self, first: int, end: int) -> None:
        """Pages ``[first, end)`` were stored."""
        if first + 1 == end:
            self._granules.add(first >> _GRANULE_BITS)
        else:
            self._granules.update(range(first >> _GRANULE_BITS, ((end - 1) >> _GRANULE_BITS) + 1))

    def _remember(self, paddr: int, data: bytes) -> None:
        """Memory at ``paddr`` holds ``data`` (immutable) now."""
        if _HELD_SIZES[0] <= len(data) <= _HELD_SIZES[1]:
            if len(self._held) >= _HELD_MAX:
                del self._held[next(iter(self._held))]
            self._held[(paddr, len(data))] = data
            # bounds of every range remembered since the memory was last empty (a change outside
            # them needs no look at each)
            self._held_lo = min(self._held_lo, paddr)
            self._held_hi = max(self._held_hi, paddr + len(data))

    def _holds(self, paddr: int, data: bytes) -> bool:
        """Is ``data`` known to be what memory holds at ``paddr`` (a write of it would change nothing)?"""
        held = self._held.get((paddr, len(data)))
        return held is not None and (held is data or held == data)

    def _changing(self, start: int, end: int, data: bytes | None = None) -> None:
        """``[start, end)`` is about to change (to ``data``, when it is a write): forget what is
        remembered over it. Every change of memory calls it first (a write that falls outside the
        span of everything remembered may skip the call: it would find nothing). A small write of
        what memory already holds changes nothing and keeps the memory of the range around it."""
        if self._held and start < self._held_hi and self._held_lo < end:
            hit = [k for k in self._held if k[0] < end and start < k[0] + k[1]]
            if hit and (data is None or len(data) > PAGE_SIZE or not self._same(start, data)):
                for k in hit:
                    del self._held[k]
                if not self._held:
                    self._held_lo, self._held_hi = 1 << 64, 0

    def _same(self, paddr: int, data: bytes) -> bool:
        """Does memory at ``paddr`` hold ``data`` (at most a page) already? Compared in place."""
        pfn, off = divmod(paddr, PAGE_SIZE)
        if off + len(data) > PAGE_SIZE:
            return self._read(paddr, len(data)) == data
        stored = self._pages.get(pfn)
        page = stored if stored is not None else self._unwritten(pfn)
        if off == 0 and len(data) == PAGE_SIZE:
            return page == data
        return page[off : off + len(data)] == data

    def _unwritten(self, pfn: int) -> bytes:
        """What a page that holds no write reads as: its fill, or its pattern."""
        i = bisect.bisect_right(self._fills, (pfn, 1 << 64)) - 1
        if i >= 0 and self._fills[i][0] <= pfn < self._fills[i][1]:
            return self._fills[i][2]
        return page_pattern(pfn, self.seed)

    def _page(self, pfn: int) -> bytearray:
        page = self._pages.get(pfn)
        if page is None:
            page = bytearray(self._unwritten(pfn))
            self._pages[pfn] = page
            self._page_span(pfn, pfn + 1)
        return page

    def fill(self, paddr: int, size: int, page: bytes) -> None:
        """Every page of the page-aligned range ``[paddr, paddr + size)`` holds ``page`` (kept once)."""
        if paddr % PAGE_SIZE or size % PAGE_SIZE or len(page) != PAGE_SIZE:
            raise ValueError("a fill covers whole pages with one page of bytes")
        start, end = paddr // PAGE_SIZE, (paddr + size) // PAGE_SIZE
        self.writes += 1
        self._changing(paddr, paddr + size)
        fills = self._fills
        i = bisect.bisect_left(fills, (start,))
        if (i == 0 or fills[i - 1][1] <= start) and (i == len(fills) or end <= fills[i][0]):
            # between fills, over none (a memmap for a hot-added section): nothing to cut
            fills.insert(i, (start, end, bytes(page)))
        else:
            self._unfill(start, end)
            bisect.insort(fills, (start, end, bytes(page)))
        self._drop_pages(start, end)

    def _drop_pages(self, start: int, end: int) -> None:
        """Forget stored pages with pfn in ``[start, end)``."""
        if end <= start:
            return
        granules = range(start >> _GRANULE_BITS, ((end - 1) >> _GRANULE_BITS) + 1)
        if len(granules) <= 64 and self._granules.isdisjoint(granules):
            return
        if end - start < len(self._pages):
            # the pops run at C speed (a fill of a 2 MiB memmap is 512 of them)
            deque(map(self._pages.pop, range(start, end), repeat(None)), maxlen=0)
        else:
            for pfn in [p for p in self._pages if start <= p < end]:
                del self._pages[pfn]

    def _unfill(self, start: int, end: int) -> None:
        """Drop fills over ``[start, end)`` pfns (keeping the parts outside)."""
        fills = self._fills
        lo = max(0, bisect.bisect_right(fills, (start, 1 << 64)) - 1)
        hi = bisect.bisect_left(fills, (end, 0))
        kept: list[tuple[int, int, bytes]] = []
        for s, e, page in fills[lo:hi]:
            if e <= start or s >= end:
                kept.append((s, e, page))
                continue
            if s < start:
                kept.append((s, start, page))
            if e > end:
                kept.append((end, e, page))
        fills[lo:hi] = kept

    def read(self, paddr: int, size: int) -> bytes:
        off = paddr % PAGE_SIZE
        if off + size <= PAGE_SIZE:
            # within one page (a table entry, an ELF header): the common case, without a call
            if size <= 0:
                return b""
            pfn = paddr // PAGE_SIZE
            page = self._pages.get(pfn)
            return bytes((page if page is not None else self._unwritten(pfn))[off : off + size])
        if not _HELD_SIZES[0] <= size <= _HELD_SIZES[1]:
            return self._read(paddr, size)
        data = self._held.get((paddr, size))
        if data is None:
            data = self._read(paddr, size)
            self._remember(paddr, data)
        return data

    def _read(self, paddr: int, size: int) -> bytes:
        first, off = divmod(paddr, PAGE_SIZE)
        if off + size <= PAGE_SIZE:
            # within one page (read answers those itself; this is for the other callers)
            page = self._pages.get(first)
            return bytes((page if page is not None else self._unwritten(first))[off : off + size])
        last = (paddr + size - 1) // PAGE_SIZE
        pages = self._pages
        unwritten = self._unwritten if self._fills else lambda pfn: page_pattern(pfn, self.seed)
        if first + 1 == last:
            # across one page boundary (a program header table): two slices
            stored_head, stored_tail = pages.get(first), pages.get(last)
            head = unwritten(first) if stored_head is None else stored_head
            rest = unwritten(last) if stored_tail is None else stored_tail
            return bytes(head[off:] + rest[: paddr + size - last * PAGE_SIZE])
        parts: list[bytes | bytearray | memoryview]
        parts = [pages.get(pfn) or unwritten(pfn) for pfn in range(first, last + 1)]
        # the partial first and last pages joined through views (one copy of the bytes asked for)
        if off:
            parts[0] = memoryview(parts[0])[off:]
        tail = paddr + size - last * PAGE_SIZE
        if tail < PAGE_SIZE:
            parts[-1] = memoryview(parts[-1])[:tail]
        return b"".join(parts)

    def write(self, paddr: int, data: bytes) -> None:
        self.writes += 1
        if self._held:
            if self._holds(paddr, data):
                return
            self._changing(paddr, paddr + len(data), data)
        self._store(paddr, data)

    def _store(self, paddr: int, data: bytes) -> None:
        """Put ``data`` in the pages (what a write does once it is known to be allowed)."""
        pfn, off = divmod(paddr, PAGE_SIZE)
        if off + len(data) <= PAGE_SIZE and data:
            # within one page (a table entry, a note): the common case, without the loop
            page = self._pages.get(pfn)
            if page is None:
                page = self._page(pfn)
            page[off : off + len(data)] = data
            return
        pos, i = paddr, 0
        while i < len(data):
            pfn, off = divmod(pos, PAGE_SIZE)
            n = min(PAGE_SIZE - off, len(data) - i)
            self._page(pfn)[off : off + n] = data[i : i + n]
            pos += n
            i += n

    def zero(self, paddr: int, size: int) -> None:
        """Fill a range with zeros (a fresh allocation, a cleared buffer)."""
        self.write(paddr, zeros(size))

    def discard(self, start: int, end: int) -> None:
        """Forget writes to pages in ``[start, end]`` (memory that left the machine)."""
        self._changing(start // PAGE_SIZE * PAGE_SIZE, (end // PAGE_SIZE + 1) * PAGE_SIZE)
        self._drop_pages(-(-start // PAGE_SIZE), end // PAGE_SIZE + 1)
        self._unfill(start // PAGE_SIZE, end // PAGE_SIZE + 1)

    @property
    def written_pages(self) -> int:
        return len(self._pages)

    def written_ranges(self) -> list[tuple[int, int]]:
        """Inclusive byte ranges of the pages that were written or filled (and so may differ from the pattern)."""
        spans = sorted([(pfn, pfn + 1) for pfn in self._pages] + [(s, e) for s, e, _ in self._fills])
        out: list[tuple[int, int]] = []
        for s, e in spans:
            if out and out[-1][1] + 1 >= s * PAGE_SIZE:
                out[-1] = (out[-1][0], max(out[-1][1], e * PAGE_SIZE - 1))
            else:
                out.append((s * PAGE_SIZE, e * PAGE_SIZE - 1))
        return out
