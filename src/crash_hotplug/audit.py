"""A vmcore against the machine at the moment of the panic: is anything missing from the dump?

The machine is a snapshot root (``proc/``, ``sys/`` as the crashed kernel showed them just before
the panic). Three questions:

* CPU contexts: every CPU online at the panic should have an NT_PRSTATUS note; an offline CPU
  has none (its ``crash_notes`` buffer stays zero and ``/proc/vmcore`` drops it).
* Memory: the dump's memory map -- the RAM PT_LOADs of an ELF vmcore, or the 1st bitmap of a
  kdump-compressed one (the pages that existed in the PT_LOADs makedumpfile read) -- against the
  System RAM of ``/proc/iomem`` minus the low 1 MiB and the crashkernel regions (what
  ``arch/x86/kernel/crash.c: prepare_elf_headers`` would list). Pages the map lists but the file
  does not hold (``p_filesz`` short of ``p_memsz``, or in the 1st bitmap and not the 2nd) were
  filtered by the dump level: a note, never missing memory. Offline memory blocks that were dumped
  are noted, not counted as a gap: upstream keeps them, since iomem still lists them.
* Bytes: with memory data in the file and a model machine's ``machine.json`` (its
  ``memory_pattern_seed``), sampled dumped pages must hold :func:`~crash_hotplug.machine.physmem.page_pattern`.

Every format gets the same verdict as the ELF it was made from; a bitmap is compared page by page
(the System RAM ranges rounded out to whole pages).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from crash_hotplug.crash.core import CrashMem, crash_exclude_mem_range
from crash_hotplug.crash.vmcore import PrstatusNote, VmcoreFile, merge_ranges, read_vmcore_files, subtract_ranges
from crash_hotplug.crash.x86_64 import SZ_1M
from crash_hotplug.elf.constants import NT_PRSTATUS
from crash_hotplug.elf.core import pt_load_problems
from crash_hotplug.elf.notes import iter_notes
from crash_hotplug.elf.prstatus import CRASH_CORE_NOTE_BYTES, USER_REGS
from crash_hotplug.errors import ElfFormatError, SnapshotError
from crash_hotplug.machine.physmem import MODEL_STATE_FILE, page_pattern
from crash_hotplug.machine.resource import CRASH_KERNEL, walk_system_ram_res
from crash_hotplug.makedumpfile.kdump import dump_level_text
from crash_hotplug.snapshot.devicetree import is_ppc64_root, read_device_tree
from crash_hotplug.snapshot.reader import CPU_DIR, MEM_DIR, check_crash_notes, read_cpulist, read_iomem
from crash_hotplug.snapshot.root import FsRoot

__all__ = [
    "AuditReport",
    "ByteCheck",
    "CpuRow",
    "CpuState",
    "Finding",
    "MachineAtPanic",
    "MemoryCheck",
    "ModelState",
    "audit",
    "audit_vmcore",
    "read_machine_at_panic",
    "read_model_state",
]

#: an inclusive physical range ``(start, end)``
Range = tuple[int, int]

DEFAULT_SAMPLES: Final = 64


# ---------------------------------------------------------------------------------------------
# Ranges


def _intersect(a: list[Range], b: list[Range]) -> list[Range]:
    return merge_ranges([(max(s, bs), min(e, be)) for s, e in a for bs, be in b if max(s, bs) <= min(e, be)])


def _hex_ranges(ranges: list[Range]) -> list[dict[str, str]]:
    return [{"start": f"{s:#x}", "end": f"{e:#x}"} for s, e in ranges]


# ---------------------------------------------------------------------------------------------
# The machine at the panic


@dataclass(frozen=True)
class CpuState:
    """A CPU as the model machine left it at the panic: its task's pid and registers (any subset)."""

    pr_pid: int | None = None
    regs: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelState:
    """``var/lib/crash-hotplug/machine.json`` of a model machine's snapshot.

    ``memory_pattern_seed`` (required): every page not in ``written_ranges`` holds
    ``page_pattern(pfn, seed)``; ``cpus``: ``{"N": {"pr_pid": int, "regs": {"ip": int, ...}}}``;
    ``panic_cpu``: the CPU that panicked.
    """

    memory_pattern_seed: int
    written_ranges: tuple[Range, ...] = ()
    cpus: dict[int, CpuState] = field(default_factory=dict)
    panic_cpu: int | None = None


def _int(v: object, what: str) -> int:
    if isinstance(v, bool):
        raise ValueError(f"{what}: expected an integer, found {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            pass
    raise ValueError(f"{what}: expected an integer, found {v!r}")


def read_model_state(root: FsRoot) -> ModelState | None:
    """The model machine's state under ``root``, or None when the snapshot has no ``machine.json``."""
    text = root.read_optional(MODEL_STATE_FILE)
    if text is None:
        return None
    where = root.display(MODEL_STATE_FILE)
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or "memory_pattern_seed" not in data:
            raise ValueError("has no memory_pattern_seed")
        seed = _int(data["memory_pattern_seed"], "memory_pattern_seed")
        written = tuple(
            (_int(r[0], "written_ranges start"), _int(r[1], "written_ranges end"))
            for r in data.get("written_ranges", [])
        )
        cpus: dict[int, CpuState] = {}
        for key, st in dict(data.get("cpus", {})).items():
            raw_regs = st.get("regs", {})
            if isinstance(raw_regs, list):  # user_regs_struct order
                if len(raw_regs) != len(USER_REGS):
                    raise ValueError(f"cpus.{key}.regs: {len(raw_regs)} values, user_regs_struct has {len(USER_REGS)}")
                raw_regs = dict(zip(USER_REGS, raw_regs, strict=True))
            regs = {str(k): _int(v, f"cpus.{key}.regs.{k}") for k, v in dict(raw_regs).items()}
            unknown = sorted(set(regs) - set(USER_REGS))
            if unknown:
                raise ValueError(f"cpus.{key}.regs: {unknown[0]!r} is not a user_regs_struct register")
            pid = st.get("pr_pid", st.get("pid"))
            cpus[_int(key, "cpus key")] = CpuState(None if pid is None else _int(pid, f"cpus.{key}.pr_pid"), regs)
        panic = data.get("panic_cpu")
        return ModelState(seed, written, cpus, None if panic is None else _int(panic, "panic_cpu"))
    except json.JSONDecodeError as e:
        raise SnapshotError(where, f"not JSON ({e.msg} at line {e.lineno})") from None
    except (ValueError, TypeError, AttributeError, IndexError) as e:
        raise SnapshotError(where, str(e) or "malformed") from None


@dataclass(frozen=True)
class MachineAtPanic:
    """What the snapshot says the audit needs: online CPUs, RAM, offline blocks, note addresses."""

    root: Path
    online: tuple[int, ...]
    present: tuple[int, ...]
    system_ram: tuple[Range, ...]
    crash_kernel: tuple[Range, ...]
    #: System RAM minus [0, 1 MiB) and the crashkernel regions: what the header should list
    expected_ram: tuple[Range, ...]
    #: memory blocks that are offline; None when the snapshot has no memory block files
    offline_memory: tuple[Range, ...] | None
    crash_notes: dict[int, int]
    model: ModelState | None
    #: ``ppc64le`` for a powerpc snapshot (crashkernel from the device tree, RTAS dumped, no
    #: kernel-text PT_LOAD, the first 64 KiB read from the backup copy)
    arch: str = "x86_64"


def _memory_blocks_offline(root: FsRoot) -> tuple[Range, ...] | None:
    if not root.exists(f"{MEM_DIR}/block_size_bytes"):
        return None
    block = root.read_int(f"{MEM_DIR}/block_size_bytes", 16)
    if block <= 0:
        raise SnapshotError(root.display(f"{MEM_DIR}/block_size_bytes"), f"block size {block} is not positive")
    offline: list[Range] = []
    for d in sorted(root.file(MEM_DIR).glob("memory[0-9]*")):
        rel = f"{MEM_DIR}/{d.name}"
        state = root.read_text(f"{rel}/state").strip()
        if state == "offline":
            idx = root.read_int(f"{rel}/phys_index", 16)
            offline.append((idx * block, (idx + 1) * block - 1))
    return tuple(merge_ranges(offline))


def read_machine_at_panic(root_dir: Path) -> MachineAtPanic:
    """The machine state under ``root_dir``; :class:`SnapshotError` names a missing or bad file."""
    root = FsRoot(Path(root_dir))
    online = read_cpulist(root, "online")
    present = read_cpulist(root, "present") if root.exists(f"{CPU_DIR}/present") else online
    iomem = read_iomem(root)
    system_ram = list(walk_system_ram_res(iomem))
    if not system_ram:
        raise SnapshotError(root.display("proc/iomem"), "has no System RAM")
    ppc64 = is_ppc64_root(root)
    dt = read_device_tree(root) if ppc64 else None
    if dt is not None:
        crash = [dt.crashk_res] if dt.crashk_res is not None else []
    else:
        crash = sorted((r.start, r.end) for r in iomem.find(CRASH_KERNEL))
    cmem = CrashMem(max_nr_ranges=len(system_ram) + 2 * len(crash) + 2, ranges=list(system_ram))
    if not ppc64:
        crash_exclude_mem_range(cmem, 0, SZ_1M - 1)
    for s, e in crash:
        crash_exclude_mem_range(cmem, s, e)
    if dt is not None and dt.rtas is not None:
        # powerpc dumps RTAS, inside the crashkernel region, as its own PT_LOAD (ranges.c)
        cmem.ranges.append((dt.rtas[0], dt.rtas[0] + dt.rtas[1] - 1))
    notes = {
        cpu: root.read_int(f"{CPU_DIR}/cpu{cpu}/crash_notes", 16)
        for cpu in present
        if root.exists(f"{CPU_DIR}/cpu{cpu}/crash_notes")
    }
    size_file = f"{CPU_DIR}/cpu{min(notes)}/crash_notes_size" if notes else None
    if size_file is not None and root.exists(size_file) and any(notes.values()):
        # the same rule the header builder's reader applies: where the per-CPU allocator can put them
        check_crash_notes(notes, root.read_int(size_file), list(system_ram),
                          lambda cpu: root.display(f"{CPU_DIR}/cpu{cpu}/crash_notes"), list(crash))
    return MachineAtPanic(
        root=root.path,
        online=online,
        present=present,
        system_ram=tuple(system_ram),
        crash_kernel=tuple(crash),
        expected_ram=tuple(merge_ranges(cmem.ranges)),
        offline_memory=_memory_blocks_offline(root),
        crash_notes=notes,
        model=read_model_state(root),
        arch="ppc64le" if ppc64 else "x86_64",
    )


# ---------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class Finding:
    """One gap: ``kind`` is ``cpu-missing``, ``cpu-extra``, ``registers-differ``, ``memory-missing``,
    ``memory-extra``, ``bytes-differ``, ``data-truncated``, ``dump-part`` (one part of a split dump) or
    ``pt-load-layout`` (PT_LOADs that overlap or are out of order: no kernel wrote them)."""

    kind: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


@dataclass(frozen=True)
class CpuRow:
    """One CPU: online at the panic?, which note (by position in the vmcore) it got, and the verdict."""

    cpu: int
    online: bool
    note: int | None
    pr_pid: int | None
    ip: int | None
    status: str
    detail: str = ""
    panic: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "cpu": self.cpu, "online": self.online, "note": self.note, "pr_pid": self.pr_pid,
            "ip": None if self.ip is None else f"{self.ip:#x}", "status": self.status,
            "detail": self.detail, "panic": self.panic,
        }


#: filtered ranges a report lists (the count and size cover all of them)
FILTERED_SHOWN: Final = 16


@dataclass(frozen=True)
class MemoryCheck:
    """``dumped``: the dump's memory map (RAM PT_LOADs, or the 1st bitmap); ``filtered``: the first
    :data:`FILTERED_SHOWN` of its ranges whose bytes the file leaves out (``filtered_bytes`` in all)."""

    dumped: list[Range]
    expected: list[Range]
    missing: list[Range]
    extra: list[Range]
    offline_dumped: list[Range] | None
    kernel_text: tuple[int, int, int] | None  # vaddr, paddr, size
    filtered: list[Range] = field(default_factory=list)
    filtered_bytes: int = 0
    filtered_ranges: int = 0
    dump_level: int | None = None

    def to_json(self) -> dict[str, Any]:
        kt = self.kernel_text
        return {
            "dumped": _hex_ranges(self.dumped),
            "expected": _hex_ranges(self.expected),
            "missing": _hex_ranges(self.missing),
            "extra": _hex_ranges(self.extra),
            "offline_dumped": None if self.offline_dumped is None else _hex_ranges(self.offline_dumped),
            "kernel_text": None if kt is None else {"vaddr": f"{kt[0]:#x}", "paddr": f"{kt[1]:#x}", "size": kt[2]},
            "filtered": _hex_ranges(self.filtered),
            "filtered_bytes": self.filtered_bytes,
            "filtered_ranges": self.filtered_ranges,
            "dump_level": self.dump_level,
        }


@dataclass(frozen=True)
class ByteCheck:
    """Sampled pages against the model's pattern; ``done`` False with the ``reason`` it was skipped."""

    done: bool
    reason: str
    samples: int = 0
    candidates: int = 0
    mismatches: tuple[int, ...] = ()  # physical addresses of pages that differ

    def to_json(self) -> dict[str, Any]:
        return {
            "done": self.done, "reason": self.reason, "samples": self.samples, "candidate_pages": self.candidates,
            "mismatches": [f"{a:#x}" for a in self.mismatches],
        }


@dataclass(frozen=True)
class AuditReport:
    vmcore: str
    root: str
    dump_format: str
    vmcoreinfo: dict[str, str]
    file_size: int
    data_end: int
    cpu_method: str
    cpus: list[CpuRow]
    memory: MemoryCheck
    bytes: ByteCheck
    findings: list[Finding]
    notes: list[str]

    @property
    def complete(self) -> bool:
        return not self.findings

    @property
    def exit_status(self) -> int:
        """0 when the vmcore holds everything the machine had, 1 on any gap."""
        return 0 if self.complete else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "vmcore": self.vmcore,
            "root": self.root,
            "format": self.dump_format,
            "complete": self.complete,
            "exit_status": self.exit_status,
            "vmcoreinfo": self.vmcoreinfo,
            "file_size": self.file_size,
            "full_size": self.data_end,
            "cpu_method": self.cpu_method,
            "cpus": [c.to_json() for c in self.cpus],
            "memory": self.memory.to_json(),
            "bytes": self.bytes.to_json(),
            "findings": [f.to_json() for f in self.findings],
            "notes": self.notes,
        }


# ---------------------------------------------------------------------------------------------
# CPU contexts


@dataclass
class _CpuMatch:
    method: str
    by_cpu: dict[int, PrstatusNote]
    unmatched: list[PrstatusNote]
    saved_without_note: set[int] = field(default_factory=set)
    note: str | None = None


def _saved_prstatus(raw: bytes) -> bytes | None:
    """The NT_PRSTATUS descriptor a ``crash_notes`` buffer holds, if any."""
    try:
        for n in iter_notes(raw):
            if n.name == "CORE" and n.n_type == NT_PRSTATUS:
                return n.desc
            return None
    except ElfFormatError:
        return None
    return None


def _match_by_crash_notes(vf: VmcoreFile, m: MachineAtPanic) -> _CpuMatch | None:
    """Read each CPU's ``crash_notes`` through the vmcore's PT_LOADs and find its note by content."""
    if not vf.has_data or not m.crash_notes:
        return None
    by_cpu: dict[int, PrstatusNote] = {}
    left = list(vf.prstatus)
    saved: set[int] = set()
    for cpu, addr in sorted(m.crash_notes.items()):
        raw = vf.read_phys(addr, CRASH_CORE_NOTE_BYTES)
        if raw is None:
            return None
        desc = _saved_prstatus(raw)
        if desc is None:
            continue
        hit = next((n for n in left if n.desc == desc), None)
        if hit is None:
            saved.add(cpu)
            continue
        left.remove(hit)
        by_cpu[cpu] = hit
    if left:
        return None
    return _CpuMatch("crash_notes", by_cpu, [], saved)


def _regs_match(note: PrstatusNote, st: CpuState) -> bool:
    if st.pr_pid is not None and st.pr_pid != note.pr_pid:
        return False
    return all(note.prstatus.reg(k) == v for k, v in st.regs.items())


def _match_by_model(vf: VmcoreFile, m: MachineAtPanic) -> _CpuMatch | None:
    if m.model is None or not m.model.cpus or not vf.prstatus:
        return None
    by_cpu: dict[int, PrstatusNote] = {}
    for note in vf.prstatus:
        cpu = next((c for c, st in sorted(m.model.cpus.items()) if c not in by_cpu and _regs_match(note, st)), None)
        if cpu is None:
            return None
        by_cpu[cpu] = note
    return _CpuMatch("machine.json", by_cpu, [])


def _match_by_order(vf: VmcoreFile, m: MachineAtPanic) -> _CpuMatch:
    online = sorted(m.online)
    notes = list(vf.prstatus)
    by_cpu = dict(zip(online, notes, strict=False))
    match = _CpuMatch("order", by_cpu, notes[len(online):])
    if len(notes) != len(online):
        match.note = (
            f"{len(notes)} NT_PRSTATUS notes for {len(online)} online CPUs: notes were matched to online CPUs "
            "in ascending order, so which CPUs lack register state is inferred, not read (a whole vmcore with "
            "cpuN/crash_notes in the snapshot, or machine.json with each CPU's registers, identifies them)"
        )
    return match


def _check_cpus(
    vf: VmcoreFile, m: MachineAtPanic, findings: list[Finding], notes: list[str]
) -> tuple[str, list[CpuRow]]:
    match = _match_by_crash_notes(vf, m) or _match_by_model(vf, m) or _match_by_order(vf, m)
    if match.note:
        notes.append(match.note)
    model = m.model
    panic = model.panic_cpu if model else None
    online = set(m.online)
    rows: list[CpuRow] = []
    for cpu in sorted(online | set(m.present) | set(match.by_cpu)):
        note = match.by_cpu.get(cpu)
        is_online = cpu in online
        tag = " (the panic CPU)" if cpu == panic else ""
        if note is None:
            if not is_online:
                rows.append(CpuRow(cpu, False, None, None, None, "offline", "", cpu == panic))
                continue
            detail = "online, but no NT_PRSTATUS in the vmcore"
            if cpu in match.saved_without_note:
                detail += " (its crash_notes buffer holds one: the elfcorehdr had no PT_NOTE for it)"
            rows.append(CpuRow(cpu, True, None, None, None, "missing", detail, cpu == panic))
            findings.append(Finding("cpu-missing", f"CPU {cpu}{tag}: {detail}"))
            continue
        ps = note.prstatus
        if not is_online:
            detail = f"offline, but note #{note.index} (pr_pid {ps.pr_pid}) belongs to it"
            rows.append(CpuRow(cpu, False, note.index, ps.pr_pid, ps.ip, "extra", detail, cpu == panic))
            findings.append(Finding("cpu-extra", f"CPU {cpu}: {detail}"))
            continue
        st = model.cpus.get(cpu) if model else None
        if st is not None and not _regs_match(note, st):
            diffs = [f"pr_pid {ps.pr_pid} != {st.pr_pid}"] if st.pr_pid is not None and st.pr_pid != ps.pr_pid else []
            diffs += [f"{k} {ps.reg(k):#x} != {v:#x}" for k, v in st.regs.items() if ps.reg(k) != v]
            detail = "; ".join(diffs[:4]) + (f"; {len(diffs) - 4} more" if len(diffs) > 4 else "")
            rows.append(CpuRow(cpu, True, note.index, ps.pr_pid, ps.ip, "registers differ", detail, cpu == panic))
            findings.append(
                Finding("registers-differ", f"CPU {cpu}{tag}: saved registers differ from the machine's: {detail}")
            )
            continue
        checked = " (registers checked)" if st is not None else ""
        detail = f"note #{note.index}{checked}"
        rows.append(CpuRow(cpu, True, note.index, ps.pr_pid, ps.ip, "saved", detail, cpu == panic))
    for note in match.unmatched:
        findings.append(Finding(
            "cpu-extra",
            f"note #{note.index} (pr_pid {note.pr_pid}, ip {note.prstatus.ip:#x}) matches no CPU online at the panic",
        ))
    return match.method, rows


# ---------------------------------------------------------------------------------------------
# Memory and bytes


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:#x} bytes"


def _to_pages(ranges: list[Range], ps: int) -> list[Range]:
    """Ranges rounded out to whole pages (how a page bitmap sees them)."""
    return merge_ranges([(s // ps * ps, (e // ps + 1) * ps - 1) for s, e in ranges])


def _check_memory(vf: VmcoreFile, m: MachineAtPanic, findings: list[Finding], notes: list[str]) -> MemoryCheck:
    dumped = vf.present_ranges()
    expected = list(m.expected_ram)
    offline_blocks = list(m.offline_memory or ())
    if vf.page_granular:
        want, offline_blocks = _to_pages(expected, vf.page_size), _to_pages(offline_blocks, vf.page_size)
    else:
        want = expected
    # offline blocks hold nothing worth dumping: not dumping them is no gap (dumping them is a note)
    missing = subtract_ranges(subtract_ranges(want, offline_blocks), dumped)
    extra = subtract_ranges(dumped, want)
    for s, e in missing:
        findings.append(
            Finding("memory-missing", f"System RAM {s:#x}-{e:#x} ({_size(e - s + 1)}) is not in the vmcore")
        )
    for s, e in extra:
        findings.append(Finding(
            "memory-extra", f"vmcore lists {s:#x}-{e:#x} ({_size(e - s + 1)}), which is not System RAM at the panic"
        ))
    offline = None
    if m.offline_memory is not None:
        offline = _intersect(dumped, offline_blocks)
        for s, e in offline:
            notes.append(
                f"memory {s:#x}-{e:#x} ({_size(e - s + 1)}) is dumped but its blocks were offline at the panic; "
                "upstream keeps offline blocks in the header, since iomem still lists them"
            )
    shown: list[Range] = []
    filtered_bytes = filtered_ranges = 0
    for s, e in vf.iter_filtered_ranges():
        filtered_ranges += 1
        filtered_bytes += e - s + 1
        if len(shown) < FILTERED_SHOWN:
            shown.append((s, e))
    level = vf.dump_level
    if filtered_bytes:
        by = f"the dump level, {dump_level_text(level)}" if level is not None else "the dump level"
        notes.append(
            f"{filtered_bytes // vf.page_size} pages ({_size(filtered_bytes)}) in {filtered_ranges} ranges are in "
            f"the dump's memory map but not in the file: filtered by {by}; not missing"
        )
    elif level:
        notes.append(f"written with {dump_level_text(level)}, which left out no page of this machine")
    text = vf.kernel_text
    kt = None if text is None else (text.vaddr, text.paddr, text.size)
    if vf.core is not None and text is None and m.arch != "ppc64le":
        notes.append("the vmcore has no kernel-text PT_LOAD (tools that want the _text mapping will miss it)")
    elif text is not None and subtract_ranges([(text.paddr, text.end)], dumped):
        notes.append(f"kernel text {text.paddr:#x}-{text.end:#x} is not inside the dumped RAM")
    return MemoryCheck(dumped, expected, missing, extra, offline, kt, shown, filtered_bytes, filtered_ranges, level)


def _pool_pages(dumped: Iterable[Range], allowed: list[Range], ps: int) -> Iterator[Range]:
    """pfn runs of whole pages that are both dumped and ``allowed`` (both ascending), streamed."""
    i = 0
    for s, e in dumped:
        while i < len(allowed) and allowed[i][1] < s:
            i += 1
        j = i
        while j < len(allowed) and allowed[j][0] <= e:
            lo, hi = max(s, allowed[j][0]), min(e, allowed[j][1])
            first, last = -(-lo // ps), (hi + 1) // ps - 1
            if last >= first:
                yield first, last
            j += 1


def _check_bytes(
    vf: VmcoreFile, m: MachineAtPanic, mem: MemoryCheck, samples: int, seed: int, findings: list[Finding]
) -> ByteCheck:
    why: list[str] = []
    kd = vf.kdump
    if kd is not None and kd.split:
        findings.append(Finding(
            "dump-part",
            f"the file is one part of a makedumpfile --split dump: it holds the pages of pfns {kd.start_pfn:#x}-"
            f"{kd.end_pfn - 1:#x} only; audit all its parts together",
        ))
    if vf.headers_only:
        why.append("the file holds headers and notes only, no memory data")
    elif not vf.has_data:
        if vf.kdump is not None:
            what = "makedumpfile marked it incomplete (DUMP_DH_COMPRESSED_INCOMPLETE): pages are missing from the file"
        else:
            what = f"the file ends at {vf.file_size:#x} but its PT_LOAD data runs to {vf.data_end:#x}"
        findings.append(Finding("data-truncated", f"{what}: the dump is truncated"))
        why.append("the memory data is truncated")
    if m.model is None:
        why.append(f"the snapshot has no {MODEL_STATE_FILE} (no memory_pattern_seed): a real machine's bytes "
                   "are unknown")
    if samples == 0:
        why.append("no pages asked for (--samples 0)")
    if why or m.model is None:
        return ByteCheck(False, "skipped: " + "; ".join(why))
    ps = vf.page_size
    allowed = subtract_ranges(mem.expected, merge_ranges(list(m.model.written_ranges)))
    total = sum(b - a + 1 for a, b in _pool_pages(vf.iter_dumped_ranges(), allowed, ps))
    if total == 0:
        return ByteCheck(False, "skipped: no unwritten dumped page to sample")
    picks = sorted(random.Random(seed).sample(range(total), min(samples, total)))
    bad: list[int] = []
    k = acc = 0
    for a, b in _pool_pages(vf.iter_dumped_ranges(), allowed, ps):
        n = b - a + 1
        while k < len(picks) and picks[k] < acc + n:
            pfn = a + picks[k] - acc
            if vf.read_phys(pfn * ps, ps) != page_pattern(pfn, m.model.memory_pattern_seed):
                bad.append(pfn * ps)
            k += 1
        acc += n
        if k == len(picks):
            break
    if bad:
        shown = ", ".join(f"{a:#x}" for a in bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        findings.append(
            Finding("bytes-differ", f"{len(bad)} of {len(picks)} sampled pages differ from the machine's: {shown}")
        )
    return ByteCheck(True, f"{len(picks)} of {total} unwritten dumped System RAM pages sampled (seed {seed})",
                     len(picks), total, tuple(bad))


# ---------------------------------------------------------------------------------------------


def audit_vmcore(vf: VmcoreFile, m: MachineAtPanic, *, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> AuditReport:
    """Compare a vmcore with the machine at the panic."""
    findings: list[Finding] = [
        Finding("pt-load-layout", w)
        for w in pt_load_problems((s.index, s.paddr, s.size) for s in vf.loads if not s.is_kernel_text)
    ]
    notes: list[str] = []
    method, cpus = _check_cpus(vf, m, findings, notes)
    mem = _check_memory(vf, m, findings, notes)
    byte_check = _check_bytes(vf, m, mem, samples, seed, findings)
    notes = [*vf.warnings, *notes]
    return AuditReport(
        vmcore=str(vf.path),
        root=str(m.root),
        dump_format=vf.dump_format,
        vmcoreinfo=vf.key_vmcoreinfo(),
        file_size=vf.file_size,
        data_end=vf.data_end,
        cpu_method=method,
        cpus=cpus,
        memory=mem,
        bytes=byte_check,
        findings=findings,
        notes=notes,
    )


def audit(vmcore: Path | list[Path], root: Path, *, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> AuditReport:
    """Read both inputs and audit; raises a :class:`~crash_hotplug.errors.CrashHotplugError` on unusable input.

    ``vmcore`` is one dump, or the parts of a ``makedumpfile --split`` dump."""
    machine = read_machine_at_panic(root)
    paths = vmcore if isinstance(vmcore, list) else [vmcore]
    return audit_vmcore(read_vmcore_files(paths), machine, samples=samples, seed=seed)
