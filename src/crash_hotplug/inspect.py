"""What a kdump engineer wants to see in an elfcorehdr or a vmcore, and what changed between two.

Works on a raw elfcorehdr (offsets are physical addresses; notes live in the crashed kernel's
memory, so only their addresses are known), on an ELF vmcore (one merged PT_NOTE in the file, whose
NT_PRSTATUS and VMCOREINFO notes are decoded) and on a kdump-compressed file (its header fields,
notes, and the memory its 1st bitmap maps).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from crash_hotplug.crash.vmcore import VmcoreFile
from crash_hotplug.elf.constants import PT_LOAD
from crash_hotplug.elf.core import ElfCore, pt_load_problems
from crash_hotplug.elf.structs import Elf64_Phdr
from crash_hotplug.elf.vmcoreinfo import VMCOREINFO_NOTE_NAME
from crash_hotplug.machine.kernel import START_KERNEL_MAP
from crash_hotplug.makedumpfile.kdump import KdumpCompressed, dump_level_text

__all__ = [
    "CpuNote", "DumpSummary", "HeaderDiff", "HeaderSummary", "MemRange", "diff_headers", "summarize", "summarize_dump",
]

@dataclass(frozen=True)
class CpuNote:
    """One CPU's note: in a raw header its buffer address (and owner when known); in a vmcore the
    saved NT_PRSTATUS (pid, rip)."""

    index: int
    paddr: int | None
    size: int
    cpu: int | None = None
    pid: int | None = None
    rip: int | None = None


@dataclass(frozen=True)
class MemRange:
    start: int
    end: int  # inclusive
    vaddr: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1


@dataclass
class HeaderSummary:
    """The decoded content of an elfcorehdr or vmcore."""

    kind: str  # "elfcorehdr" or "vmcore"
    e_phnum: int
    used_size: int
    file_size: int
    cpu_notes: list[CpuNote] = field(default_factory=list)
    vmcoreinfo_paddr: int | None = None
    vmcoreinfo_size: int | None = None
    vmcoreinfo: dict[str, str] = field(default_factory=dict)
    kernel_text: MemRange | None = None
    ranges: list[MemRange] = field(default_factory=list)
    reserved_size: int | None = None
    #: what no kernel writes (overlapping or unsorted PT_LOADs), one line each
    warnings: list[str] = field(default_factory=list)

    @property
    def total_ram(self) -> int:
        return sum(r.size for r in self.ranges)

    @property
    def free_phdrs(self) -> int | None:
        """How many more program headers fit in the reserved segment (raw headers only)."""
        if self.reserved_size is None:
            return None
        return max(0, (self.reserved_size - self.used_size) // Elf64_Phdr.SIZE)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_ram"] = self.total_ram
        d["free_phdrs"] = self.free_phdrs
        for r in d["ranges"]:
            r["size"] = r["end"] - r["start"] + 1
        return d


def _is_text(p: Elf64_Phdr) -> bool:
    return p.p_vaddr >= START_KERNEL_MAP


def summarize(core: ElfCore, *, note_owners: Mapping[int, int] | None = None,
              reserved_size: int | None = None) -> HeaderSummary:
    """Decode ``core``. ``note_owners`` maps a crash_notes address to its CPU (from sysfs)."""
    raw = core.is_raw_elfcorehdr
    s = HeaderSummary(
        kind="elfcorehdr" if raw else "vmcore",
        e_phnum=core.ehdr.e_phnum,
        used_size=core.used_size,
        file_size=core.size,
        reserved_size=reserved_size if raw else None,
    )
    owners = dict(note_owners or {})
    notes = core.notes_phdrs
    if raw:
        *cpu_ph, vmci = notes if notes else [None]
        for i, p in enumerate(cpu_ph):
            if p is not None:
                s.cpu_notes.append(CpuNote(i, p.p_paddr, p.p_memsz, owners.get(p.p_paddr)))
        if vmci is not None:
            s.vmcoreinfo_paddr, s.vmcoreinfo_size = vmci.p_paddr, vmci.p_memsz
    else:
        vf = VmcoreFile.from_bytes(core.data, core.source)
        s.cpu_notes = [CpuNote(n.index, None, len(n.desc), None, n.pr_pid, n.prstatus.ip) for n in vf.prstatus]
        s.vmcoreinfo = vf.key_vmcoreinfo()
        note = next((len(n.desc) for _, n in core.notes() if n.name == VMCOREINFO_NOTE_NAME), None)
        s.vmcoreinfo_size = note
    s.warnings = pt_load_problems(
        (i, p.p_paddr, p.p_memsz) for i, p in enumerate(core.phdrs) if p.p_type == PT_LOAD and not _is_text(p)
    )
    for p in core.load_phdrs:
        r = MemRange(p.p_paddr, p.p_paddr + p.p_memsz - 1, p.p_vaddr)
        if _is_text(p):
            s.kernel_text = r
        else:
            s.ranges.append(r)
    return s


@dataclass
class HeaderDiff:
    cpus_added: list[int]
    cpus_removed: list[int]
    ranges_added: list[MemRange]
    ranges_removed: list[MemRange]
    ranges_resized: list[tuple[MemRange, MemRange]]
    vmcoreinfo_moved: bool
    kernel_text_changed: bool

    @property
    def empty(self) -> bool:
        return not (self.cpus_added or self.cpus_removed or self.ranges_added or self.ranges_removed
                    or self.ranges_resized or self.vmcoreinfo_moved or self.kernel_text_changed)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_keys(s: HeaderSummary) -> list[int]:
    """CPU identities: the owner when known, else the buffer address (raw) or note index (vmcore)."""
    return [c.cpu if c.cpu is not None else (c.paddr if c.paddr is not None else c.index) for c in s.cpu_notes]


def diff_headers(a: HeaderSummary, b: HeaderSummary) -> HeaderDiff:
    """What changed from ``a`` to ``b``: CPUs added/removed, ranges added/removed/resized."""
    ka, kb = _cpu_keys(a), _cpu_keys(b)
    added = [k for k in kb if k not in ka]
    removed = [k for k in ka if k not in kb]
    by_start_a = {r.start: r for r in a.ranges}
    by_start_b = {r.start: r for r in b.ranges}
    resized = [(by_start_a[k], by_start_b[k]) for k in by_start_a
               if k in by_start_b and by_start_a[k].end != by_start_b[k].end]
    return HeaderDiff(
        cpus_added=added,
        cpus_removed=removed,
        ranges_added=[r for k, r in by_start_b.items() if k not in by_start_a],
        ranges_removed=[r for k, r in by_start_a.items() if k not in by_start_b],
        ranges_resized=resized,
        vmcoreinfo_moved=(a.vmcoreinfo_paddr, a.vmcoreinfo_size) != (b.vmcoreinfo_paddr, b.vmcoreinfo_size),
        kernel_text_changed=a.kernel_text != b.kernel_text,
    )


# ---------------------------------------------------------------------------------------------
# kdump-compressed files


@dataclass
class DumpSummary:
    """What ``makedumpfile``'s headers and bitmaps of a kdump-compressed file say (flattened or not)."""

    file: str
    format: str
    header_version: int
    utsname: dict[str, str]
    timestamp: int
    status: int
    compression: str
    incomplete: bool
    block_size: int
    sub_hdr_size: int
    bitmap_blocks: int
    max_mapnr: int
    nr_cpus: int
    current_cpu: int
    phys_base: int
    dump_level: int | None
    dump_level_text: str | None
    split: tuple[int, int] | None
    pages_present: int
    pages_dumped: int
    pages_filtered: int
    cpu_notes: list[CpuNote] = field(default_factory=list)
    vmcoreinfo: dict[str, str] = field(default_factory=dict)
    vmcoreinfo_size: int = 0
    ranges: list[MemRange] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def total_ram(self) -> int:
        return sum(r.size for r in self.ranges)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_ram"] = self.total_ram
        for r in d["ranges"]:
            r["size"] = r["end"] - r["start"] + 1
            del r["vaddr"]
        return d


def summarize_dump(vf: VmcoreFile) -> DumpSummary:
    """The header fields, page counts and memory ranges (from the 1st bitmap) of a kdump-compressed file."""
    kd = vf.kdump
    if not isinstance(kd, KdumpCompressed):
        raise ValueError(f"{vf.path} is {vf.dump_format}, not one kdump-compressed file")
    h, sub = kd.header, kd.sub
    level = kd.dump_level
    return DumpSummary(
        file=str(vf.path),
        format=vf.dump_format,
        header_version=h.header_version,
        utsname=asdict(h.utsname),
        timestamp=h.tv_sec,
        status=h.status,
        compression=h.compression,
        incomplete=kd.incomplete,
        block_size=h.block_size,
        sub_hdr_size=h.sub_hdr_size,
        bitmap_blocks=h.bitmap_blocks,
        max_mapnr=kd.max_mapnr,
        nr_cpus=h.nr_cpus,
        current_cpu=h.current_cpu,
        phys_base=sub.phys_base,
        dump_level=level,
        dump_level_text=None if level is None else dump_level_text(level),
        split=(kd.start_pfn, kd.end_pfn) if kd.split else None,
        pages_present=kd.present_pages,
        pages_dumped=kd.dumped_pages,
        pages_filtered=kd.filtered_pages(),
        cpu_notes=[CpuNote(n.index, None, len(n.desc), None, n.pr_pid, n.prstatus.ip) for n in vf.prstatus],
        vmcoreinfo=vf.key_vmcoreinfo(),
        vmcoreinfo_size=sub.size_vmcoreinfo,
        ranges=[MemRange(s, e, 0) for s, e in vf.present_ranges()],
        warnings=vf.warnings,
    )
