"""Memory hotplug (``mm/memory_hotplug.c``, ``drivers/base/memory.c``, ``include/linux/memory.h``).

Physical memory is the iomem tree's ``System RAM`` plus sysfs memory blocks of
``block_size_bytes`` each. A DIMM hot-add (``add_memory``) inserts one ``System RAM`` resource for
the whole DIMM, creates its blocks offline and, unless ``auto_online_blocks`` is ``offline``,
onlines each block on its own; every block transition runs the memory notifier chain
(``MEM_GOING_ONLINE`` then ``MEM_ONLINE``, or ``MEM_CANCEL_ONLINE`` on a veto). A DIMM hot-remove
(ACPI eject) first offlines every block (``MEM_GOING_OFFLINE``, ``MEM_OFFLINE`` per block) and
only then removes the blocks and releases the resource (``__remove_memory``); the bytes the DIMM
held are forgotten.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.machine.notifier import (
    NOTIFY_STOP_MASK,
    BlockingNotifierChain,
    NotifierBlock,
    notifier_to_errno,
)
from crash_hotplug.machine.physmem import PAGE_SIZE, PhysMem
from crash_hotplug.machine.resource import SYSTEM_RAM, Resource, system_ram_ranges

__all__ = [
    "AUTO_ONLINE_POLICIES",
    "MEMORY_BLOCK_SIZE",
    "MEM_CANCEL_OFFLINE",
    "MEM_CANCEL_ONLINE",
    "MEM_GOING_OFFLINE",
    "MEM_GOING_ONLINE",
    "MEM_NAMES",
    "MEM_OFFLINE",
    "MEM_ONLINE",
    "Dimm",
    "MemoryArch",
    "MemoryBlock",
    "MemoryBlockBusyError",
    "MemoryHotplug",
    "MemoryHotplugError",
    "MemoryNotifierVetoError",
    "MemoryNotify",
    "MemoryRangeError",
]

#: ``include/linux/memory.h``
MEM_ONLINE: Final = 1 << 0
MEM_GOING_OFFLINE: Final = 1 << 1
MEM_OFFLINE: Final = 1 << 2
MEM_GOING_ONLINE: Final = 1 << 3
MEM_CANCEL_ONLINE: Final = 1 << 4
MEM_CANCEL_OFFLINE: Final = 1 << 5
MEM_NAMES: Final = {
    MEM_ONLINE: "MEM_ONLINE", MEM_GOING_OFFLINE: "MEM_GOING_OFFLINE", MEM_OFFLINE: "MEM_OFFLINE",
    MEM_GOING_ONLINE: "MEM_GOING_ONLINE", MEM_CANCEL_ONLINE: "MEM_CANCEL_ONLINE",
    MEM_CANCEL_OFFLINE: "MEM_CANCEL_OFFLINE",
}

#: x86_64 ``MIN_MEMORY_BLOCK_SIZE`` (the default below 64 GiB of RAM)
MEMORY_BLOCK_SIZE: Final = 128 << 20
#: values ``/sys/devices/system/memory/auto_online_blocks`` accepts (``mhp_online_type_to_str``)
AUTO_ONLINE_POLICIES: Final = ("offline", "online", "online_kernel", "online_movable")
_ZONE_OF_POLICY: Final = {"online": "Normal", "online_kernel": "Normal", "online_movable": "Movable"}


class MemoryHotplugError(CrashHotplugError):
    """A memory hotplug step the kernel refuses; ``errno`` is the kernel's code."""

    errno: int = 22

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(what)


class MemoryRangeError(MemoryHotplugError):
    """``add_memory`` of a range that is unaligned to the block size or overlaps iomem (``-EEXIST``)."""


class MemoryBlockBusyError(MemoryHotplugError):
    """``-EBUSY``: the block holds unmovable (boot, kernel-zone) memory and cannot go offline."""

    errno = 16


class MemoryNotifierVetoError(MemoryHotplugError):
    """A memory notifier refused ``MEM_GOING_ONLINE`` / ``MEM_GOING_OFFLINE``; the step was cancelled."""

    def __init__(self, block: int, action: int, errno: int) -> None:
        self.block = block
        self.action = action
        self.errno = errno or 16
        super().__init__(f"memory{block}: a notifier refused {MEM_NAMES[action]} (errno {-self.errno})")


@dataclass(frozen=True)
class MemoryNotify:
    """``struct memory_notify``: the block's first page frame and its size in pages."""

    start_pfn: int
    nr_pages: int

    @property
    def start(self) -> int:
        return self.start_pfn * PAGE_SIZE

    @property
    def end(self) -> int:
        """Inclusive last byte."""
        return (self.start_pfn + self.nr_pages) * PAGE_SIZE - 1


@dataclass
class MemoryBlock:
    """``struct memory_block``: ``memoryN`` in sysfs, N = ``phys_index``."""

    phys_index: int
    online: bool
    #: the zone an online block lies in (``none`` when it spans two), as ``valid_zones`` prints it
    zone: str
    #: name of the DIMM it belongs to; None for boot memory
    dimm: str | None = None

    @property
    def state(self) -> str:
        """``memoryN/state``"""
        return "online" if self.online else "offline"

    def valid_zones(self) -> str:
        """``memoryN/valid_zones``: the zone when online; the zones it may go to when offline."""
        return self.zone if self.online else "Normal Movable"


@dataclass(frozen=True)
class Dimm:
    """A pc-dimm: one ``System RAM`` resource covering ``size`` bytes from ``start``."""

    name: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size - 1


class MemoryArch(Protocol):
    """What the architecture and ``mm/sparse.c`` do for a range of memory: map it and give it
    sections (``arch_add_memory``), unmap it (``arch_remove_memory``), and flag its sections online
    or offline (``online_mem_sections`` / ``offline_mem_sections``). Ranges are inclusive."""

    def arch_add_memory(self, start: int, size: int) -> None: ...

    def arch_remove_memory(self, start: int, size: int) -> None: ...

    def online_mem_sections(self, start: int, end: int) -> None: ...

    def offline_mem_sections(self, start: int, end: int) -> None: ...


@dataclass
class MemoryHotplug:
    """Memory blocks, DIMMs and the memory notifier chain over an iomem tree and :class:`PhysMem`.

    ``trace`` records ``(action, phys_index, system_ram_in_iomem)`` for every notifier call, so a
    test can check the kernel's ordering.
    """

    iomem: Resource
    mem: PhysMem
    block_size: int = MEMORY_BLOCK_SIZE
    auto_online_blocks: str = "online_movable"
    blocks: dict[int, MemoryBlock] = field(default_factory=dict)
    dimms: dict[str, Dimm] = field(default_factory=dict)
    chain: BlockingNotifierChain[MemoryNotify] = field(
        default_factory=lambda: BlockingNotifierChain("memory_chain"))
    trace: list[tuple[int, int, bool]] = field(default_factory=list)
    #: the kernel structures that follow memory hotplug (direct map, ``mem_section``), when modelled
    arch: MemoryArch | None = None

    # -- notifier ----------------------------------------------------------------------------
    def register_memory_notifier(self, call: Callable[[int, MemoryNotify], int], priority: int = 0,
                                 name: str = "") -> NotifierBlock[MemoryNotify]:
        """``register_memory_notifier``; returns the block so it can be unregistered."""
        nb: NotifierBlock[MemoryNotify] = NotifierBlock(call, priority, name)
        self.chain.register(nb)
        return nb

    def unregister_memory_notifier(self, nb: NotifierBlock[MemoryNotify]) -> None:
        self.chain.unregister(nb)

    def memory_notify(self, action: int, block: MemoryBlock, arg: MemoryNotify | None = None) -> int:
        """``memory_notify``: run the chain for one block; the chain's return value. ``arg`` is
        the block's :class:`MemoryNotify` when the caller made it already (``online_pages`` and
        ``offline_pages`` pass the same one to both of their calls, as the kernel does)."""
        if arg is None:
            pages = self.block_size // PAGE_SIZE
            arg = MemoryNotify(block.phys_index * pages, pages)
        self.trace.append((action, block.phys_index, self._ram_covers(arg.start_pfn * PAGE_SIZE)))
        return self.chain.call_chain(action, arg)

    def _ram_covers(self, addr: int) -> bool:
        # System RAM ranges are disjoint and in address order: the one that may hold addr is the
        # last that starts at or below it
        rams = system_ram_ranges(self.iomem)
        i = bisect.bisect_right(rams, (addr, 1 << 64)) - 1
        return i >= 0 and rams[i][0] <= addr <= rams[i][1]

    # -- blocks ------------------------------------------------------------------------------
    def block(self, index: int) -> MemoryBlock:
        b = self.blocks.get(index)
        if b is None:
            raise MemoryHotplugError(f"memory{index}: no such memory block")
        return b

    def block_range(self, index: int) -> tuple[int, int]:
        """Inclusive physical range of block ``index``."""
        return index * self.block_size, (index + 1) * self.block_size - 1

    @property
    def online_blocks(self) -> tuple[int, ...]:
        return tuple(i for i, b in sorted(self.blocks.items()) if b.online)

    def online_pages(self, index: int, zone: str = "Movable") -> None:
        """``online_pages`` (``memoryN/state`` <- ``online``): GOING_ONLINE, then ONLINE or CANCEL_ONLINE."""
        b = self.block(index)
        if b.online:
            return
        pages = self.block_size // PAGE_SIZE
        arg = MemoryNotify(index * pages, pages)
        ret = self.memory_notify(MEM_GOING_ONLINE, b, arg)
        if ret & NOTIFY_STOP_MASK:
            self.memory_notify(MEM_CANCEL_ONLINE, b, arg)
            raise MemoryNotifierVetoError(index, MEM_GOING_ONLINE, -notifier_to_errno(ret))
        b.online = True
        b.zone = zone
        if self.arch is not None:
            self.arch.online_mem_sections(*self.block_range(index))
        self.memory_notify(MEM_ONLINE, b, arg)

    def offline_pages(self, index: int) -> None:
        """``offline_pages`` (``memoryN/state`` <- ``offline``): GOING_OFFLINE, then OFFLINE or
        CANCEL_OFFLINE. Boot memory outside ``ZONE_MOVABLE`` is refused with ``-EBUSY``."""
        b = self.block(index)
        if not b.online:
            return
        if b.dimm is None and b.zone != "Movable":
            raise MemoryBlockBusyError(f"memory{index}: zone {b.zone} holds unmovable pages; cannot offline")
        pages = self.block_size // PAGE_SIZE
        arg = MemoryNotify(index * pages, pages)
        ret = self.memory_notify(MEM_GOING_OFFLINE, b, arg)
        if ret & NOTIFY_STOP_MASK:
            self.memory_notify(MEM_CANCEL_OFFLINE, b, arg)
            raise MemoryNotifierVetoError(index, MEM_GOING_OFFLINE, -notifier_to_errno(ret))
        b.online = False
        if self.arch is not None:
            self.arch.offline_mem_sections(*self.block_range(index))
        self.memory_notify(MEM_OFFLINE, b, arg)

    # -- DIMMs -------------------------------------------------------------------------------
    def add_memory(self, name: str, start: int, size: int, *, online: str | None = None) -> Dimm:
        """``add_memory``: one ``System RAM`` resource, then the blocks, then auto-online each block
        in address order (policy ``online`` or, by default, ``auto_online_blocks``)."""
        if name in self.dimms:
            raise MemoryRangeError(f"{name}: a DIMM of that name is present")
        if size <= 0 or start % self.block_size or size % self.block_size:
            raise MemoryRangeError(
                f"{name}: [{start:#x}, +{size:#x}) is not aligned to the memory block size {self.block_size:#x}")
        policy = self.auto_online_blocks if online is None else online
        if policy not in AUTO_ONLINE_POLICIES:
            raise MemoryHotplugError(f"unknown online policy {policy!r}")
        dimm = Dimm(name, start, size)
        try:
            self.iomem.insert(Resource(start, dimm.end, SYSTEM_RAM))
        except ValueError as e:
            raise MemoryRangeError(f"{name}: {e}") from None
        first = start // self.block_size
        indices = range(first, first + size // self.block_size)
        if any(i in self.blocks for i in indices):
            # refused as register_memory_resource refuses a conflict: the tree as it was, the
            # resources the new one had taken in put back
            for child in self.iomem.remove(start, dimm.end, SYSTEM_RAM).children:
                self.iomem.insert(child)
            raise MemoryRangeError(f"{name}: memory blocks already exist in [{start:#x}-{dimm.end:#x}]")
        self.dimms[name] = dimm
        if self.arch is not None:
            self.arch.arch_add_memory(start, size)
        for i in indices:
            self.blocks[i] = MemoryBlock(i, False, "Movable", name)
        if policy != "offline":
            for i in indices:
                self.online_pages(i, _ZONE_OF_POLICY[policy])
        return dimm

    def dimm_blocks(self, name: str) -> list[int]:
        """The indices of the DIMM's memory blocks, in order (looked up over its range, not over
        every block of the machine)."""
        dimm = self.dimms.get(name)
        if dimm is None:
            return sorted(i for i, b in self.blocks.items() if b.dimm == name)
        blocks = self.blocks
        return [i for i in range(dimm.start // self.block_size, (dimm.end + 1) // self.block_size)
                if i in blocks and blocks[i].dimm == name]

    def remove_memory(self, name: str) -> Dimm:
        """ACPI eject of a DIMM: offline every block (``acpi_scan_try_to_offline``; on a refusal the
        blocks offlined so far come back online and the error is raised), then remove the blocks and
        release the ``System RAM`` resource (``__remove_memory``); its bytes are discarded."""
        dimm = self.dimms.get(name)
        if dimm is None:
            raise MemoryHotplugError(f"{name}: no such DIMM")
        done: list[int] = []
        for i in self.dimm_blocks(name):
            if not self.blocks[i].online:
                continue
            try:
                self.offline_pages(i)
            except MemoryHotplugError:
                for j in done:
                    self.online_pages(j)
                raise
            done.append(i)
        for i in self.dimm_blocks(name):
            del self.blocks[i]
        if self.arch is not None:
            self.arch.arch_remove_memory(dimm.start, dimm.size)
        self.iomem.remove(dimm.start, dimm.end, SYSTEM_RAM)
        del self.dimms[name]
        self.mem.discard(dimm.start, dimm.end)
        return dimm
