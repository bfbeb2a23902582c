"""Memory hotplug: DIMM add/remove through the memory notifier chain, in the kernel's order."""

from __future__ import annotations

import pytest

from crash_hotplug.machine.machine import GIB, Machine
from crash_hotplug.machine.memory import (
    MEM_CANCEL_OFFLINE,
    MEM_CANCEL_ONLINE,
    MEM_GOING_OFFLINE,
    MEM_GOING_ONLINE,
    MEM_OFFLINE,
    MEM_ONLINE,
    MemoryBlockBusyError,
    MemoryNotifierVetoError,
    MemoryNotify,
    MemoryRangeError,
)
from crash_hotplug.machine.notifier import NOTIFY_BAD, NOTIFY_OK, notifier_from_errno, notifier_to_errno
from crash_hotplug.machine.resource import SYSTEM_RAM, iomem_render


def machine() -> Machine:
    return Machine.new(mem_gib=2, cpus=2, possible=8, kernel="6.12.43")


def test_dimm_add_onlines_each_block_going_online_then_online() -> None:
    m = machine()
    events: list[tuple[int, int, int]] = []
    m.register_memory_notifier(lambda a, arg: events.append((a, arg.start_pfn, arg.nr_pages)) or NOTIFY_OK)
    dimm = m.add_dimm(GIB)
    assert (dimm.name, dimm.start, dimm.size) == ("dimm1", 0x100000000, GIB)
    assert [(r.start, r.end) for r in m.iomem.children if r.name == SYSTEM_RAM][-1] == (0x100000000, 0x13FFFFFFF)
    pages = (128 << 20) // 4096
    expected = []
    for i in range(32, 40):
        expected += [(MEM_GOING_ONLINE, i * pages, pages), (MEM_ONLINE, i * pages, pages)]
    assert events == expected
    assert [m.memory.block(i).valid_zones() for i in range(32, 40)] == ["Movable"] * 8
    assert all(ram for _, _, ram in m.memory.trace), "the DIMM's System RAM exists before any block goes online"


def test_dimm_remove_offlines_every_block_before_the_resource_goes() -> None:
    m = machine()
    m.add_dimm(GIB)
    m.memory.trace.clear()
    ram_at_offline: list[bool] = []

    def on_event(action: int, arg: MemoryNotify) -> int:
        if action == MEM_OFFLINE:
            ram_at_offline.append(any(r.name == SYSTEM_RAM and r.start == 0x100000000 for r in m.iomem.children))
        return NOTIFY_OK

    m.register_memory_notifier(on_event)
    m.mem.write(0x100000000 + 123, b"dimm bytes")
    m.remove_dimm("dimm1")
    assert [(a, b) for a, b, _ in m.memory.trace] == [
        x for i in range(32, 40) for x in ((MEM_GOING_OFFLINE, i), (MEM_OFFLINE, i))]
    assert ram_at_offline == [True] * 8
    assert not any(r.start == 0x100000000 for r in m.iomem.children)
    assert not any(32 <= i < 40 for i in m.memory.blocks)
    assert m.mem.read(0x100000000 + 123, 10) != b"dimm bytes", "a removed DIMM's writes are discarded"


def test_going_online_veto_cancels_that_block_only() -> None:
    m = machine()
    refused = {34}
    seen: list[tuple[int, int]] = []

    def veto(action: int, arg: MemoryNotify) -> int:
        block = arg.start_pfn * 4096 // m.block_size
        seen.append((action, block))
        if action == MEM_GOING_ONLINE and block in refused:
            return notifier_from_errno(-16)
        return NOTIFY_OK

    m.register_memory_notifier(veto)
    with pytest.raises(MemoryNotifierVetoError) as e:
        m.add_dimm(GIB)
    assert e.value.block == 34 and e.value.errno == 16
    assert (MEM_CANCEL_ONLINE, 34) in seen and (MEM_ONLINE, 34) not in seen
    assert m.memory.block(34).state == "offline" and m.memory.block(33).state == "online"


def test_going_offline_veto_keeps_the_dimm() -> None:
    m = machine()
    m.add_dimm(GIB)
    m.register_memory_notifier(
        lambda a, arg: NOTIFY_BAD if a == MEM_GOING_OFFLINE and arg.start_pfn * 4096 == 0x118000000 else NOTIFY_OK)
    with pytest.raises(MemoryNotifierVetoError):
        m.remove_dimm("dimm1")
    actions = [a for a, _, _ in m.memory.trace]
    assert MEM_CANCEL_OFFLINE in actions
    assert "dimm1" in m.memory.dimms and m.memory.online_blocks[-8:] == tuple(range(32, 40)), \
        "blocks offlined before the refusal come back online"


def test_notifier_priorities() -> None:
    m = machine()
    order: list[str] = []
    m.register_memory_notifier(lambda a, arg: order.append("p0") or NOTIFY_OK, 0)
    m.register_memory_notifier(lambda a, arg: order.append("p10") or NOTIFY_OK, 10)
    m.register_memory_notifier(lambda a, arg: order.append("p0b") or NOTIFY_OK, 0)
    m.register_memory_notifier(lambda a, arg: order.append("p-5") or NOTIFY_OK, -5)
    m.add_dimm(128 << 20)
    assert order[:4] == ["p10", "p0", "p0b", "p-5"]


def test_block_refusals_and_policies() -> None:
    m = machine()
    with pytest.raises(MemoryBlockBusyError):
        m.memory_block_offline(3)  # boot memory, kernel zone
    with pytest.raises(MemoryRangeError):
        m.add_dimm(GIB, start=0x100000000 + 4096)
    d = m.add_dimm(GIB, online="offline")
    assert all(m.memory.block(i).state == "offline" for i in m.memory.dimm_blocks(d.name))
    assert m.memory.block(32).valid_zones() == "Normal Movable"
    m.memory_block_online(33)
    assert m.memory.block(33).state == "online"
    m.memory_block_offline(33)
    assert m.memory.block(33).state == "offline"
    d2 = m.add_dimm(2 * GIB)
    assert d2.start == 0x140000000, "first fit after the present DIMM"
    with pytest.raises(MemoryRangeError):
        m.add_dimm(GIB, name=d.name)


def test_first_fit_fills_holes_left_by_removed_dimms() -> None:
    """QEMU places a DIMM in the first hole from the device-memory base that holds it, whatever
    was added and removed before (the machine keeps the DIMM layout between placements)."""
    import random

    def first_fit(m: Machine, size: int) -> int:
        addr = m.dimm_base
        for d in sorted(m.memory.dimms.values(), key=lambda d: d.start):
            if addr + size <= d.start:
                break
            addr = max(addr, d.end + 1)
        return -(-addr // m.block_size) * m.block_size

    rng = random.Random(7)
    m = Machine.new(mem_gib=2, maxmem_gib=120, slots=40)
    for _ in range(80):
        for size in (m.block_size, GIB, 3 * GIB):
            assert m.next_dimm_address(size) == first_fit(m, size)
        if m.memory.dimms and rng.random() < 0.35:
            m.remove_dimm(rng.choice(list(m.memory.dimms)))
        elif len(m.memory.dimms) < m.dimm_slots:
            size = rng.choice((m.block_size, GIB, 2 * GIB))
            expected = first_fit(m, size)
            assert m.add_dimm(size, online="offline").start == expected


def test_protected_ranges_come_and_go_one_by_one() -> None:
    """Every read-only range refuses writes that touch it, whichever others come and go."""
    from crash_hotplug.machine.protmem import GuardedPhysMem, ProtectedMemoryWriteError

    g = GuardedPhysMem()
    low, high = (0x10000, 0x1FFFF), (0x80000, 0x8FFFF)
    g.protect(*low)
    g.protect(*high)

    def refused(addr: int, size: int = 8) -> bool:
        try:
            g.write(addr, bytes(size))
        except ProtectedMemoryWriteError:
            return True
        return False

    assert refused(0x1FFF8, 16) and refused(0x8FFFF, 1) and refused(0x7FFF8, 16)
    assert not refused(0x20000) and not refused(0x7FFF0) and not refused(0x90000)
    g.unprotect(*low)
    assert not refused(0x10000) and refused(0x80000)
    g.unprotect(*high)
    assert not refused(0x80000) and g.protected == ()
    g.protect(*low)
    assert refused(0x1FFF0) and not refused(0x80000)


def test_refused_dimm_over_a_present_one_leaves_the_tree_as_it_was() -> None:
    """A DIMM over another's blocks is refused and the present DIMM keeps its System RAM."""
    m = machine()
    d = m.add_dimm(GIB)
    before = iomem_render(m.iomem)
    with pytest.raises(MemoryRangeError, match="memory blocks already exist"):
        m.add_dimm(2 * GIB, start=d.start)
    assert iomem_render(m.iomem) == before
    m.remove_dimm(d.name)
    assert (d.start, d.end) not in m.system_ram()


def test_notifier_errno_round_trip() -> None:
    assert notifier_to_errno(notifier_from_errno(-16)) == -16
    assert notifier_to_errno(NOTIFY_OK) == 0


def test_guarded_memory_writes_and_protection() -> None:
    from crash_hotplug.machine.physmem import PhysMem, page_pattern
    from crash_hotplug.machine.protmem import GuardedPhysMem, ProtectedMemoryWriteError

    g, p = GuardedPhysMem(seed=9), PhysMem(seed=9)
    for addr, data in ((0x1FF0, bytes(range(256)) * 40), (0x5000, b"\xaa" * 8192), (0x9FFF, b"z")):
        g.write(addr, data)
        p.write(addr, data)
    assert g.read(0, 0xB000) == p.read(0, 0xB000)
    assert g.read(0xC000, 4096) == page_pattern(0xC, 9)
    assert g.written_ranges() == [(0x1000, 0x6FFF), (0x9000, 0x9FFF)]
    g.protect(0x6000, 0x6FFF)
    with pytest.raises(ProtectedMemoryWriteError) as e:
        g.write(0x5FFF, b"ab")
    assert e.value.range == (0x6000, 0x6FFF)
    g.write(0x5FFF, b"a")
    g.unprotect(0x6000, 0x6FFF)
    g.write(0x6000, b"b")
