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

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from crash_hotplug.elf.vmcoreinfo import VMCOREINFO_NOTE_SIZE
from crash_hotplug.errors import CrashHotplugError, SnapshotError
from crash_hotplug.machine.cpu import CpuHotplug
from crash_hotplug.machine.machine import Machine, _last_stamp_us
from crash_hotplug.machine.memory import MemoryBlock, MemoryHotplug
from crash_hotplug.machine.protmem import GuardedPhysMem
from crash_hotplug.machine.resource import walk_system_ram_res
from crash_hotplug.snapshot.devicetree import DT
from crash_hotplug.snapshot.model import read_memory_blocks
from crash_hotplug.snapshot.reader import DMESG, MEM_DIR
from crash_hotplug.snapshot.reader_ppc64 import read_kernel_state_ppc64
from crash_hotplug.snapshot.root import FsRoot

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

    @classmethod
    def from_snapshot(cls, root: Path, *, cpus_nodes: list[OfNode] | None = None,
                      cpu_node_templates: Mapping[int, OfNode] | None = None) -> Pseries:
        """The guest a ppc64le snapshot describes. A snapshot's ``/proc/device-tree/cpus`` holds
        the CPU nodes' files but not the kernel's property order; ``cpus_nodes`` gives the live
        nodes when the caller knows them (else they are read from the snapshot, files in name
        order), ``cpu_node_templates`` the nodes later hot-added cores get."""
        state, dt = read_kernel_state_ppc64(root)
        fs = FsRoot(Path(root))
        mem = GuardedPhysMem(0)
        block_size = fs.read_int(f"{MEM_DIR}/block_size_bytes", 16) if fs.exists(MEM_DIR) else LMB_SIZE
        policy = (fs.read_optional(f"{MEM_DIR}/auto_online_blocks") or "offline").strip()
        memory = MemoryHotplug(state.iomem.copy(), mem, block_size, policy)
        for index, (online, zone) in read_memory_blocks(fs).items():
            memory.blocks[index] = MemoryBlock(index, online, zone)
        hp = CpuHotplug.boot(state.possible, state.present, state.online, dict(state.crash_notes),
                             nr_cpus=state.config.nr_cpus_default)
        dmesg = fs.read_optional(DMESG) or ""
        banner = next((ln.split("] ", 1)[-1] for ln in dmesg.splitlines() if "Linux version" in ln), "")
        m = Machine(
            config=state.config, release=fs.read_text("proc/sys/kernel/osrelease").strip(), banner=banner,
            cmdline=(fs.read_optional("proc/cmdline") or "").strip(), cpus=hp, memory=memory, mem=mem,
            text_vaddr=state.text_vaddr, text_paddr=state.text_paddr, etext_size=state.text_size,
            text_size=state.text_size, vmcoreinfo_paddr=state.vmcoreinfo_paddr,
            vmcoreinfo_size=state.vmcoreinfo_size, page_offset=state.page_offset,
            crash_notes_size=state.crash_notes_size, crashk_res=state.crashk_res,
            log=dmesg.splitlines(), profile="ppc64le-pseries",
        )
        m._clock_us = _last_stamp_us(m.log)
        for s in hp.cpus.values():
            if s.crash_notes:
                m.mem.zero(s.crash_notes, m.crash_notes_size)
        m.mem.zero(m.vmcoreinfo_paddr, max(m.vmcoreinfo_size, VMCOREINFO_NOTE_SIZE))
        nodes = cpus_nodes if cpus_nodes is not None else _snapshot_cpus_nodes(fs)
        maxmem = 1 << 40
        lrdr = fs.file(f"{DT}/rtas/ibm,lrdr-capacity")
        if lrdr.is_file():
            raw = fs.read_bytes(f"{DT}/rtas/ibm,lrdr-capacity")
            if len(raw) >= 8:
                maxmem = int.from_bytes(raw[:8], "big")
        return cls(m, dt.rtas, nodes, dt.lmb_size or LMB_SIZE, {}, dict(cpu_node_templates or {}), maxmem)

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


def _snapshot_cpus_nodes(fs: FsRoot) -> list[OfNode]:
    d = fs.file(f"{DT}/cpus")
    if not d.is_dir():
        raise SnapshotError(fs.display(f"{DT}/cpus"), "missing: the crash FDT's /cpus cannot be rebuilt")
    nodes: list[OfNode] = []
    for sub in sorted(p for p in d.iterdir() if p.is_dir()):
        rel = f"{DT}/cpus/{sub.name}"
        props = [(f.name, fs.read_bytes(f"{rel}/{f.name}")) for f in sorted(sub.iterdir()) if f.is_file()]
        if not any(n == "device_type" for n, _ in props):
            props.append(("device_type", b"cpu\0"))
        nodes.append(OfNode(sub.name, props))
    return nodes
