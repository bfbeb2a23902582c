"""Physical memory with read-only ranges, as ``arch_kexec_protect_crashkres`` leaves the
crashkernel region (``arch/x86/kernel/machine_kexec_64.c: kexec_mark_crashkres``).

A write that touches a protected range raises :class:`ProtectedMemoryWriteError`; the kexec code
unprotects around its own writes.
"""

from __future__ import annotations

from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.machine.physmem import PAGE_SIZE, PhysMem

#: ``PAGE_SHIFT``, and the offset bits within a page
_PAGE_SHIFT = PAGE_SIZE.bit_length() - 1
_PAGE_MASK = PAGE_SIZE - 1

__all__ = ["GuardedPhysMem", "ProtectedMemoryWriteError"]


class ProtectedMemoryWriteError(CrashHotplugError):
    """A write into a range that was made read-only (the loaded crashkernel region)."""

    def __init__(self, paddr: int, size: int, rng: tuple[int, int]) -> None:
        self.paddr = paddr
        self.size = size
        self.range = rng
        super().__init__(
            f"write of {size} bytes at {paddr:#x} hits read-only memory [{rng[0]:#x}-{rng[1]:#x}]")


class GuardedPhysMem(PhysMem):
    """:class:`PhysMem` whose writes check a set of read-only inclusive ranges."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._ro: set[tuple[int, int]] = set()
        #: the span of every read-only range (a write outside it needs no look at each)
        self._ro_lo = 1 << 64
        self._ro_hi = -1

    @property
    def protected(self) -> tuple[tuple[int, int], ...]:
        return tuple(sorted(self._ro))

    def protect(self, start: int, end: int) -> None:
        """Make ``[start, end]`` read-only (``set_memory_ro``)."""
        self._ro.add((start, end))
        if start < self._ro_lo:
            self._ro_lo = start
        if end > self._ro_hi:
            self._ro_hi = end

    def unprotect(self, start: int, end: int) -> None:
        """Make ``[start, end]`` writable again (``set_memory_rw``)."""
        self._ro.discard((start, end))
        if not self._ro:
            self._ro_lo, self._ro_hi = 1 << 64, -1
        elif start == self._ro_lo or end == self._ro_hi:
            self._ro_lo = min(s for s, _ in self._ro)
            self._ro_hi = max(e for _, e in self._ro)

    def is_protected(self, paddr: int, size: int = 1) -> bool:
        return any(not (paddr + size - 1 < s or paddr > e) for s, e in self._ro)

    def write(self, paddr: int, data: bytes) -> None:
        n = len(data)
        if not n:
            return
        if paddr <= self._ro_hi and paddr + n > self._ro_lo:
            last = paddr + n - 1
            for rng in self._ro:
                if last >= rng[0] and paddr <= rng[1]:
                    raise ProtectedMemoryWriteError(paddr, n, rng)
        self.writes += 1
        if self._held:
            held = self._held.get((paddr, n))
            if held is not None and (held is data or held == data):
                # memory holds these bytes already (a reload's segment where the last load put it)
                return
            if paddr < self._held_hi and self._held_lo < paddr + n:
                self._changing(paddr, paddr + n, data)
        off = paddr & _PAGE_MASK
        if off + n <= PAGE_SIZE:
            pfn = paddr >> _PAGE_SHIFT
            if n == PAGE_SIZE:
                # one whole page (a header page copied by the hotplug handler), stored as it is
                self._pages[pfn] = bytearray(data)
                self._page_span(pfn, pfn + 1)
                return
            # within one page (the 8-byte table entries, the notes)
            self._store(paddr, data)
            return
        # whole pages are stored as they are (no need to start from the pattern)
        head = -paddr % PAGE_SIZE
        if head:
            self._store(paddr, data[:head])
        whole = (len(data) - head) // PAGE_SIZE
        pos = head + whole * PAGE_SIZE
        if whole:
            # one bytearray per page, made and stored at C speed (a reload copies megabytes)
            view = memoryview(data)
            slices = map(slice, range(head, pos, PAGE_SIZE), range(head + PAGE_SIZE, pos + 1, PAGE_SIZE))
            first = (paddr + head) // PAGE_SIZE
            pages = map(bytearray, map(view.__getitem__, slices))
            self._pages.update(zip(range(first, first + whole), pages, strict=True))
            self._page_span(first, first + whole)
        if pos < len(data):
            self._store(paddr + pos, data[pos:])
        if type(data) is bytes:
            self._remember(paddr, data)
