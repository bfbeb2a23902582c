"""A ppc64le pseries model machine from a snapshot: the inverse of writing one, as
:mod:`crash_hotplug.snapshot.model` does for x86_64 (file reading here, construction in
:mod:`crash_hotplug.machine.pseries`, so the machine layer never reads a root)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from crash_hotplug.elf.vmcoreinfo import VMCOREINFO_NOTE_SIZE
from crash_hotplug.errors import SnapshotError
from crash_hotplug.machine.cpu import CpuHotplug
from crash_hotplug.machine.machine import Machine, _last_stamp_us
from crash_hotplug.machine.memory import MemoryBlock, MemoryHotplug
from crash_hotplug.machine.protmem import GuardedPhysMem
from crash_hotplug.machine.pseries import LMB_SIZE, OfNode, Pseries
from crash_hotplug.snapshot.devicetree import DT
from crash_hotplug.snapshot.model import read_memory_blocks
from crash_hotplug.snapshot.reader import DMESG, MEM_DIR
from crash_hotplug.snapshot.reader_ppc64 import read_kernel_state_ppc64
from crash_hotplug.snapshot.root import FsRoot

__all__ = ["pseries_from_snapshot"]


def pseries_from_snapshot(root: Path, *, cpus_nodes: list[OfNode] | None = None,
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
    return Pseries(m, dt.rtas, nodes, dt.lmb_size or LMB_SIZE, {}, dict(cpu_node_templates or {}), maxmem)


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
