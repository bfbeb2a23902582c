"""A ppc64le pseries guest (``arch/powerpc/platforms/pseries/hotplug-memory.c``, ``hotplug-cpu.c``,
``drivers/of/dynamic.c``): the generic :class:`~crash_hotplug.machine.machine.Machine` (CPUs,
memory blocks, iomem, bytes) plus what powerpc adds, the live device tree's ``/cpus`` nodes, RTAS
and the LMBs of ``ibm,dynamic-reconfiguration-memory``.

DLPAR works one LMB at a time: memory add is ``__add_memory`` + online per LMB (one memory
notifier round each), removal is offline + ``__remove_memory`` per LMB in ascending order, so
memblock forgets an LMB right after its ``MEM_OFFLINE`` event. A CPU add attaches the node the
hypervisor describes (``of_attach_node`` puts it at the head of the parent's children, so a
hot-added core comes first in ``for_each_child_of_node``), then brings the CPU online.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.machine.machine import Machine
from crash_hotplug.machine.resource import walk_system_ram_res

__all__ = ["LMB_SIZE", "OfNode", "Pseries", "PseriesError"]

#: QEMU spapr's LMB (``SPAPR_MEMORY_BLOCK_SIZE``)
LMB_SIZE: Final = 256 << 20


class PseriesError(CrashHotplugError):
    """A DLPAR request the guest refuses (no such DIMM, no room, CPU not possible)."""


@dataclass
class OfNode:
    """A live device-tree node (``struct device_node``): ``full_name`` and its properties in the
    kernel's list order, the order ``for_each_property_of_node`` walks."""

    full_name: str
    properties: list[tuple[str, bytes]] = field(default_factory=list)

    def get(self, name: str) -> bytes | None:
        return next((v for n, v in self.properties if n == name), None)

    @property
    def is_cpu(self) -> bool:
        dt = self.get("device_type")
        return dt is not None and dt.split(b"\0", 1)[0] == b"cpu"

    @property
    def reg(self) -> int | None:
        raw = self.get("reg")
        return int.from_bytes(raw[:4], "big") if raw is not None and len(raw) >= 4 else None


@dataclass
class Pseries:
    """The machine, the live ``/cpus`` children (in ``for_each_child_of_node`` order), RTAS and LMBs."""

    machine: Machine
    rtas: tuple[int, int] | None
    cpus_nodes: list[OfNode]
    lmb_size: int = LMB_SIZE
    #: DIMM name -> the names its LMBs carry in :attr:`Machine.memory`, ascending
    dimms: dict[str, list[str]] = field(default_factory=dict)
    #: nodes the hypervisor hands over for hot-added cores, by unit address (``reg``)
    cpu_node_templates: dict[int, OfNode] = field(default_factory=dict)
    #: top of the device-memory region for DIMMs (``maxmem``)
    maxmem: int = 1 << 40

    # -- memory DLPAR ---------------------------------------------------------------------------
    def next_dimm_address(self, size: int) -> int:
        """First LMB-aligned address above all RAM where ``size`` fits (QEMU spapr's device memory
        follows boot RAM)."""
        top = max(e for _s, e in walk_system_ram_res(self.machine.iomem)) + 1
        addr = -(-top // self.lmb_size) * self.lmb_size
        if addr + size > self.maxmem:
            raise PseriesError(f"{size >> 20} MiB at {addr:#x} exceeds maxmem {self.maxmem:#x}")
        return addr

    def dlpar_memory_add(self, name: str, size: int, start: int | None = None) -> list[str]:
        """``dlpar_memory_add_by_count``: each LMB of the DIMM added and onlined in turn."""
        if name in self.dimms:
            raise PseriesError(f"{name}: already present")
        if size <= 0 or size % self.lmb_size:
            raise PseriesError(f"{name}: {size} bytes is not a multiple of the {self.lmb_size >> 20} MiB LMB")
        base = self.next_dimm_address(size) if start is None else start
        lmbs: list[str] = []
        for k in range(size // self.lmb_size):
            lmb = f"{name}/lmb{(base >> 28) + k}"
            self.machine.memory.add_memory(lmb, base + k * self.lmb_size, self.lmb_size)
            lmbs.append(lmb)
        self.dimms[name] = lmbs
        self.machine.printk(f"pseries-hotplug-mem: Memory at {base:x} ({name}) added")
        return lmbs

    def dlpar_memory_remove(self, name: str) -> None:
        """``dlpar_memory_remove_by_index``: each LMB, ascending, offlined then removed."""
        lmbs = self.dimms.pop(name, None)
        if lmbs is None:
            raise PseriesError(f"{name}: no such DIMM")
        for lmb in lmbs:
            self.machine.memory.remove_memory(lmb)

    # -- CPU DLPAR ------------------------------------------------------------------------------
    def dlpar_cpu_add(self, cpu: int) -> None:
        """``dlpar_cpu_add``: attach the core's node at the head of ``/cpus`` (``of_attach_node``),
        then the CPU becomes present and comes online (the crash hotplug CPU callback runs)."""
        if cpu not in self.machine.cpus.cpus:
            raise PseriesError(f"cpu{cpu}: not possible (possible CPUs: {len(self.machine.cpus.cpus)})")
        node = self.cpu_node_templates.get(cpu)
        if node is None:
            node = self._synth_cpu_node(cpu)
        self.cpus_nodes.insert(0, node)
        self.machine.cpus.cpu_hot_add(cpu)
        self.machine.uevent("add", "cpu", f"cpu{cpu}")
        self.machine.cpu_online(cpu)

    def _synth_cpu_node(self, cpu: int) -> OfNode:
        """A node like a boot CPU's with this CPU's ``reg``, interrupt server and DRC index (what
        QEMU describes for a new core when no real node is known)."""
        boot = next((n for n in self.cpus_nodes if n.is_cpu), None)
        if boot is None:
            raise PseriesError("no CPU node in /cpus to describe a new core")
        name = boot.full_name.split("@", 1)[0] + f"@{cpu:x}"
        u32 = cpu.to_bytes(4, "big")
        props: list[tuple[str, bytes]] = []
        for pname, value in boot.properties:
            if pname in ("reg", "ibm,ppc-interrupt-server#s"):
                value = u32
            elif pname == "ibm,my-drc-index":
                value = (0x10000000 + cpu).to_bytes(4, "big")
            props.append((pname, value))
        return OfNode(name, props)
