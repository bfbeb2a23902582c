"""What happens to the machine, and when: the storms a simulation replays.

``resize`` grows (or shrinks) memory in DIMMs: the hypervisor adds one DIMM after another at the
pace the seed's operator measured (about 144 s for 3840 blocks), and the kernel onlines each DIMM's
blocks back to back (``memory_block_online`` apart). ``cpu`` adds or removes vCPUs; ``mixed`` does a
bit of everything; ``replay`` follows a uevent log (JSON lines: ``{"t", "action", "subsystem",
"kernel"}``), which :func:`convert_udevadm_monitor` makes from ``udevadm monitor --property`` output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.sim.costs import CostModel

__all__ = ["Plan", "PlanError", "SimOp", "convert_udevadm_monitor", "cpu_plan", "mixed_plan", "parse_size",
           "replay_plan", "resize_plan"]

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

    @property
    def memory_events(self) -> int:
        return sum(1 for o in self.ops if o.op in ("block_online", "block_offline"))

    @property
    def last_event(self) -> float:
        return max((o.t for o in self.ops), default=0.0)

    def describe(self) -> str:
        return (f"{self.name}: {len(self.ops)} operations, {self.memory_events} memory block events, "
                f"{self.dimms} DIMMs, {self.cpus} CPUs of {self.possible}, kernel {self.kernel}")


def parse_size(text: str) -> int:
    """``32G``, ``512G``, ``128M``, ``2048M``, plain bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise PlanError(f"not a size: {text!r} (e.g. 32G, 128M)")
    shift = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]
    return int(float(m.group(1)) * (1 << shift))


def _online_blocks(ops: list[SimOp], t: float, dimm: str, nblocks: int, costs: CostModel) -> float:
    step = costs.cost("memory_block_online")
    for j in range(nblocks):
        t += step
        ops.append(SimOp(t, "block_online", {"dimm": dimm, "block": j}))
    return t


def resize_plan(size_from: int, size_to: int, *, dimm: int = 2 * GIB, block: int = 128 * MIB, cpus: int = 4,
                possible: int = 64, kernel: str = "6.12.43", costs: CostModel | None = None) -> Plan:
    """Grow from ``size_from`` to ``size_to`` (or shrink) in DIMMs of ``dimm`` bytes."""
    costs = costs or CostModel.default()
    if block <= 0 or dimm % block or size_from % block or size_to % block:
        raise PlanError("sizes must be multiples of the memory block size")
    delta = abs(size_to - size_from)
    if delta % dimm:
        raise PlanError(f"the change of {delta / GIB:g} GiB is not a whole number of {dimm / GIB:g} GiB DIMMs")
    n = delta // dimm
    per_dimm = dimm // block
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
                maxmem_gib=-(-top // GIB) + 1, slots=max(8, n + 1))


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


def replay_plan(path: Path, *, boot: int = 32 * GIB, cpus: int = 4, possible: int = 64, kernel: str = "6.12.43",
                block: int = 128 * MIB) -> Plan:
    """Operations from a uevent log. Memory ``add`` events of consecutive blocks become one DIMM;
    ``online``/``offline`` act on blocks; ``remove`` of a DIMM's last block removes the DIMM."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise PlanError(f"{path}: cannot read: {e.strerror}") from None
    events: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
            float(ev["t"])
            str(ev["action"])
            str(ev["subsystem"])
            str(ev["kernel"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise PlanError(f"{path}: line {n}: expected {{\"t\", \"action\", \"subsystem\", \"kernel\"}}") from None
        events.append(ev)
    events.sort(key=lambda e: float(e["t"]))
    t0 = float(events[0]["t"]) if events else 0.0
    ops: list[SimOp] = []
    block_of: dict[int, tuple[str, int]] = {}
    pending: list[tuple[float, int]] = []
    dimms = 0

    def flush_adds() -> None:
        nonlocal dimms
        if not pending:
            return
        idx = [b for _, b in pending]
        dimms += 1
        name = f"dimm{dimms}"
        ops.append(SimOp(pending[0][0], "dimm_add", {"name": name, "size": len(idx) * block, "start": idx[0] * block}))
        for j, b in enumerate(idx):
            block_of[b] = (name, j)
        pending.clear()

    for ev in events:
        t = float(ev["t"]) - t0
        kernel_name = str(ev["kernel"])
        num = int(re.sub(r"\D", "", kernel_name) or -1)
        if ev["subsystem"] == "memory":
            if ev["action"] == "add":
                if pending and num != pending[-1][1] + 1:
                    flush_adds()
                pending.append((t, num))
                continue
            flush_adds()
            if num not in block_of:
                continue
            dimm, j = block_of[num]
            if ev["action"] in ("online", "offline"):
                ops.append(SimOp(t, f"block_{ev['action']}", {"dimm": dimm, "block": j}))
            elif ev["action"] == "remove" and all(block_of.get(b, ("", 0))[0] != dimm or b == num
                                                   for b in block_of):
                ops.append(SimOp(t, "dimm_remove", {"name": dimm}))
        elif ev["subsystem"] == "cpu" and ev["action"] in ("add", "remove", "online", "offline"):
            flush_adds()
            ops.append(SimOp(t, f"cpu_{ev['action']}", {"cpu": num}))
    flush_adds()
    return Plan(f"replay {path.name}", boot / GIB, cpus, possible, kernel, block, [], ops, dimms,
                maxmem_gib=int(boot / GIB) + max(1, sum(o.args.get("size", 0) for o in ops) // GIB + 2),
                slots=max(8, dimms + 1))


_MONITOR = re.compile(r"^KERNEL\[(\d+\.\d+)\]\s+(\w+)\s+(\S+)\s+\((\w+)\)")


def convert_udevadm_monitor(text: str) -> list[dict[str, Any]]:
    """``udevadm monitor --property`` (or plain ``udevadm monitor``) output to uevent-log records.

    Only ``KERNEL[...]`` lines count (the ``UDEV`` lines repeat the same events after processing);
    ``ACTION=``/``SUBSYSTEM=``/``DEVPATH=`` properties under a header override what it says.
    """
    out: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        m = _MONITOR.match(line)
        if m:
            cur = {"t": float(m.group(1)), "action": m.group(2), "subsystem": m.group(4),
                   "kernel": m.group(3).rstrip("/").rsplit("/", 1)[-1]}
            out.append(cur)
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
