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

import bisect
import itertools
import re
from collections.abc import Callable
from pathlib import Path

from crash_hotplug.elf.core import ElfCore
from crash_hotplug.elf.structs import Elf64_Phdr
from crash_hotplug.errors import ElfFormatError, SnapshotError
from crash_hotplug.machine.cpumask import NR_CPUS_MAX, cpulist_parse
from crash_hotplug.machine.kernel import (
    PAGE_OFFSET_L4,
    START_KERNEL_MAP,
    KernelConfig,
    KernelState,
    KernelVersion,
)
from crash_hotplug.machine.percpu import parse_pcpu_alloc, place_per_cpu
from crash_hotplug.machine.physmem import PAGE_SIZE
from crash_hotplug.machine.resource import CRASH_KERNEL, Resource, parse_iomem, walk_system_ram_res
from crash_hotplug.machine.sysfs_values import parse_hex, parse_pa
from crash_hotplug.snapshot.root import FsRoot

__all__ = [
    "CPU_DIR",
    "DMESG",
    "MEM_DIR",
    "RULE_DIRS",
    "check_crash_notes",
    "crash_kernel_ranges",
    "crash_notes_align",
    "read_cpulist",
    "read_iomem",
    "read_kernel_config",
    "read_kernel_max",
    "read_kernel_state",
    "read_kernel_version",
]

CPU_DIR = "sys/devices/system/cpu"
MEM_DIR = "sys/devices/system/memory"
DMESG = "var/log/dmesg"
#: udev rule directories under a root, highest priority first (systemd's ``CONF_PATHS("udev/rules.d")``)
RULE_DIRS = ("etc/udev/rules.d", "run/udev/rules.d", "usr/local/lib/udev/rules.d", "usr/lib/udev/rules.d",
             "lib/udev/rules.d")


def read_kernel_max(root: FsRoot) -> int | None:
    """``cpu/kernel_max`` (``NR_CPUS - 1``), checked against the largest ``NR_CPUS`` a kernel allows."""
    rel = f"{CPU_DIR}/kernel_max"
    if not root.exists(rel):
        return None
    n = root.read_int(rel)
    if n >= NR_CPUS_MAX:
        raise SnapshotError(root.display(rel), f"{n}: no kernel has NR_CPUS above {NR_CPUS_MAX}")
    return n


def read_cpulist(root: FsRoot, name: str, nr_cpu_ids: int | None = None) -> tuple[int, ...]:
    """A CPU mask file, every CPU below ``nr_cpu_ids`` (default ``kernel_max + 1``, else
    :data:`~crash_hotplug.machine.cpumask.NR_CPUS_MAX`), checked before any range is expanded."""
    rel = f"{CPU_DIR}/{name}"
    if nr_cpu_ids is None:
        kmax = read_kernel_max(root)
        nr_cpu_ids = NR_CPUS_MAX if kmax is None else kmax + 1
    try:
        return cpulist_parse(root.read_text(rel), nr_cpu_ids)
    except ValueError as e:
        raise SnapshotError(root.display(rel), str(e)) from None


def read_iomem(root: FsRoot) -> Resource:
    """``/proc/iomem`` as a resource tree, checked as :func:`parse_iomem` says (nesting, order,
    no overlap, inside the physical address width); each error names the line."""
    rel = "proc/iomem"
    text = root.read_text(rel)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines and all(_ZERO_RANGE.match(ln) for ln in lines):
        raise SnapshotError(root.display(rel), "every address reads as zero: it was read without root privileges")
    try:
        tree = parse_iomem(text, root.display(rel))
    except ValueError as e:
        raise SnapshotError(root.display(rel), str(e).split(": ", 1)[-1]) from None
    if not tree.children:
        raise SnapshotError(root.display(rel), "empty")
    return tree


#: how ``r_show`` prints a resource to a reader without ``CAP_SYS_ADMIN``
_ZERO_RANGE = re.compile(r" *0+-0+ : ")


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
    kernel_max = read_kernel_max(root)
    if size_text is not None:
        size = root.read_int("sys/kernel/crash_elfcorehdr_size")
        if size % 56 or not 2 + max_ranges < size // 56 <= 2 + max_ranges + NR_CPUS_MAX:
            raise SnapshotError(root.display("sys/kernel/crash_elfcorehdr_size"),
                                f"{size} is not 56 * (2 + NR_CPUS_DEFAULT + {max_ranges}) for any NR_CPUS_DEFAULT "
                                f"up to {NR_CPUS_MAX}")
        nr_cpus = size // 56 - 2 - max_ranges
    elif kernel_max is not None:
        nr_cpus = kernel_max + 1
    else:
        dmesg = root.read_optional(DMESG) or ""
        m = re.search(r"setup_percpu: NR_CPUS:([0-9]{1,5}) ", dmesg)
        nr_cpus = int(m.group(1)) if m else NR_CPUS_MAX
        if not 1 <= nr_cpus <= NR_CPUS_MAX:
            raise SnapshotError(root.display(DMESG), f"NR_CPUS:{nr_cpus}: not what a kernel can have")
    return KernelConfig(version, hotplug, True, nr_cpus, max_ranges)


def _crash_notes(
    root: FsRoot, cpus: tuple[int, ...], present: tuple[int, ...], ram: list[tuple[int, int]],
    reserved: list[tuple[int, int]],
) -> tuple[dict[int, int], int]:
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
    size = sizes.pop()
    if not 0 < size <= PAGE_SIZE or size % 4:
        raise SnapshotError(root.display(f"{CPU_DIR}/cpu{present[0]}/crash_notes_size"),
                            f"{size}: sizeof(note_buf_t) is a positive multiple of 4 of at most a page")
    if all(a == 0 for a in known.values()):
        raise SnapshotError(root.display(f"{CPU_DIR}/cpu{present[0]}/crash_notes"),
                            "reads as zero: it was read without root privileges")
    check_crash_notes(known, size, ram, lambda cpu: root.display(f"{CPU_DIR}/cpu{cpu}/crash_notes"), reserved)
    missing = [c for c in cpus if c not in known]
    if not missing:
        return {c: known[c] for c in cpus}, size
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
    return placed, size


def crash_notes_align(size: int) -> int:
    """The alignment ``crash_notes_memory_init`` asks of ``__alloc_percpu``: the note size rounded up
    to a power of two, at most a page (so that one CPU's notes never straddle two pages)."""
    return min(1 << (size - 1).bit_length(), PAGE_SIZE)


def _in_ram(start: int, size: int, ram: list[tuple[int, int]]) -> bool:
    i = bisect.bisect_right(ram, (start, (1 << 64))) - 1
    return i >= 0 and ram[i][0] <= start and start + size - 1 <= ram[i][1]


def check_crash_notes(
    notes: dict[int, int], size: int, ram: list[tuple[int, int]], name: Callable[[int], str],
    reserved: list[tuple[int, int]] | None = None,
) -> None:
    """Each CPU's ``crash_notes`` as the kernel can have placed it: inside System RAM, outside the
    ``reserved`` crashkernel ranges (memory the capture kernel owns), aligned as
    :func:`crash_notes_align` says, and no two CPUs' buffers sharing a byte. ``name(cpu)`` is the
    file to blame. Raises :class:`SnapshotError`."""
    align = crash_notes_align(size)
    for cpu, addr in notes.items():
        if addr % align:
            raise SnapshotError(name(cpu), f"{addr:#x} is not aligned to {align} bytes as the per-CPU allocator "
                                           f"places a {size}-byte note buffer")
        if not _in_ram(addr, size, ram):
            raise SnapshotError(name(cpu), f"[{addr:#x}, {addr + size:#x}) is not inside System RAM of proc/iomem")
        for s, e in reserved or []:
            if addr <= e and s < addr + size:
                raise SnapshotError(name(cpu), f"{addr:#x} lies in the Crash kernel reservation [{s:#x}-{e:#x}], "
                                               "which the running kernel does not allocate from")
    by_addr = sorted((a, c) for c, a in notes.items())
    for (a, ca), (b, cb) in itertools.pairwise(by_addr):
        if b < a + size:
            raise SnapshotError(name(cb), f"{b:#x} overlaps cpu{ca}'s note buffer at {a:#x}: "
                                          "every CPU has its own")


def _vmcoreinfo(root: FsRoot, ram: list[tuple[int, int]] | None = None) -> tuple[int, int]:
    """``vmcoreinfo_show``: ``%pa %x`` of the note's physical address and size (inside ``ram``
    when given)."""
    rel = "sys/kernel/vmcoreinfo"
    text = root.read_text(rel)
    body = text[:-1] if text.endswith("\n") else text
    parts = body.split(" ")
    try:
        if len(parts) != 2:
            raise ValueError(f"expected '0x<16 hex digits> <size in hex>', found {body[:60]!r}")
        paddr, size = parse_pa(parts[0], "address"), parse_hex(parts[1], "size")
    except ValueError as e:
        raise SnapshotError(root.display(rel), str(e)) from None
    if not 0 < size <= _VMCOREINFO_MAX:
        raise SnapshotError(root.display(rel), f"size {size:#x}: VMCOREINFO_NOTE_SIZE is a few KiB")
    if ram is not None and not _in_ram(paddr, size, ram):
        raise SnapshotError(root.display(rel), f"[{paddr:#x}, {paddr + size:#x}) is not inside System RAM of "
                                               "proc/iomem")
    return paddr, size


#: far above ``VMCOREINFO_NOTE_SIZE`` (a page and a note header); a larger value is not a kernel's
_VMCOREINFO_MAX = 1 << 20


def crash_kernel_ranges(root: FsRoot, iomem: Resource) -> list[tuple[int, int]]:
    """The ``Crash kernel`` resources (``crashk_res``, and ``crashk_low_res`` below 4 GiB), each
    inside a System RAM resource as ``reserve_crashkernel`` inserts it. No such line means no
    ``crashkernel=`` reservation: no kernel would build an elfcorehdr, so it is an error."""
    rel = "proc/iomem"
    found: list[tuple[int, int]] = []
    ancestors: list[Resource] = []
    for depth, r in iomem.walk():
        del ancestors[depth:]
        if r.name == CRASH_KERNEL:
            if not any(a.is_system_ram for a in ancestors):
                raise SnapshotError(root.display(rel), f"Crash kernel [{r.start:#x}-{r.end:#x}] is not inside "
                                                       "System RAM")
            found.append((r.start, r.end))
        ancestors.append(r)
    if not found:
        raise SnapshotError(root.display(rel), "has no 'Crash kernel' line: no crashkernel= reservation, so no "
                                               "kernel loads a crash kernel or builds an elfcorehdr")
    if len(found) > 2:
        raise SnapshotError(root.display(rel), f"{len(found)} 'Crash kernel' lines: a kernel has at most two "
                                               "(crashkernel= and crashkernel=,low)")
    return sorted(found)


def _kallsyms(root: FsRoot) -> dict[str, int]:
    """``_text`` and ``_end`` from ``/proc/kallsyms``, read line by line until both are found."""
    rel = "proc/kallsyms"
    out: dict[str, int] = {}
    for lineno, line in root.iter_lines(rel):
        parts = line.split()
        if len(parts) >= 3 and parts[2] in ("_text", "_end") and parts[2] not in out:
            try:
                out[parts[2]] = parse_hex(parts[0], "address")
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
    if isinstance(root_dir, FsRoot):
        root = root_dir
    else:
        from crash_hotplug.snapshot.sos import fs_root  # sos.py builds on this module

        root = fs_root(Path(root_dir))
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
    iomem = read_iomem(root)
    ram = walk_system_ram_res(iomem)
    crash = crash_kernel_ranges(root, iomem)
    notes, note_size = _crash_notes(root, cpus, present, ram, crash)
    vmci_paddr, vmci_size = _vmcoreinfo(root, ram)
    syms = _kallsyms(root)
    crashk_res = crash[-1]
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
