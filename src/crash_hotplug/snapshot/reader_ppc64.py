"""Build the :class:`~crash_hotplug.machine.kernel.KernelState` of a ppc64le (pseries) host from
the files under a root.

Where each value comes from on powerpc, where it differs from x86_64 (:mod:`.reader`):

========================  =====================================================================
crashkernel region        ``/proc/device-tree/chosen/linux,crashkernel-{base,size}`` (no iomem line)
crash_notes               ``cpuN/crash_notes`` of every possible CPU (sysfs has them all)
hotplug Kconfig           ``/sys/kernel/crash_elfcorehdr_size`` = 64 + (possible CPUs + 1 +
                          ``CRASH_MAX_MEMORY_RANGES``) x 56 (``arch/powerpc/kexec/crash.c``);
                          ``NR_CPUS`` from ``cpu/kernel_max``
direct map base           ``PAGE_OFFSET`` = 0xc000000000000000 (Book3S-64), checked against
                          ``proc/kcore`` when it has a RAM LOAD
========================  =====================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from crash_hotplug.errors import SnapshotError
from crash_hotplug.machine.kernel import KernelConfig, KernelState
from crash_hotplug.machine.resource import walk_system_ram_res
from crash_hotplug.snapshot.devicetree import PpcDeviceTree, read_device_tree
from crash_hotplug.snapshot.reader import (
    CPU_DIR,
    _kallsyms,
    _kcore_loads,
    _vmcoreinfo,
    check_crash_notes,
    read_cpulist,
    read_iomem,
    read_kernel_version,
)
from crash_hotplug.snapshot.root import FsRoot

__all__ = ["PAGE_OFFSET_PPC64", "read_kernel_state_ppc64"]

#: ``PAGE_OFFSET`` of 64-bit Book3S (``arch/powerpc/include/asm/page.h``)
PAGE_OFFSET_PPC64: Final = 0xC000000000000000


def _config(root: FsRoot, version_text: str | None, possible: int) -> KernelConfig:
    version = read_kernel_version(root, version_text)
    rel = "sys/kernel/crash_elfcorehdr_size"
    nr_cpus = root.read_int(f"{CPU_DIR}/kernel_max") + 1 if root.exists(f"{CPU_DIR}/kernel_max") else 2048
    if not root.exists(rel):
        return KernelConfig(version, False, True, nr_cpus, 8192)
    size = root.read_int(rel)
    if size == 0:
        return KernelConfig(version, False, True, nr_cpus, 8192)
    ranges, rest = divmod(size - 64, 56)
    ranges -= possible + 1
    if rest or ranges < 0:
        raise SnapshotError(root.display(rel), f"{size} is not 64 + 56 * ({possible} possible CPUs + 1 + "
                                               "CRASH_MAX_MEMORY_RANGES)")
    return KernelConfig(version, True, ranges > 0, nr_cpus, ranges or 8192)


def _crash_notes(root: FsRoot, possible: tuple[int, ...]) -> tuple[dict[int, int], int]:
    notes: dict[int, int] = {}
    sizes: set[int] = set()
    for cpu in possible:
        base = f"{CPU_DIR}/cpu{cpu}"
        notes[cpu] = root.read_int(f"{base}/crash_notes", 16)
        sizes.add(root.read_int(f"{base}/crash_notes_size"))
    if len(sizes) != 1:
        raise SnapshotError(root.display(f"{CPU_DIR}/cpu*/crash_notes_size"), f"CPUs disagree: {sorted(sizes)}")
    if all(a == 0 for a in notes.values()):
        raise SnapshotError(root.display(f"{CPU_DIR}/cpu{possible[0]}/crash_notes"),
                            "reads as zero: it was read without root privileges")
    return notes, sizes.pop()


def read_kernel_state_ppc64(root_dir: Path, *, kernel_version: str | None = None) -> tuple[KernelState, PpcDeviceTree]:
    """The kernel state and device-tree facts under ``root_dir``; :class:`SnapshotError` on bad input."""
    root = FsRoot(Path(root_dir))
    possible = read_cpulist(root, "possible")
    present = read_cpulist(root, "present")
    online = read_cpulist(root, "online")
    if not possible or not set(present) <= set(possible) or not set(online) <= set(present):
        raise SnapshotError(
            root.display(CPU_DIR), "CPU masks must satisfy online <= present <= possible, possible non-empty"
        )
    config = _config(root, kernel_version, len(possible))
    iomem = read_iomem(root)
    ram = walk_system_ram_res(iomem)
    notes, note_size = _crash_notes(root, possible)
    check_crash_notes(notes, note_size, ram, lambda cpu: root.display(f"{CPU_DIR}/cpu{cpu}/crash_notes"))
    vmci_paddr, vmci_size = _vmcoreinfo(root, ram)
    syms = _kallsyms(root)
    dt = read_device_tree(root)
    loads = _kcore_loads(root)
    for ph in loads or []:
        if ph.p_paddr != 0xFFFFFFFFFFFFFFFF and ph.p_vaddr - ph.p_paddr not in (PAGE_OFFSET_PPC64, 0) \
                and ph.p_vaddr >= PAGE_OFFSET_PPC64 and ph.p_vaddr < 0xD000000000000000:
            raise SnapshotError(root.display("proc/kcore"),
                                f"a linear-map LOAD at {ph.p_vaddr:#x} does not sit at PAGE_OFFSET + paddr")
    state = KernelState(
        config=config,
        possible=possible,
        present=present,
        online=online,
        crash_notes=notes,
        crash_notes_size=note_size,
        vmcoreinfo_paddr=vmci_paddr,
        vmcoreinfo_size=vmci_size,
        text_vaddr=syms["_text"],
        text_paddr=syms["_text"] - PAGE_OFFSET_PPC64,
        text_size=syms["_end"] - syms["_text"],
        page_offset=PAGE_OFFSET_PPC64,
        iomem=iomem,
        crashk_res=dt.crashk_res,
        extra={"arch": "ppc64le"},
    )
    return state, dt
