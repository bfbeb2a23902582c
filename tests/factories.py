"""Build KernelStates directly (no snapshot) for property tests and benchmarks."""

from __future__ import annotations

from crash_hotplug.machine.kernel import PAGE_OFFSET_L4, KernelConfig, KernelState, KernelVersion
from crash_hotplug.machine.resource import CRASH_KERNEL, SYSTEM_RAM, Resource

NOTE_BASE = 0x7C000000


def make_state(
    ram: list[tuple[int, int]],
    *,
    possible: int = 8,
    present: int | None = None,
    crash: list[tuple[int, int]] | None = None,
    version: str = "6.12",
) -> KernelState:
    """A kernel state with System RAM ``ram`` (inclusive, sorted, disjoint) and crashkernel regions
    ``crash`` (each inside one RAM range, highest = crashk_res)."""
    root = Resource(0, (1 << 64) - 1, "PCI mem")
    for s, e in ram:
        root.children.append(Resource(s, e, SYSTEM_RAM))
    crash = crash or []
    for s, e in crash:
        root.insert(Resource(s, e, CRASH_KERNEL))
    cr = sorted(crash)
    cpus = tuple(range(possible))
    pres = cpus if present is None else tuple(range(present))
    v = KernelVersion.parse(version)
    return KernelState(
        config=KernelConfig.for_version(v),
        possible=cpus,
        present=pres,
        online=pres,
        crash_notes={c: NOTE_BASE + c * 0x1000 for c in cpus},
        crash_notes_size=368,
        vmcoreinfo_paddr=0x4A00000,
        vmcoreinfo_size=4132,
        text_vaddr=0xFFFFFFFF81000000,
        text_paddr=0x1000000,
        text_size=0x2C30000,
        page_offset=PAGE_OFFSET_L4,
        iomem=root,
        crashk_res=cr[-1] if cr else None,
        crashk_low_res=cr[0] if len(cr) > 1 else None,
    )


def subtract(ranges: list[tuple[int, int]], cut: tuple[int, int]) -> list[tuple[int, int]]:
    """Inclusive interval subtraction, written independently of crash_exclude_mem_range."""
    out = []
    cs, ce = cut
    for s, e in ranges:
        if ce < s or cs > e:
            out.append((s, e))
            continue
        if s < cs:
            out.append((s, cs - 1))
        if ce < e:
            out.append((ce + 1, e))
    return out
