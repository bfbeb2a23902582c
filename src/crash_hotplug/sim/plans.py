"""What happens to the machine, and when: the storms a simulation replays.

``resize`` grows (or shrinks) memory in DIMMs: the hypervisor adds one DIMM after another at the
pace the seed's operator measured (about 144 s for 3840 blocks), and the kernel onlines each DIMM's
blocks back to back (``memory_block_online`` apart). ``cpu`` adds or removes vCPUs; ``mixed`` does a
bit of everything; ``replay`` follows a uevent log (JSON lines: ``{"t", "action", "subsystem",
"kernel"}``), which :func:`convert_udevadm_monitor` makes from ``udevadm monitor --property`` output.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.sim.costs import CostModel

__all__ = ["MAX_CPUS", "MAX_OPS", "MAX_TIME_S", "Plan", "PlanError", "SimOp", "check_block_size",
           "convert_udevadm_monitor", "cpu_plan", "mixed_plan", "parse_size", "replay_plan", "resize_plan",
           "with_reloads"]

GIB = 1 << 30
MIB = 1 << 20


class PlanError(CrashHotplugError):
    """A storm that cannot be built (bad sizes, a malformed event log)."""


@dataclass(frozen=True)
class SimOp:
    """One thing that happens at ``t`` seconds: ``dimm_add`` (blocks still offline), ``block_online``,
    ``block_offline``, ``dimm_remove``, ``cpu_add``, ``cpu_online``, ``cpu_offline``, ``cpu_remove``."""

    t: float
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    #: where the operation came from (a replayed log's file and line), for error messages
    origin: str = ""


@dataclass
class Plan:
    """A machine to start from and the operations to run on it."""

    name: str
    boot_gib: float
    cpus: int
    possible: int
    kernel: str
    block_size: int
    #: DIMMs present before kdump is loaded: (name, start or None, size)
    preplugged: list[tuple[str, int | None, int]]
    ops: list[SimOp]
    dimms: int
    maxmem_gib: int
    slots: int
    #: boot the guest with ``memory_hotplug.memmap_on_memory=1`` (needed where the struct pages of
    #: the memory added would not fit in boot memory: 8 TiB on a 32 GiB guest)
    memmap_on_memory: bool = False

    @property
    def memory_events(self) -> int:
        return sum(1 for o in self.ops if o.op in ("block_online", "block_offline"))

    @property
    def last_event(self) -> float:
        return max((o.t for o in self.ops), default=0.0)

    def describe(self) -> str:
        return (f"{self.name}: {self.memory_events} block events, {self.dimms} DIMMs, "
                f"{self.cpus} of {self.possible} CPUs, {self.kernel}")


#: x86_64 ``memory_block_size_bytes``: 128 MiB (``MIN_MEMORY_BLOCK_SIZE``, one section) up to 2 GiB
#: (``MAX_BLOCK_SIZE`` in ``arch/x86/mm/init_64.c``), always a power of two
MIN_BLOCK = 128 * MIB
MAX_BLOCK = 2 * GIB
#: ``MAX_PHYSMEM_BITS`` with 5-level paging (``arch/x86/include/asm/sparsemem.h``): 4 PiB
PHYS_ADDR_BITS = 52
#: a storm of more hotplug operations than this is refused (the 32 GiB -> 8 TiB storm has 69,360)
MAX_OPS = 300_000
#: NR_CPUS of a MAXSMP x86_64 kernel
MAX_CPUS = 8192
#: the latest time an operation may be planned at (a day)
MAX_TIME_S = 86400.0
#: a replayed uevent log is read line by line up to this size
MAX_LOG = 256 << 20


def parse_size(text: str, what: str = "size") -> int:
    """``32G``, ``512G``, ``128M``, ``2048M``, plain bytes; at most the physical address space."""
    m = re.fullmatch(r"\s*([0-9]{1,20}(?:\.[0-9]{1,9})?)\s*([KMGTP]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise PlanError(f"{what}: not a size: {text!r} (e.g. 32G, 128M)")
    shift = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}[m.group(2).upper()]
    whole, _, frac = m.group(1).partition(".")
    n = (int(whole) << shift) + (int(frac) << shift) // 10 ** len(frac) if frac else int(whole) << shift
    if n > 1 << PHYS_ADDR_BITS:
        raise PlanError(f"{what}: {text} is beyond the {PHYS_ADDR_BITS}-bit physical address space (4 PiB)")
    return n


def check_block_size(block: int) -> None:
    """A memory block size the x86_64 kernel can have."""
    if block < MIN_BLOCK or block > MAX_BLOCK or block & (block - 1):
        raise PlanError(f"--block: {block} bytes is not a memory block size x86_64 can have "
                        "(a power of two from 128M to 2G)")


def _check_ops(n: int) -> None:
    if n > MAX_OPS:
        raise PlanError(f"--from, --to, --dimm, --block: the storm has {n} hotplug operations; at most {MAX_OPS} "
                        "are simulated (use larger DIMMs or blocks)")


def with_reloads(plan: Plan, times: tuple[float, ...] | list[float]) -> Plan:
    """``plan`` with a ``kdumpctl reload`` at each of ``times`` (an operator, a package update)."""
    if not times:
        return plan
    for t in times:
        if not math.isfinite(t) or t < 0 or t > MAX_TIME_S:
            raise PlanError(f"--reload-at: {t} is not a time in seconds (0 to {MAX_TIME_S:g})")
    ops = sorted([*plan.ops, *(SimOp(float(t), "kdump_reload") for t in times)], key=lambda o: o.t)
    return replace(plan, name=f"{plan.name}, kdumpctl reload at {', '.join(f'{t:g}' for t in times)} s", ops=ops)


def _online_blocks(ops: list[SimOp], t: float, dimm: str, nblocks: int, costs: CostModel) -> float:
    step = costs.cost("memory_block_online")
    for j in range(nblocks):
        t += step
        ops.append(SimOp(t, "block_online", {"dimm": dimm, "block": j}))
    return t


def resize_plan(size_from: int, size_to: int, *, dimm: int = 2 * GIB, block: int = 128 * MIB, cpus: int = 4,
                possible: int = 64, kernel: str = "6.12.43", costs: CostModel | None = None,
                memmap_on_memory: bool = False) -> Plan:
    """Grow from ``size_from`` to ``size_to`` (or shrink) in DIMMs of ``dimm`` bytes."""
    costs = costs or CostModel.default()
    check_block_size(block)
    if dimm <= 0 or dimm % block or size_from % block or size_to % block:
        raise PlanError("--from, --to and --dimm must be multiples of the memory block size (--block)")
    for what, v in (("--from", size_from), ("--to", size_to)):
        if v < 256 * MIB:
            raise PlanError(f"{what}: {v / MIB:g} MiB is less than the 256 MiB the model machine boots with")
    for what, v in (("--from", size_from), ("--to", size_to)):
        if v > 1 << PHYS_ADDR_BITS:
            raise PlanError(f"{what}: beyond the {PHYS_ADDR_BITS}-bit physical address space")
    delta = abs(size_to - size_from)
    if delta % dimm:
        raise PlanError(f"--from, --to, --dimm: the change of {delta / GIB:g} GiB is not a whole number of "
                        f"{dimm / GIB:g} GiB DIMMs")
    n = delta // dimm
    per_dimm = dimm // block
    _check_ops(n * (per_dimm + 1))
    pace = costs.cost("resize_block_interval") * per_dimm
    ops: list[SimOp] = []
    pre: list[tuple[str, int | None, int]] = []
    t = 0.0
    if size_to >= size_from:
        boot = size_from
        for k in range(n):
            name = f"dimm{k + 1}"
            ops.append(SimOp(t, "dimm_add", {"name": name, "size": dimm}))
            _online_blocks(ops, t, name, per_dimm, costs)
            t += pace
    else:
        boot = size_to
        off = costs.cost("memory_block_offline")
        for k in range(n):
            name = f"dimm{k + 1}"
            pre.append((name, None, dimm))
        for k in reversed(range(n)):
            name = f"dimm{k + 1}"
            for j in range(per_dimm):
                ops.append(SimOp(t + (j + 1) * off, "block_offline", {"dimm": name, "block": j}))
            ops.append(SimOp(t + (per_dimm + 1) * off, "dimm_remove", {"name": name}))
            t += pace
    top = max(size_from, size_to)
    return Plan(f"resize {size_from / GIB:g}G -> {size_to / GIB:g}G in {dimm / GIB:g}G DIMMs",
                boot / GIB, cpus, possible, kernel, block, pre, ops, n,
                maxmem_gib=-(-top // GIB) + 1, slots=max(8, n + 1), memmap_on_memory=memmap_on_memory)


def cpu_plan(add: int, remove: int = 0, *, cpus: int = 2, possible: int = 64, mem: int = 4 * GIB,
             kernel: str = "6.12.43", costs: CostModel | None = None, interval: float = 0.5) -> Plan:
    """Add ``add`` vCPUs one after another, then remove ``remove`` of them."""
    costs = costs or CostModel.default()
    if cpus + add > possible:
        raise PlanError(f"{cpus} + {add} CPUs exceed the {possible} possible")
    if remove > add:
        raise PlanError("can only remove CPUs that were added")
    ops: list[SimOp] = []
    t = 0.0
    for k in range(add):
        cpu = cpus + k
        ops.append(SimOp(t, "cpu_add", {"cpu": cpu}))
        ops.append(SimOp(t + costs.cost("cpu_online"), "cpu_online", {"cpu": cpu}))
        t += interval
    for k in range(remove):
        cpu = cpus + add - 1 - k
        ops.append(SimOp(t, "cpu_offline", {"cpu": cpu}))
        ops.append(SimOp(t + costs.cost("cpu_offline"), "cpu_remove", {"cpu": cpu}))
        t += interval
    return Plan(f"cpu +{add} -{remove}", mem / GIB, cpus, possible, kernel, 128 * MIB, [], ops, 0,
                maxmem_gib=int(mem / GIB) + 2, slots=8)


def mixed_plan(*, costs: CostModel | None = None, kernel: str = "6.12.43") -> Plan:
    """Grow 8 -> 24 GiB in 2 GiB DIMMs, add 4 CPUs, offline one, remove two DIMMs, offline a block."""
    costs = costs or CostModel.default()
    grow = resize_plan(8 * GIB, 24 * GIB, costs=costs, kernel=kernel)
    t = grow.last_event + 1.0
    ops = list(grow.ops)
    for k in range(4):
        cpu = grow.cpus + k
        ops.append(SimOp(t, "cpu_add", {"cpu": cpu}))
        ops.append(SimOp(t + costs.cost("cpu_online"), "cpu_online", {"cpu": cpu}))
        t += 0.5
    ops.append(SimOp(t, "cpu_offline", {"cpu": grow.cpus + 3}))
    t += 1.0
    off = costs.cost("memory_block_offline")
    for name in ("dimm8", "dimm7"):
        for j in range(16):
            ops.append(SimOp(t + (j + 1) * off, "block_offline", {"dimm": name, "block": j}))
        ops.append(SimOp(t + 17 * off, "dimm_remove", {"name": name}))
        t += 1.0
    ops.append(SimOp(t, "block_offline", {"dimm": "dimm1", "block": 15}))
    return Plan("mixed", grow.boot_gib, grow.cpus, grow.possible, kernel, grow.block_size, [], ops, grow.dimms,
                grow.maxmem_gib, grow.slots)


_ACTIONS = {"add", "remove", "online", "offline", "change", "move", "bind", "unbind"}
_DEVICE = re.compile(r"(memory|cpu)([0-9]{1,9})")


def _replay_event(path: Path, n: int, line: str) -> dict[str, Any] | None:
    """One uevent-log line checked as a whole: an object with a finite ``t``, an ``action``, a
    ``subsystem`` and a ``kernel`` name (``memoryN`` or ``cpuN`` for the events that matter)."""
    where = f"{path}: line {n}"
    try:
        ev = json.loads(line)
    except json.JSONDecodeError as e:
        raise PlanError(f"{where}: not JSON ({e.msg})") from None
    except RecursionError:
        raise PlanError(f"{where}: JSON nested too deeply") from None
    if not isinstance(ev, dict):
        raise PlanError(f"{where}: expected an object {{\"t\", \"action\", \"subsystem\", \"kernel\"}}")
    missing = [k for k in ("t", "action", "subsystem", "kernel") if k not in ev]
    if missing:
        raise PlanError(f"{where}: missing {', '.join(missing)}")
    t = ev["t"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t <= 1e12:
        raise PlanError(f"{where}: t: expected seconds (a finite number >= 0), got {json.dumps(t)[:40]}")
    for k in ("action", "subsystem", "kernel"):
        if not isinstance(ev[k], str) or not ev[k] or len(ev[k]) > 256:
            raise PlanError(f"{where}: {k}: expected a non-empty string, got {json.dumps(ev[k])[:40]}")
    if ev["subsystem"] not in ("memory", "cpu"):
        return None
    if ev["action"] not in _ACTIONS:
        raise PlanError(f"{where}: action: {ev['action']!r} is not a uevent action ({', '.join(sorted(_ACTIONS))})")
    m = _DEVICE.fullmatch(ev["kernel"])
    if m is None or m.group(1) != ev["subsystem"]:
        raise PlanError(f"{where}: kernel: {ev['kernel']!r} is not a {ev['subsystem']}N device")
    return {"t": float(t), "action": ev["action"], "subsystem": ev["subsystem"], "num": int(m.group(2)), "line": n}


def replay_plan(path: Path, *, boot: int = 32 * GIB, cpus: int = 4, possible: int = 64, kernel: str = "6.12.43",
                block: int = 128 * MIB) -> Plan:
    """Operations from a uevent log. Memory ``add`` events of consecutive blocks become one DIMM;
    ``online``/``offline`` act on blocks; ``remove`` of a DIMM's last block removes the DIMM.
    Every line is checked before anything runs; errors name the file and the line."""
    from crash_hotplug.fileio import iter_lines

    events: list[dict[str, Any]] = []
    for n, line in iter_lines(path, max_bytes=MAX_LOG):
        if not line.strip():
            continue
        ev = _replay_event(path, n, line)
        if ev is not None:
            events.append(ev)
            _check_ops(len(events))
    events.sort(key=lambda e: float(e["t"]))
    t0 = float(events[0]["t"]) if events else 0.0
    ops: list[SimOp] = []
    block_of: dict[int, tuple[str, int]] = {}
    pending: list[tuple[float, int, int]] = []
    dimms = 0
    top_block = (1 << PHYS_ADDR_BITS) // block

    def flush_adds() -> None:
        nonlocal dimms
        if not pending:
            return
        idx = [b for _, b, _ in pending]
        dimms += 1
        name = f"dimm{dimms}"
        ops.append(SimOp(pending[0][0], "dimm_add", {"name": name, "size": len(idx) * block, "start": idx[0] * block},
                         origin=f"{path}: line {pending[0][2]}"))
        for j, b in enumerate(idx):
            block_of[b] = (name, j)
        pending.clear()

    for ev in events:
        t = ev["t"] - t0
        num, line = ev["num"], ev["line"]
        origin = f"{path}: line {line}"
        if ev["subsystem"] == "memory":
            if num >= top_block:
                raise PlanError(f"{origin}: memory{num} lies beyond the {PHYS_ADDR_BITS}-bit physical address space")
            if ev["action"] == "add":
                if pending and num != pending[-1][1] + 1:
                    flush_adds()
                pending.append((t, num, line))
                continue
            flush_adds()
            if num not in block_of:
                continue
            dimm, j = block_of[num]
            if ev["action"] in ("online", "offline"):
                ops.append(SimOp(t, f"block_{ev['action']}", {"dimm": dimm, "block": j}, origin=origin))
            elif ev["action"] == "remove" and all(block_of.get(b, ("", 0))[0] != dimm or b == num
                                                   for b in block_of):
                ops.append(SimOp(t, "dimm_remove", {"name": dimm}, origin=origin))
        elif ev["action"] in ("add", "remove", "online", "offline"):
            if num >= MAX_CPUS:
                raise PlanError(f"{origin}: cpu{num} is beyond NR_CPUS ({MAX_CPUS})")
            flush_adds()
            ops.append(SimOp(t, f"cpu_{ev['action']}", {"cpu": num}, origin=origin))
    flush_adds()
    top = max([boot] + [int(o.args["start"]) + int(o.args["size"]) for o in ops if o.op == "dimm_add"])
    return Plan(f"replay {path.name}", boot / GIB, cpus, max(possible, max((int(o.args["cpu"]) + 1 for o in ops
                                                                          if "cpu" in o.args), default=0)),
                kernel, block, [], ops, dimms,
                maxmem_gib=-(-top // GIB) + 2, slots=max(8, dimms + 1))


_MONITOR = re.compile(r"^KERNEL\[([0-9]{1,12}\.[0-9]{1,9})\]\s+(\w+)\s+(\S+)\s+\((\w+)\)")


def convert_udevadm_monitor(lines: str | Iterable[tuple[int, str]]) -> list[dict[str, Any]]:
    """``udevadm monitor --property`` (or plain ``udevadm monitor``) output to uevent-log records.

    Only ``KERNEL[...]`` lines count (the ``UDEV`` lines repeat the same events after processing);
    ``ACTION=``/``SUBSYSTEM=``/``DEVPATH=`` properties under a header override what it says.
    ``lines`` is the text, or ``(line number, line)`` pairs read lazily.
    """
    numbered = enumerate(lines.splitlines(), 1) if isinstance(lines, str) else lines
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for _, line in numbered:
        m = _MONITOR.match(line)
        if m:
            cur = {"t": float(m.group(1)), "action": m.group(2), "subsystem": m.group(4),
                   "kernel": m.group(3).rstrip("/").rsplit("/", 1)[-1]}
            if cur["subsystem"] in ("cpu", "memory"):
                out.append(cur)
                _check_ops(len(out))
            continue
        if line.startswith("UDEV"):
            cur = None
            continue
        if cur is not None and "=" in line:
            key, _, value = line.partition("=")
            if key == "ACTION":
                cur["action"] = value
            elif key == "SUBSYSTEM":
                cur["subsystem"] = value
            elif key == "DEVPATH":
                cur["kernel"] = value.rstrip("/").rsplit("/", 1)[-1]
    return [e for e in out if e["subsystem"] in ("cpu", "memory")]
