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
from collections.abc import Callable
from dataclasses import dataclass, field

from crash_hotplug.crash.ours import OursCrashHotplug
from crash_hotplug.crash.x86_64 import prepare_elf_headers
from crash_hotplug.elf.constants import PT_LOAD, PT_NOTE
from crash_hotplug.elf.structs import EHDR, PHDR
from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.kexec.kimage import Kimage
from crash_hotplug.machine.clock import Clock
from crash_hotplug.machine.kernel import START_KERNEL_MAP
from crash_hotplug.machine.machine import GIB, Machine
from crash_hotplug.machine.notifier import NOTIFY_OK
from crash_hotplug.scenario import ScenarioRun
from crash_hotplug.sim.costs import CostModel
from crash_hotplug.sim.plans import Plan, SimOp

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
    dropped: int = 0
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


def _ram_and_notes(mem_read: Callable[[int, int], bytes], addr: int) -> tuple[list[tuple[int, int]], set[int]]:
    head = mem_read(addr, EHDR.size)
    phnum = EHDR.unpack(head)[10]
    table = mem_read(addr + EHDR.size, phnum * PHDR.size)
    ram: list[tuple[int, int]] = []
    notes: set[int] = set()
    for p_type, _f, _o, vaddr, paddr, _fs, memsz, _a in PHDR.iter_unpack(table):
        if p_type == PT_LOAD and vaddr < START_KERNEL_MAP:
            ram.append((paddr, paddr + memsz - 1))
        elif p_type == PT_NOTE:
            notes.add(paddr)
    return ram, notes


def _header_addr(image: Kimage) -> int:
    if image.elfcorehdr_index < 0:
        return image.elf_load_addr
    seg = image.segments[image.elfcorehdr_index]
    return seg.mem + image.elfcorehdr_active * (seg.memsz // image.elfcorehdr_slots)


class _Observer:
    """Records (time, loaded, true) whenever something a panic depends on changed."""

    def __init__(self, run: ScenarioRun) -> None:
        self.run = run
        self.states: list[tuple[float, bool, bool]] = []
        self._fp: tuple[object, ...] | None = None
        self._memory_changes = 0
        run.machine.register_memory_notifier(self._memory_changed, -(1 << 31), "simulation observer")

    def _memory_changed(self, action: int, arg: object) -> int:
        self._memory_changes += 1
        return NOTIFY_OK

    def fingerprint(self) -> tuple[object, ...]:
        m = self.run.machine
        img = self.run.kexec.kexec_crash_image
        return (id(img), img.elfcorehdr_active if img else -1, m.mem.writes, self._memory_changes,
                len(m.memory.blocks), m.cpus.online, len(m.iomem.children))

    def check(self) -> None:
        fp = self.fingerprint()
        if fp == self._fp:
            return
        self._fp = fp
        m = self.run.machine
        now = m.clock.now
        image = self.run.kexec.kexec_crash_image
        if image is None:
            self._record(now, False, False)
            return
        ram, notes = _ram_and_notes(m.mem.read, _header_addr(image))
        offline = [m.memory.block_range(i) for i, b in m.memory.blocks.items() if not b.online]
        buf, _ = prepare_elf_headers(m.kernel_state(snapshot=False), offline)
        want_ram, _ = _ram_and_notes(lambda a, n: buf[a : a + n], 0)
        cpu_notes = m.crash_notes()
        true = sorted(ram) == sorted(want_ram) and all(cpu_notes[c] in notes for c in m.cpus.online)
        self._record(now, True, true)

    def _record(self, t: float, loaded: bool, true: bool) -> None:
        if self.states and self.states[-1][1:] == (loaded, true):
            return
        if self.states and self.states[-1][0] == t:
            self.states[-1] = (t, loaded, true)
        else:
            self.states.append((t, loaded, true))


def _apply(m: Machine, op: SimOp) -> None:
    a = op.args
    try:
        if op.op == "dimm_add":
            m.add_dimm(int(a["size"]), name=str(a["name"]), start=a.get("start"), online="offline")
        elif op.op in ("block_online", "block_offline"):
            idx = m.memory.dimm_blocks(str(a["dimm"]))[int(a["block"])]
            (m.memory_block_online if op.op == "block_online" else m.memory_block_offline)(idx)
        elif op.op == "dimm_remove":
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
    except CrashHotplugError as e:
        if isinstance(e, SimError):
            raise
        raise SimError(f"t={op.t:.3f}s {op.op} {a}: {e}") from None
    except (KeyError, IndexError) as e:
        raise SimError(f"t={op.t:.3f}s {op.op} {a}: no such {e}") from None


def simulate(approach: str, plan: Plan, costs: CostModel | None = None, *,
             on_progress: Callable[[int, int], None] | None = None) -> Timeline:
    """Run ``plan`` under ``approach`` (one of :data:`APPROACHES`) and record its timeline."""
    if approach not in APPROACHES:
        raise SimError(f"unknown approach {approach!r} ({', '.join(APPROACHES)})")
    costs = costs or CostModel.default()
    m = Machine.new(mem_gib=plan.boot_gib, cpus=plan.cpus, possible=plan.possible, kernel=plan.kernel,
                    block_size=plan.block_size, maxmem_gib=plan.maxmem_gib, slots=plan.slots)
    m.clock = Clock(costs=costs)
    for name, start, size in plan.preplugged:
        m.add_dimm(size, name=name, start=start)
    run = ScenarioRun.start(m, approach)
    run.load()
    obs = _Observer(run)
    obs.check()
    m.clock.after_fire.append(obs.check)
    done = [0]
    total = len(plan.ops)

    def do(op: SimOp) -> None:
        _apply(m, op)
        done[0] += 1
        if on_progress is not None and (done[0] % 64 == 0 or done[0] == total):
            on_progress(done[0], total)

    for op in plan.ops:
        m.clock.call_at(op.t, lambda op=op: do(op), op.op)  # type: ignore[misc]
    m.clock.run_until_idle()
    obs.check()
    hp = run.hotplug
    blocked: list[tuple[float, float, str]] = []
    regen: list[float] = []
    lags: list[float] = []
    dropped = 0
    if hp is not None:
        blocked += [(w.start, w.end, w.kind) for w in hp.windows]
        regen = list(hp.updated_at)
        from crash_hotplug.crash.arch import Outcome

        dropped = hp.count(Outcome.LOCK_BUSY)
        if isinstance(hp, OursCrashHotplug):
            lags = [u.lag for u in hp.updates]
    reloads: list[float] = []
    if run.kdump is not None:
        blocked += [(s, e, "lock") for s, e in run.kdump.lock_windows]
        reloads = [e for _, e in run.kdump.unloaded]
    blocked.sort()
    events = sorted(op.t for op in plan.ops)
    return Timeline(
        approach=approach, plan=plan.name, events=events, states=obs.states, blocked=blocked,
        regenerations=regen, reloads=reloads, lags=lags,
        panic_flush=isinstance(hp, OursCrashHotplug) and hp.options.coalesce,
        end=m.clock.now, hotplug_events=len(hp.records) if hp else 0, dropped=dropped,
    )


_ = GIB
