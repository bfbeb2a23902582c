"""Run a storm against one approach with the mechanism's own code on a virtual clock, and record
what a panic would have found at every moment.

The machine, the kdump image, the in-kernel handlers and the udev/kdumpctl path are the project's
own (:mod:`crash_hotplug.scenario`); the simulation only schedules the storm's operations on the
machine's clock, prices every step with the cost model, and watches the state after each timer:
is a crash image loaded, and does the header in memory describe the machine (its online CPUs and
its online memory)? Windows in which a panic finds the kdump path blocked -- the kexec lock held,
the image hidden during a copy -- come from the handlers and the reload path themselves.
"""

from __future__ import annotations

import bisect
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from crash_hotplug.crash.arch import Outcome
from crash_hotplug.crash.ours import OursCrashHotplug
from crash_hotplug.crash.vmcore import parse_elfcorehdr_param
from crash_hotplug.crash.x86_64 import elf_header_exclude_ranges, fill_up_crash_elf_data
from crash_hotplug.elf.constants import PT_LOAD, PT_NOTE
from crash_hotplug.elf.structs import EHDR, PHDR
from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.kexec.kimage import Kimage
from crash_hotplug.legacy.kdumpctl import KdumpService
from crash_hotplug.machine.clock import Clock
from crash_hotplug.machine.kernel import START_KERNEL_MAP
from crash_hotplug.machine.machine import Machine
from crash_hotplug.machine.memory import MEM_OFFLINE, MEM_ONLINE, Dimm, MemoryNotify
from crash_hotplug.machine.notifier import NOTIFY_OK
from crash_hotplug.machine.physmem import PAGE_SIZE
from crash_hotplug.machine.resource import system_ram_ranges
from crash_hotplug.scenario import ScenarioRun
from crash_hotplug.sim.costs import CostModel
from crash_hotplug.sim.plans import GIB, Plan, SimOp
from crash_hotplug.sim.ppc64 import Ppc64Guest, Ppc64SimRun, ppc64_base_ranges, start_ppc64

__all__ = ["APPROACHES", "SimError", "Timeline", "simulate"]

APPROACHES = ("legacy", "legacy-throttled", "rfc", "upstream", "ours")


class SimError(CrashHotplugError):
    """An operation of the storm that the machine refused."""


@dataclass
class Timeline:
    """What one approach did during the storm, and what a panic would have met at any moment."""

    approach: str
    plan: str
    events: list[float]
    #: (from time, crash image loaded, header true): the state from that time on
    states: list[tuple[float, bool, bool]]
    #: (start, end, kind) in which a panic finds the kdump path blocked
    blocked: list[tuple[float, float, str]]
    regenerations: list[float]
    reloads: list[float]
    lags: list[float]
    #: a panic rebuilds a pending header before the capture kernel runs
    panic_flush: bool
    end: float
    hotplug_events: int = 0
    #: updates dropped because the kexec lock was busy (``kexec_trylock`` failed)
    dropped: int = 0
    #: ``ours``: updates deferred until the kexec lock was released
    deferred: int = 0
    #: events or hotplug operations that waited for an update in progress
    waited: int = 0
    #: (start, end) of each ``kdumpctl reload``
    reload_busy: list[tuple[float, float]] = field(default_factory=list)
    #: reloads that failed (a syscall found the kexec lock held)
    reload_failures: int = 0
    _times: list[float] = field(default_factory=list, repr=False)

    def state_at(self, t: float) -> tuple[bool, bool]:
        if not self._times:
            self._times = [s[0] for s in self.states]
        i = bisect.bisect_right(self._times, t) - 1
        if i < 0:
            return False, False
        return self.states[i][1], self.states[i][2]

    def blocked_at(self, t: float) -> str | None:
        for s, e, kind in self.blocked:
            if s <= t < e:
                return kind
        return None


def _ram_and_notes(table: bytes) -> tuple[list[tuple[int, int]], set[int]]:
    """RAM ranges (above the first MiB) and note addresses of a program header table."""
    if len(table) % 8 == 0 and sys.byteorder == "little":
        # a program header is seven 64-bit words: (p_type | p_flags << 32, offset, vaddr, paddr,
        # filesz, memsz, align); read the four columns at C speed
        q = memoryview(table).cast("Q")
        rows = list(zip([w & 0xFFFFFFFF for w in q[0::7].tolist()], q[2::7].tolist(), q[3::7].tolist(),
                        q[5::7].tolist(), strict=True))
    else:
        rows = [(t, v, p, m) for t, _f, _o, v, p, _fs, m, _a in PHDR.iter_unpack(table)]
    # the first MiB is left out of the kernel's header and mapped by kexec-tools' (its backup
    # region): either way the capture kernel has it, so it is not compared
    ram = [(p if p > LOW_1M else LOW_1M, p + m - 1) for t, v, p, m in rows
           if t == PT_LOAD and v < START_KERNEL_MAP and p + m > LOW_1M]
    notes = {p for t, _v, p, _m in rows if t == PT_NOTE}
    return ram, notes


def _header_bytes(mem_read: Callable[[int, int], bytes], addr: int) -> bytes:
    """The ELF header at ``addr`` with its program header table, as one read."""
    phnum = EHDR.unpack(mem_read(addr, EHDR.size))[10]
    return mem_read(addr, EHDR.size + phnum * PHDR.size)


class _BlockRuns:
    """Offline memory blocks as sorted, disjoint runs of block indices ``[first, last]``, kept up
    to date one block at a time (a storm onlines blocks next to each other, so there are few)."""

    def __init__(self, indices: Iterable[int] = ()) -> None:
        self.firsts: list[int] = []
        self.lasts: list[int] = []
        for i in sorted(indices):
            if self.lasts and self.lasts[-1] + 1 == i:
                self.lasts[-1] = i
            else:
                self.firsts.append(i)
                self.lasts.append(i)

    def add(self, i: int) -> None:
        k = bisect.bisect_right(self.firsts, i) - 1
        if k >= 0 and self.lasts[k] >= i:
            return
        left = k >= 0 and self.lasts[k] + 1 == i
        right = k + 1 < len(self.firsts) and self.firsts[k + 1] == i + 1
        if left and right:
            self.lasts[k] = self.lasts[k + 1]
            del self.firsts[k + 1], self.lasts[k + 1]
        elif left:
            self.lasts[k] = i
        elif right:
            self.firsts[k + 1] = i
        else:
            self.firsts.insert(k + 1, i)
            self.lasts.insert(k + 1, i)

    def discard(self, i: int) -> None:
        k = bisect.bisect_right(self.firsts, i) - 1
        if k < 0 or self.lasts[k] < i:
            return
        first, last = self.firsts[k], self.lasts[k]
        if first == last:
            del self.firsts[k], self.lasts[k]
        elif i == first:
            self.firsts[k] = i + 1
        elif i == last:
            self.lasts[k] = i - 1
        else:
            self.lasts[k] = i - 1
            self.firsts.insert(k + 1, i + 1)
            self.lasts.insert(k + 1, last)

    def ranges(self, size: int) -> list[tuple[int, int]]:
        """Inclusive byte ranges of the runs for blocks of ``size`` bytes."""
        return [(f * size, (last + 1) * size - 1) for f, last in zip(self.firsts, self.lasts, strict=True)]


def _cut(base: list[tuple[int, int]], starts: list[int], ends: list[int],
         cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``base`` (sorted, disjoint; ``starts``/``ends`` its columns) with every sorted, disjoint
    inclusive range of ``cuts`` cut out, range by range as ``crash_exclude_mem_range`` (6.8+)
    cuts them one after another: a range covered is dropped, one cut inside is split, one
    overlapped at an end is trimmed. Only the ranges a cut touches are visited."""
    affected = sorted({x for cs, ce in cuts
                       for x in range(bisect.bisect_left(ends, cs), bisect.bisect_right(starts, ce))})
    out: list[tuple[int, int]] = []
    prev = 0
    for x in affected:
        out += base[prev:x]
        s, e = base[x]
        for cs, ce in cuts:
            if ce < s or cs > e:
                continue
            if cs > s:
                out.append((s, cs - 1))
            s = ce + 1
            if s > e:
                break
        if s <= e:
            out.append((s, e))
        prev = x + 1
    out += base[prev:]
    return out


def _header_addr(image: Kimage) -> int:
    """Where the capture kernel would find the header: the active slot of the elfcorehdr segment,
    else what ``elfcorehdr=`` says (a ``kexec_load`` image), as the panic path finds it."""
    if image.elfcorehdr_index < 0:
        if "elfcorehdr=" in image.cmdline:
            return parse_elfcorehdr_param(image.cmdline)
        return image.elf_load_addr
    seg = image.segments[image.elfcorehdr_index]
    return seg.mem + image.elfcorehdr_active * (seg.memsz // image.elfcorehdr_slots)


#: below this the kernel's header and kexec-tools' differ by design (not a verdict)
LOW_1M = 1 << 20

#: one object per range, for every observer (see :func:`_same_all`)
_RANGES: dict[tuple[int, int], tuple[int, int]] = {}
#: what the x86 builder's range steps give, by what they read (the System RAM ranges, the
#: crashkernel regions, the config): every approach of a comparison walks the same trees
_BASES: dict[tuple[object, ...], tuple[list[tuple[int, int]], list[int], list[int]]] = {}
#: parsed x86 header tables (their compared ranges, interned, and note addresses) by their bytes
_PARSED: dict[bytes, tuple[list[tuple[int, int]], set[int]]] = {}
#: entries each of the two memos keeps (the oldest go first)
_MEMO_MAX = 512
_K = TypeVar("_K")
_V = TypeVar("_V")


def _same_all(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges, each as the one object kept for it: the header's ranges and the expected ones
    are then compared by identity (at C speed), not number by number."""
    if len(_RANGES) + len(ranges) > 1 << 16:
        _RANGES.clear()
    return list(map(_RANGES.setdefault, ranges, ranges))


def _remember(memo: dict[_K, _V], key: _K, value: _V) -> None:
    """Keep ``key -> value`` in a memo of at most :data:`_MEMO_MAX` entries."""
    if len(memo) >= _MEMO_MAX:
        del memo[next(iter(memo))]
    memo[key] = value


class _Observer:
    """Records (time, loaded, true) whenever something a panic depends on changed.

    Incremental: the header in memory is read again only when the image, its active slot or
    memory was written since, and parsed again only when its bytes differ from the last parse;
    the memory the machine needs described is the System RAM the kernel's builder starts from
    (recomputed only when the iomem tree changed) minus the offline blocks (kept as runs from the
    notifier), and the CPU notes are looked up again only when the online CPUs changed."""

    def __init__(self, run: ScenarioRun | Ppc64SimRun) -> None:
        self.run = run
        #: on ppc64le headers are compared by what they cover outside the crashkernel region:
        #: kexec-tools writes RTAS (which lies in it) page-rounded, the kernel exactly
        self._ppc64 = isinstance(run, Ppc64SimRun)
        self.states: list[tuple[float, bool, bool]] = []
        self.event_times: list[float] = []
        self._memory_changes = 0
        self._hdr_key: tuple[object, ...] | None = None
        #: (image, command line, active slot) the header's address was found for, and the address
        self._addr_key: tuple[Kimage, str, int] | None = None
        self._addr = 0
        self._table: bytes | None = None
        #: (address, bytes) of the whole header (ELF header and program headers) as last read
        self._whole: tuple[int, bytes] | None = None
        self._hdr: tuple[list[tuple[int, int]], set[int]] = ([], set())
        self._want_key: tuple[object, ...] | None = None
        self._want: list[tuple[int, int]] = []
        self._base_key: tuple[object, ...] | None = None
        self._base: tuple[list[tuple[int, int]], list[int], list[int]] = ([], [], [])
        self._notes_key: tuple[int, ...] | None = None
        self._notes: tuple[int, ...] = ()
        self._last: tuple[object, ...] | None = None
        self._offline: _BlockRuns | None = None
        self._nblocks = 0
        self._dimms: dict[str, Dimm] = {}
        self._dimm_items: list[tuple[str, Dimm]] = []
        run.machine.register_memory_notifier(self._memory_changed, -(1 << 31), "simulation observer")

    def _memory_changed(self, action: int, arg: MemoryNotify) -> int:
        self._memory_changes += 1
        if action in (MEM_ONLINE, MEM_OFFLINE) and self._offline is not None:
            index = arg.start_pfn * PAGE_SIZE // self.run.machine.memory.block_size
            (self._offline.discard if action == MEM_ONLINE else self._offline.add)(index)
        return NOTIFY_OK

    def _offline_ranges(self) -> list[tuple[int, int]]:
        """Offline blocks (kept up to date from the notifier; rebuilt when blocks come or go)."""
        memory = self.run.machine.memory
        blocks = memory.blocks
        if self._offline is None or len(blocks) != self._nblocks:
            dimms = memory.dimms
            items = list(dimms.items())
            if len(items) == len(self._dimm_items) + 1 and items[:-1] == self._dimm_items:
                # the common case of a storm: one DIMM added after the others, which are as they
                # were (the same names and objects: compared at C speed)
                gone, new = [], [items[-1][1]]
            else:
                gone = [d for name, d in self._dimms.items() if dimms.get(name) is not d]
                new = [d for name, d in dimms.items() if self._dimms.get(name) is not d]
            bs = memory.block_size
            if self._offline is None or not (gone or new):
                self._offline = _BlockRuns(i for i, b in blocks.items() if not b.online)
            else:
                # only the blocks of DIMMs that came or went changed (a storm adds hundreds)
                for d in gone:
                    for i in range(d.start // bs, (d.end + 1) // bs):
                        self._offline.discard(i)
                for d in new:
                    for i in range(d.start // bs, (d.end + 1) // bs):
                        b = blocks.get(i)
                        if b is not None and not b.online:
                            self._offline.add(i)
            self._dimms = dict(dimms)
            self._dimm_items = items
            self._nblocks = len(blocks)
        return self._offline.ranges(memory.block_size)

    def _base_ranges(self) -> tuple[list[tuple[int, int]], list[int], list[int]]:
        """The ranges the kernel's own builder describes before offline memory is considered: its
        range steps (System RAM, less the first MiB and the crashkernel regions) over the iomem
        tree, redone only when the tree changed; clipped to the compared part (above 1 MiB)."""
        m = self.run.machine
        rams = system_ram_ranges(m.iomem)
        last = self._base_key
        if (last is None or last[0] is not rams or last[1] != m.crashk_res or last[2] != m.crashk_low_res
                or (last[3] is not m.config and last[3] != m.config)):
            key = self._base_key = (rams, m.crashk_res, m.crashk_low_res, m.config)
            known = None if self._ppc64 else _BASES.get(key)
            if known is not None:
                self._base = known
                return known
            if isinstance(self.run, Ppc64SimRun):
                cmem = ppc64_base_ranges(self.run)
            else:
                state = m.kernel_state(snapshot=False)
                cmem = fill_up_crash_elf_data(state)
                elf_header_exclude_ranges(state, cmem)
            base = _same_all(sorted([r if r[0] >= LOW_1M else (LOW_1M, r[1]) for r in cmem.ranges if r[1] >= LOW_1M]))
            self._base = (base, [s for s, _ in base], [e for _, e in base])
            if not self._ppc64:
                _remember(_BASES, key, self._base)
        return self._base

    def _covered(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The ranges as compared: sorted; on ppc64le, the memory they cover (merged) outside the
        crashkernel region."""
        ranges = sorted(ranges)
        if not self._ppc64:
            return ranges
        merged: list[tuple[int, int]] = []
        for s, e in ranges:
            if merged and s <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
            else:
                merged.append((s, e))
        crashk = self.run.machine.crashk_res
        if crashk is None:
            return merged
        return _cut(merged, [s for s, _ in merged], [e for _, e in merged], [crashk])

    def event(self) -> None:
        self.event_times.append(self.run.machine.clock.now)

    def check(self) -> None:
        m = self.run.machine
        image = self.run.kexec.kexec_crash_image
        if image is None:
            if self._last is not None:
                self._last = None
                self._record(m.clock.now, False, False)
            elif not self.states:
                self._record(m.clock.now, False, False)
            return
        online = m.cpus.online
        hdr_key = (id(image), image.elfcorehdr_active, m.mem.writes)
        want_key = (self._memory_changes, len(m.memory.blocks), len(m.iomem.children), online)
        if (hdr_key, want_key) == self._last:
            return
        self._last = (hdr_key, want_key)
        if hdr_key != self._hdr_key:
            self._hdr_key = hdr_key
            # where the header is changes only with the image, its command line and active slot
            k = self._addr_key
            if k is None or k[0] is not image or k[1] is not image.cmdline or k[2] != image.elfcorehdr_active:
                self._addr_key = (image, image.cmdline, image.elfcorehdr_active)
                self._addr = _header_addr(image)
            addr = self._addr
            whole = self._whole
            # memory hands back the very object it holds for a large range nothing changed since
            # (PhysMem keeps what it read or wrote whole): then the header is as last read
            if whole is None or whole[0] != addr or m.mem.read(addr, len(whole[1])) is not whole[1]:
                data = _header_bytes(m.mem.read, addr)
                self._whole = (addr, data)
                table = data[EHDR.size:]
                if table != self._table:
                    self._table = table
                    parsed = None if self._ppc64 else _PARSED.get(table)
                    if parsed is None:
                        ram, notes = _ram_and_notes(table)
                        parsed = (_same_all(self._covered(ram)), notes)
                        if not self._ppc64:
                            _remember(_PARSED, table, parsed)
                    self._hdr = parsed
        if want_key != self._want_key:
            self._want_key = want_key
            # the memory ranges the kernel's own builder would describe with offline blocks cut
            # out (without serialising a header only to parse it back)
            base, starts, ends = self._base_ranges()
            offline = self._offline_ranges()
            self._want = _cut(base, starts, ends, offline) if offline else base
            if self._ppc64:
                self._want = self._covered(self._want)
            if online != self._notes_key:
                self._notes_key = online
                cpu_notes = m.crash_notes()
                self._notes = tuple(cpu_notes[c] for c in online)
        ram, notes = self._hdr
        true = ram == self._want and all(n in notes for n in self._notes)
        self._record(m.clock.now, True, true)

    def _record(self, t: float, loaded: bool, true: bool) -> None:
        if self.states and self.states[-1][1:] == (loaded, true):
            return
        if self.states and self.states[-1][0] == t:
            self.states[-1] = (t, loaded, true)
        else:
            self.states.append((t, loaded, true))


def _refused(op: SimOp, e: Exception) -> SimError:
    """What the machine refused while running ``op``, as a :class:`SimError` naming the op."""
    if isinstance(e, SimError):
        return e
    what = "no such " if isinstance(e, (KeyError, IndexError)) else ""
    return SimError(f"{op.origin or f't={op.t:.3f}s'}: {op.op} {op.args}: {what}{e}")


def _apply(m: Machine, op: SimOp, blocks_of: dict[str, list[int]] | None = None) -> None:
    """Run one operation on the machine; ``blocks_of`` caches each DIMM's block indices."""
    try:
        _apply_op(m, op, {} if blocks_of is None else blocks_of)
    except (CrashHotplugError, KeyError, IndexError) as e:
        raise _refused(op, e) from None


def _apply_op(m: Machine, op: SimOp, cache: dict[str, list[int]]) -> None:
    a = op.args
    if op.op == "dimm_add":
        m.add_dimm(int(a["size"]), name=str(a["name"]), start=a.get("start"), online="offline")
        cache.pop(str(a["name"]), None)
    elif op.op in ("block_online", "block_offline"):
        name = str(a["dimm"])
        if name not in cache:
            cache[name] = m.memory.dimm_blocks(name)
        idx = cache[name][int(a["block"])]
        (m.memory_block_online if op.op == "block_online" else m.memory_block_offline)(idx)
    elif op.op == "dimm_remove":
        cache.pop(str(a["name"]), None)
        m.remove_dimm(str(a["name"]))
    elif op.op == "cpu_add":
        m.cpu_hot_add(int(a["cpu"]))
    elif op.op == "cpu_online":
        m.cpu_online(int(a["cpu"]))
    elif op.op == "cpu_offline":
        m.cpu_offline(int(a["cpu"]))
    elif op.op == "cpu_remove":
        m.cpu_hot_remove(int(a["cpu"]))
    else:
        raise SimError(f"unknown operation {op.op!r}")


def _legacy_setup(approach: str, costs: CostModel) -> tuple[str, str | None]:
    """The reload syscall and the udev rule file the approach's host uses under ``costs``."""
    if approach == "legacy":
        return costs.legacy.syscall, costs.legacy.rules
    if approach == "legacy-throttled":
        return costs.throttled.syscall, costs.throttled.rules
    return "kexec_file_load", None


def simulate(approach: str, plan: Plan, costs: CostModel | None = None, *,
             on_progress: Callable[[int, int], None] | None = None, guest: Ppc64Guest | None = None) -> Timeline:
    """Run ``plan`` under ``approach`` (one of :data:`APPROACHES`) and record its timeline; with
    ``guest``, on that ppc64le pseries guest (:mod:`crash_hotplug.sim.ppc64`)."""
    if approach not in APPROACHES:
        raise SimError(f"unknown approach {approach!r} ({', '.join(APPROACHES)})")
    costs = costs or CostModel.default()
    if guest is not None:
        return _simulate_ppc64(approach, plan, costs, guest, on_progress)
    m = Machine.new(mem_gib=plan.boot_gib, cpus=plan.cpus, possible=plan.possible, kernel=plan.kernel,
                    block_size=plan.block_size, maxmem_gib=plan.maxmem_gib, slots=plan.slots,
                    memmap_on_memory=plan.memmap_on_memory)
    m.clock = Clock(costs=costs)
    for name, start, size in plan.preplugged:
        m.add_dimm(size, name=name, start=start)
    syscall, rules = _legacy_setup(approach, costs)
    run = ScenarioRun.start(m, approach, syscall, rules=rules)
    blocks_of: dict[str, list[int]] = {}
    return _run_plan(run, approach, plan, lambda op: _apply(m, op, blocks_of), on_progress)


def _simulate_ppc64(approach: str, plan: Plan, costs: CostModel, guest: Ppc64Guest,
                    on_progress: Callable[[int, int], None] | None) -> Timeline:
    try:
        run = start_ppc64(guest, approach, rules=_legacy_setup(approach, costs)[1])
    except CrashHotplugError as e:
        raise SimError(str(e)) from None
    run.machine.clock = Clock(costs=costs)
    booted = sum(e - s + 1 for s, e in system_ram_ranges(run.machine.iomem))
    if int(plan.boot_gib * GIB) != booted:
        raise SimError(f"the plan starts from {plan.boot_gib:g} GiB; the guest in {guest.root} boots with "
                       f"{booted / GIB:g} GiB")
    lmb = run.platform.lmb_size
    if plan.block_size != lmb:
        raise SimError(f"a ppc64le storm is in {lmb >> 20} MiB LMBs, not {plan.block_size >> 20} MiB blocks")
    for name, _start, size in plan.preplugged:
        run.dimm_add(name, size)
        for k in range(size // lmb):
            run.lmb_add(name, k)
    return _run_plan(run, approach, plan, lambda op: _apply_ppc64(run, op), on_progress)


def _apply_ppc64(run: Ppc64SimRun, op: SimOp) -> None:
    """One operation as DLPAR does it: a block event is one LMB added (and onlined) or removed."""
    a = op.args
    try:
        if op.op == "dimm_add":
            run.dimm_add(str(a["name"]), int(a["size"]))
        elif op.op == "block_online":
            run.lmb_add(str(a["dimm"]), int(a["block"]))
        elif op.op == "block_offline":
            run.lmb_remove(str(a["dimm"]), int(a["block"]))
        elif op.op == "dimm_remove":
            run.dimm_remove(str(a["name"]))
        else:
            raise SimError(f"{op.op}: not modelled on ppc64le (memory storms only)")
    except (CrashHotplugError, KeyError, IndexError) as e:
        raise _refused(op, e) from None


def _run_plan(run: ScenarioRun | Ppc64SimRun, approach: str, plan: Plan, apply: Callable[[SimOp], None],
              on_progress: Callable[[int, int], None] | None) -> Timeline:
    """Load kdump, schedule the plan's operations on the machine's clock, run them, collect."""
    m = run.machine
    run.load()
    obs = _Observer(run)
    obs.check()
    m.clock.after_fire.append(obs.check)
    done = [0]
    total = len(plan.ops)
    hp = run.hotplug
    service: list[KdumpService] = [run.kdump] if run.kdump is not None else []
    waited_ops = [0]
    waiting: deque[SimOp] = deque()

    def wake() -> None:
        while waiting and (hp is None or hp.notifier_returns_at() <= m.clock.now):
            run_op(waiting.popleft())
        if waiting and hp is not None:
            m.clock.call_at(hp.notifier_returns_at(), wake, "device hotplug lock released")

    def do(op: SimOp) -> None:
        if hp is not None and (waiting or hp.notifier_returns_at() > m.clock.now):
            # the previous operation's notifier chain (the crash update in it) still runs under
            # the device hotplug lock: this operation waits for it, in arrival order
            waited_ops[0] += 1
            waiting.append(op)
            if len(waiting) == 1:
                m.clock.call_at(hp.notifier_returns_at(), wake, "device hotplug lock released")
            return
        run_op(op)

    def run_op(op: SimOp) -> None:
        if op.op == "kdump_reload":
            if not service:
                service.append(KdumpService(run.kexec, run.syscall, loader=run.load_image))
            service[0].reload()
        else:
            apply(op)
        obs.event()
        done[0] += 1
        if on_progress is not None and (done[0] % 64 == 0 or done[0] == total):
            on_progress(done[0], total)

    for op in plan.ops:
        m.clock.call_at(op.t, lambda op=op: do(op), op.op)  # type: ignore[misc]
    m.clock.run_until_idle()
    obs.check()
    blocked: list[tuple[float, float, str]] = []
    regen: list[float] = []
    lags: list[float] = []
    dropped = deferred = waited = 0
    if hp is not None:
        blocked += [(w.start, w.end, w.kind) for w in hp.windows]
        regen = list(hp.updated_at)
        dropped = hp.count(Outcome.LOCK_BUSY)
        waited = hp.waited
        if isinstance(hp, OursCrashHotplug):
            lags = [u.lag for u in hp.updates]
            deferred = hp.deferred
    reloads: list[float] = []
    busy: list[tuple[float, float]] = []
    failed = 0
    for svc in service:
        blocked += [(s, e, "lock") for s, e in svc.lock_windows]
        reloads += [e for _, e in svc.unloaded]
        busy += svc.busy
        failed += svc.failed
    blocked.sort()
    events = sorted(e for e in obs.event_times)
    return Timeline(
        approach=approach, plan=plan.name, events=events, states=obs.states, blocked=blocked,
        regenerations=regen, reloads=reloads, lags=lags,
        panic_flush=isinstance(hp, OursCrashHotplug) and hp.options.coalesce,
        end=m.clock.now, hotplug_events=len(hp.records) if hp else 0, dropped=dropped,
        deferred=deferred, waited=waited + waited_ops[0], reload_busy=busy, reload_failures=failed,
    )
