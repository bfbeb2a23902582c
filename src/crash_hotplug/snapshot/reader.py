"""Build a :class:`~crash_hotplug.machine.kernel.KernelState` from machine-state files under a root.

Where each value comes from (the kernel prints it; we never guess):

========================  =====================================================================
CPU masks                 ``sys/devices/system/cpu/{possible,present,online}``
crash_notes               ``cpuN/crash_notes`` (hex, no ``0x``) for present CPUs; for possible
                          but absent CPUs, the per-CPU layout in the boot log (``pcpu-alloc``)
note size                 ``cpuN/crash_notes_size``
VMCOREINFO                ``sys/kernel/vmcoreinfo``: ``0x<paddr> <size in hex without 0x>``
kernel text               ``proc/kallsyms`` ``_text``/``_end``; ``__pa_symbol(_text)`` from the
                          kernel-text LOAD of ``proc/kcore`` or iomem ``Kernel code``
direct map base           ``proc/kcore`` program headers (``vaddr - paddr`` of a RAM LOAD)
System RAM, crashkernel   ``proc/iomem``
version                   ``proc/sys/kernel/osrelease``
hotplug Kconfig           ``sys/kernel/crash_elfcorehdr_size``, ``cpu/kernel_max``
========================  =====================================================================
"""

from __future__ import annotations

import re
from pathlib import Path

from crash_hotplug.elf.core import ElfCore
from crash_hotplug.elf.structs import Elf64_Phdr
from crash_hotplug.errors import ElfFormatError, SnapshotError
from crash_hotplug.machine.cpumask import cpulist_parse
from crash_hotplug.machine.kernel import (
    PAGE_OFFSET_L4,
    START_KERNEL_MAP,
    KernelConfig,
    KernelState,
    KernelVersion,
)
from crash_hotplug.machine.percpu import parse_pcpu_alloc, place_per_cpu
from crash_hotplug.machine.resource import CRASH_KERNEL, Resource, parse_iomem
from crash_hotplug.snapshot.root import FsRoot

__all__ = [
    "CPU_DIR",
    "DMESG",
    "MEM_DIR",
    "RULE_DIRS",
    "read_cpulist",
    "read_iomem",
    "read_kernel_config",
    "read_kernel_state",
    "read_kernel_version",
]

CPU_DIR = "sys/devices/system/cpu"
MEM_DIR = "sys/devices/system/memory"
DMESG = "var/log/dmesg"
#: udev rule directories under a root, highest priority first (systemd's ``CONF_PATHS("udev/rules.d")``)
RULE_DIRS = ("etc/udev/rules.d", "run/udev/rules.d", "usr/local/lib/udev/rules.d", "usr/lib/udev/rules.d",
             "lib/udev/rules.d")


def read_cpulist(root: FsRoot, name: str) -> tuple[int, ...]:
    rel = f"{CPU_DIR}/{name}"
    try:
        return cpulist_parse(root.read_text(rel))
    except ValueError as e:
        raise SnapshotError(root.display(rel), str(e)) from None


def read_iomem(root: FsRoot) -> Resource:
    rel = "proc/iomem"
    text = root.read_text(rel)
    try:
        tree = parse_iomem(text, root.display(rel))
    except ValueError as e:
        raise SnapshotError(root.display(rel), str(e).split(": ", 1)[-1]) from None
    if not tree.children:
        raise SnapshotError(root.display(rel), "empty")
    if all(r.start == 0 and r.end == 0 for _, r in tree.walk()):
        raise SnapshotError(root.display(rel), "every address reads as zero: it was read without root privileges")
    return tree


def read_kernel_version(root: FsRoot, override: str | None = None) -> KernelVersion:
    if override is not None:
        try:
            return KernelVersion.parse(override)
        except ValueError as e:
            raise SnapshotError("--kernel-version", str(e)) from None
    rel = "proc/sys/kernel/osrelease"
    try:
        return KernelVersion.parse(root.read_text(rel))
    except ValueError as e:
        raise SnapshotError(root.display(rel), str(e)) from None


def read_kernel_config(root: FsRoot, version: KernelVersion, *, version_overridden: bool = False) -> KernelConfig:
    """Kconfig values that shape the header, from what sysfs shows of them.

    ``CONFIG_CRASH_HOTPLUG`` shows as ``/sys/kernel/crash_elfcorehdr_size``; its value is
    ``56 * (2 + NR_CPUS_DEFAULT + CRASH_MAX_MEMORY_RANGES)``. Without it, ``NR_CPUS`` comes from
    ``cpu/kernel_max`` (Debian and most distributions set ``NR_CPUS = NR_CPUS_DEFAULT``).
    """
    size_text = root.read_optional("sys/kernel/crash_elfcorehdr_size")
    max_ranges = 8192
    if version_overridden:
        hotplug = version >= KernelVersion(6, 6)
    else:
        hotplug = size_text is not None or root.exists(f"{CPU_DIR}/crash_hotplug")
    nr_cpus: int | None = None
    if size_text is not None:
        size = root.read_int("sys/kernel/crash_elfcorehdr_size")
        if size % 56 or size // 56 < 2 + max_ranges:
            raise SnapshotError(root.display("sys/kernel/crash_elfcorehdr_size"),
                                f"{size} is not 56 * (2 + NR_CPUS_DEFAULT + {max_ranges})")
        nr_cpus = size // 56 - 2 - max_ranges
    elif root.exists(f"{CPU_DIR}/kernel_max"):
        nr_cpus = root.read_int(f"{CPU_DIR}/kernel_max") + 1
    else:
        dmesg = root.read_optional(DMESG) or ""
        m = re.search(r"setup_percpu: NR_CPUS:(\d+)", dmesg)
        nr_cpus = int(m.group(1)) if m else 8192
    return KernelConfig(version, hotplug, True, nr_cpus, max_ranges)


def _crash_notes(root: FsRoot, cpus: tuple[int, ...], present: tuple[int, ...]) -> tuple[dict[int, int], int]:
    known: dict[int, int] = {}
    sizes: set[int] = set()
    for cpu in present:
        base = f"{CPU_DIR}/cpu{cpu}"
        if not root.exists(base):
            raise SnapshotError(root.display(base), f"missing: cpu{cpu} is present but has no sysfs folder")
        known[cpu] = root.read_int(f"{base}/crash_notes", 16)
        sizes.add(root.read_int(f"{base}/crash_notes_size"))
    if not known:
        raise SnapshotError(root.display(CPU_DIR), "no present CPU: cannot locate crash_notes")
    if len(sizes) != 1:
        raise SnapshotError(root.display(f"{CPU_DIR}/cpu*/crash_notes_size"), f"CPUs disagree: {sorted(sizes)}")
    if all(a == 0 for a in known.values()):
        raise SnapshotError(root.display(f"{CPU_DIR}/cpu{present[0]}/crash_notes"),
                            "reads as zero: it was read without root privileges")
    missing = [c for c in cpus if c not in known]
    if not missing:
        return {c: known[c] for c in cpus}, sizes.pop()
    dmesg = root.read_optional(DMESG)
    info = parse_pcpu_alloc(dmesg) if dmesg else None
    if info is None:
        raise SnapshotError(
            root.display(DMESG),
            f"has no pcpu-alloc layout (missing, or the log wrapped): cannot place crash_notes of "
            f"possible but not present CPUs {missing[0]}..{missing[-1]}",
        )
    try:
        placed = place_per_cpu(info, known, list(cpus))
    except ValueError as e:
        raise SnapshotError(root.display(DMESG), str(e)) from None
    return placed, sizes.pop()


def _vmcoreinfo(root: FsRoot) -> tuple[int, int]:
    rel = "sys/kernel/vmcoreinfo"
    text = root.read_text(rel).split()
    try:
        if len(text) != 2:
            raise ValueError
        return int(text[0], 16), int(text[1], 16)
    except ValueError:
        found = " ".join(text)[:60]
        raise SnapshotError(root.display(rel), f"expected '<paddr> <size in hex>', found {found!r}") from None


def _kallsyms(root: FsRoot) -> dict[str, int]:
    """``_text`` and ``_end`` from ``/proc/kallsyms``, read line by line until both are found."""
    rel = "proc/kallsyms"
    out: dict[str, int] = {}
    for lineno, line in root.iter_lines(rel):
        parts = line.split()
        if len(parts) >= 3 and parts[2] in ("_text", "_end") and parts[2] not in out:
            try:
                out[parts[2]] = int(parts[0], 16)
            except ValueError:
                raise SnapshotError(root.display(rel), f"line {lineno}: bad address in {line[:80]!r}") from None
            if len(out) == 2:
                break
    for sym in ("_text", "_end"):
        if sym not in out:
            raise SnapshotError(root.display(rel), f"has no {sym} symbol")
    if out["_text"] == 0:
        raise SnapshotError(root.display(rel), "addresses read as zero: it was read without root privileges")
    return out


#: program headers of ``/proc/kcore`` fit here (one per RAM range, vmalloc, vmemmap, modules, text)
_KCORE_HEAD = 1 << 20


def _kcore_loads(root: FsRoot) -> list[Elf64_Phdr] | None:
    rel = "proc/kcore"
    if not root.exists(rel):
        return None
    with root.open(rel) as f:
        try:
            head = f.read(_KCORE_HEAD)
        except OSError as e:
            raise SnapshotError(root.display(rel), f"cannot read: {e.strerror}") from None
    try:
        return ElfCore.parse(head, root.display(rel)).load_phdrs
    except ElfFormatError as e:
        raise SnapshotError(
            root.display(rel), f"program headers unreadable: {e.what} at offset {e.offset:#x}"
        ) from None


def read_kernel_state(root_dir: Path | FsRoot, *, kernel_version: str | None = None) -> KernelState:
    """The kernel state the files under ``root_dir`` describe; :class:`SnapshotError` on bad input."""
    root = root_dir if isinstance(root_dir, FsRoot) else FsRoot(Path(root_dir))
    version = read_kernel_version(root, kernel_version)
    config = read_kernel_config(root, version, version_overridden=kernel_version is not None)
    possible = read_cpulist(root, "possible")
    present = read_cpulist(root, "present")
    online = read_cpulist(root, "online")
    if not possible or not set(present) <= set(possible) or not set(online) <= set(present):
        raise SnapshotError(
            root.display(CPU_DIR), "CPU masks must satisfy online <= present <= possible, possible non-empty"
        )
    cpus = possible if config.header_lists_possible_cpus else present
    notes, note_size = _crash_notes(root, cpus, present)
    vmci_paddr, vmci_size = _vmcoreinfo(root)
    syms = _kallsyms(root)
    iomem = read_iomem(root)
    crash = sorted((r.start, r.end) for r in iomem.find(CRASH_KERNEL))
    crashk_res = crash[-1] if crash else None
    crashk_low = crash[0] if len(crash) > 1 else None

    loads = _kcore_loads(root)
    text_paddr: int | None = None
    page_offset: int | None = None
    extra: dict[str, str] = {}
    if loads is not None:
        for ph in loads:
            if ph.p_vaddr == syms["_text"] and ph.p_paddr != 0xFFFFFFFFFFFFFFFF:
                text_paddr = ph.p_paddr
            elif ph.p_paddr != 0xFFFFFFFFFFFFFFFF and ph.p_vaddr < START_KERNEL_MAP and page_offset is None:
                page_offset = ph.p_vaddr - ph.p_paddr
    if text_paddr is None:
        code = iomem.find("Kernel code")
        if code:
            text_paddr = code[0].start
        else:
            raise SnapshotError(
                root.display("proc/iomem"), "has no 'Kernel code' and proc/kcore has no kernel-text LOAD"
            )
    if page_offset is None:
        cmdline = root.read_optional("proc/cmdline") or ""
        if "nokaslr" not in cmdline.split():
            raise SnapshotError(
                root.display("proc/kcore"),
                "missing or without a RAM LOAD, and the kernel runs with KASLR: the direct-map base is unknown",
            )
        page_offset = PAGE_OFFSET_L4
        extra["page_offset_source"] = "nokaslr default (4-level paging)"
    return KernelState(
        config=config,
        possible=possible,
        present=present,
        online=online,
        crash_notes=notes,
        crash_notes_size=note_size,
        vmcoreinfo_paddr=vmci_paddr,
        vmcoreinfo_size=vmci_size,
        text_vaddr=syms["_text"],
        text_paddr=text_paddr,
        text_size=syms["_end"] - syms["_text"],
        page_offset=page_offset,
        iomem=iomem,
        crashk_res=crashk_res,
        crashk_low_res=crashk_low,
        extra=extra,
    )
