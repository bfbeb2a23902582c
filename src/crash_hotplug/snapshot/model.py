"""A model :class:`~crash_hotplug.machine.machine.Machine` as a snapshot and back: the files a
kdump tool reads, at their Linux paths, with the text the kernel prints
(``drivers/base/cpu.c``, ``drivers/base/memory.c``, ``kernel/ksysfs.c``, ``kernel/resource.c``,
``fs/proc/kcore.c``), plus :data:`~crash_hotplug.machine.physmem.MODEL_STATE_FILE` with what only
the model knows (memory pattern seed, each CPU's task and registers, DIMMs).

The layout is that of ``shared/vectors/*/base/S*/root``; :func:`read_kernel_state` reads it back,
and :func:`machine_from_snapshot` rebuilds the machine from it (or from a real kernel's snapshot).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from crash_hotplug.elf.constants import PF_R, PF_W, PF_X, PT_LOAD, PT_NOTE
from crash_hotplug.elf.prstatus import USER_REGS
from crash_hotplug.elf.structs import EHDR, PHDR, Elf64_Ehdr
from crash_hotplug.errors import SnapshotError
from crash_hotplug.machine.cpumask import cpulist_format
from crash_hotplug.machine.machine import Machine
from crash_hotplug.machine.memory import MEMORY_BLOCK_SIZE
from crash_hotplug.machine.physmem import MODEL_STATE_FILE, PAGE_SIZE
from crash_hotplug.machine.resource import iomem_render, walk_system_ram_res
from crash_hotplug.snapshot.reader import CPU_DIR, DMESG, MEM_DIR, read_kernel_state
from crash_hotplug.snapshot.root import FsRoot

__all__ = [
    "kcore_header",
    "machine_from_snapshot",
    "model_state",
    "read_memory_blocks",
    "snapshot_files",
    "write_machine_files",
]

#: ``/proc/kcore`` file offsets: ``vaddr - KCORE_BASE + data offset`` (``kc_vaddr_to_offset``)
_KCORE_BASE: Final = 0xFFFF800000000000
_KCORE_DATA: Final = 0x4000
_MASK: Final = (1 << 64) - 1
_RWX: Final = PF_R | PF_W | PF_X


def _nl(value: str) -> bytes:
    return (value + "\n").encode()


def kcore_header(m: Machine) -> bytes:
    """ELF header and program headers of ``/proc/kcore`` (``elf_kcore_store_hdr``): the notes, the
    kernel-text mapping, and one direct-map LOAD per System RAM range (whole pages)."""
    loads: list[tuple[int, int, int]] = [(m.text_vaddr, m.text_paddr, m.text_size)]
    for start, end in walk_system_ram_res(m.iomem):
        first = -(-start // PAGE_SIZE) * PAGE_SIZE
        last = (end + 1) // PAGE_SIZE * PAGE_SIZE
        if last > first:
            loads.append(((m.page_offset + first) & _MASK, first, last - first))
    phnum = 1 + len(loads)
    out = bytearray(Elf64_Ehdr.core(phnum=phnum).pack())
    out += PHDR.pack(PT_NOTE, 0, EHDR.size + phnum * PHDR.size, 0, 0, 0, 0, 0)
    for vaddr, paddr, size in loads:
        off = (vaddr - _KCORE_BASE + _KCORE_DATA) & _MASK
        out += PHDR.pack(PT_LOAD, _RWX, off, vaddr, paddr, size, size, PAGE_SIZE)
    return bytes(out)


def model_state(m: Machine) -> dict[str, Any]:
    """The JSON of :data:`MODEL_STATE_FILE`: ``memory_pattern_seed``, ``written_ranges`` (inclusive
    byte ranges of written pages; every other page holds ``page_pattern(pfn, seed)``), ``panic_cpu``,
    and per present CPU ``pr_pid`` and ``regs`` (by ``user_regs_struct`` name), plus what the model
    needs to rebuild itself (DIMMs, ``crash_notes`` of every possible CPU, counters)."""
    return {
        "memory_pattern_seed": m.seed,
        "written_ranges": [[s, e] for s, e in m.mem.written_ranges()],
        "panic_cpu": m.panic_cpu,
        "kernel_profile": m.profile,
        "dimm_base": m.dimm_base,
        "dimm_limit": m.dimm_limit,
        "dimm_slots": m.dimm_slots,
        "dimms": [{"name": d.name, "start": d.start, "size": d.size}
                  for d in sorted(m.memory.dimms.values(), key=lambda d: d.start)],
        "crash_notes": {str(c): a for c, a in m.crash_notes().items()},
        "crash_notes_size": m.crash_notes_size,
        "vmcoreinfo": m.vmcoreinfo_items,
        "cpus": {
            str(c): {"pr_pid": s.pid, "regs": dict(zip(USER_REGS, s.regs, strict=True)), "online": s.online,
                     "counter": s.counter, "pid_override": s.pid_override}
            for c, s in m.cpus.cpus.items() if s.present
        },
    }


def snapshot_files(m: Machine) -> dict[str, bytes]:
    """Every file of the snapshot, by path relative to the root."""
    cfg = m.config
    cpus = m.cpus
    f: dict[str, bytes] = {
        "proc/iomem": iomem_render(m.iomem).encode(),
        "proc/cmdline": _nl(m.cmdline),
        "proc/sys/kernel/osrelease": _nl(m.release),
        "proc/kallsyms": "".join(
            f"{addr:016x} {kind} {name}\n" for addr, kind, name in (
                (m.text_vaddr, "T", "_stext"), (m.text_vaddr, "T", "_text"),
                (m.text_vaddr + m.etext_size, "T", "_etext"), (m.text_vaddr + m.text_size, "B", "_end"),
            )).encode(),
        "proc/kcore": kcore_header(m),
        f"{CPU_DIR}/possible": _nl(cpulist_format(cpus.possible)),
        f"{CPU_DIR}/present": _nl(cpulist_format(cpus.present)),
        f"{CPU_DIR}/online": _nl(cpulist_format(cpus.online)),
        f"{CPU_DIR}/offline": _nl(cpulist_format(cpus.offline)),
        f"{CPU_DIR}/kernel_max": _nl(str(cfg.nr_cpus_default - 1)),
        f"{MEM_DIR}/block_size_bytes": _nl(f"{m.block_size:x}"),
        f"{MEM_DIR}/auto_online_blocks": _nl(m.memory.auto_online_blocks),
        "sys/kernel/vmcoreinfo": _nl(f"{m.vmcoreinfo_paddr:#018x} {m.vmcoreinfo_size:x}"),
        "sys/kernel/kexec_loaded": _nl(str(int(bool(m.kexec and m.kexec.kexec_loaded())))),
        "sys/kernel/kexec_crash_loaded": _nl(str(int(bool(m.kexec and m.kexec.kexec_crash_loaded())))),
        "sys/kernel/kexec_crash_size": _nl(str(m.crashk_res[1] - m.crashk_res[0] + 1 if m.crashk_res else 0)),
        DMESG: m.dmesg().encode(),
        MODEL_STATE_FILE: (json.dumps(model_state(m), indent=1, sort_keys=True) + "\n").encode(),
    }
    if cfg.crash_hotplug:
        support = _nl(str(m.kexec.crash_check_hotplug_support() if m.kexec else 0))
        f[f"{CPU_DIR}/crash_hotplug"] = support
        f[f"{MEM_DIR}/crash_hotplug"] = support
        # arch_crash_get_elfcorehdr_size: 56 * (2 + NR_CPUS_DEFAULT [+ CRASH_MAX_MEMORY_RANGES])
        n = 2 + cfg.nr_cpus_default + (cfg.crash_max_memory_ranges if cfg.memory_hotplug else 0)
        f["sys/kernel/crash_elfcorehdr_size"] = _nl(str(56 * n))
    for c in cpus.present:
        s = cpus.cpu(c)
        base = f"{CPU_DIR}/cpu{c}"
        if cpus.hotpluggable(c):
            f[f"{base}/online"] = _nl(str(int(s.online)))
        f[f"{base}/crash_notes"] = _nl(f"{s.crash_notes:x}")
        f[f"{base}/crash_notes_size"] = _nl(str(m.crash_notes_size))
    for i, b in sorted(m.memory.blocks.items()):
        base = f"{MEM_DIR}/memory{i}"
        f[f"{base}/state"] = _nl(b.state)
        f[f"{base}/phys_index"] = _nl(f"{b.phys_index:08x}")
        f[f"{base}/valid_zones"] = _nl(b.valid_zones())
    return f


def write_machine_files(m: Machine, root: Path) -> int:
    """Write the snapshot files of ``m`` under ``root`` (created if missing); the number written."""
    files = snapshot_files(m)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return len(files)


def read_memory_blocks(fs: FsRoot) -> dict[int, tuple[bool, str]]:
    """``sys/devices/system/memory/memoryN``: block index -> (online, zone; Movable when offline)."""
    out: dict[int, tuple[bool, str]] = {}
    base = fs.file(MEM_DIR)
    if not base.is_dir():
        return out
    for d in sorted(base.glob("memory[0-9]*")):
        rel = f"{MEM_DIR}/{d.name}"
        index = fs.read_int(f"{rel}/phys_index", 16)
        online = fs.read_text(f"{rel}/state").strip() == "online"
        zones = (fs.read_optional(f"{rel}/valid_zones") or "").strip()
        out[index] = (online, zones if online else "Movable")
    return out


def _kallsyms(fs: FsRoot) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (fs.read_optional("proc/kallsyms") or "").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] not in out:
            try:
                out[parts[2]] = int(parts[0], 16)
            except ValueError:
                continue
    return out


def machine_from_snapshot(root: Path) -> Machine:
    """The machine a snapshot directory describes (the layout of ``shared/vectors/*/S*/root``).

    Kernel facts come from :func:`read_kernel_state`; memory blocks from
    ``sys/devices/system/memory``; the seed, CPU task state and DIMM names from
    ``var/lib/crash-hotplug/machine.json`` when the snapshot has it.
    """
    root = Path(root)
    state = read_kernel_state(root)
    fs = FsRoot(root)
    model: dict[str, Any] = {}
    model_text = fs.read_optional(MODEL_STATE_FILE)
    if model_text is not None:
        try:
            model = json.loads(model_text)
        except json.JSONDecodeError as e:
            raise SnapshotError(fs.display(MODEL_STATE_FILE), f"not JSON: {e.msg}") from None
    block_size = fs.read_int(f"{MEM_DIR}/block_size_bytes", 16) if fs.exists(MEM_DIR) else MEMORY_BLOCK_SIZE
    return Machine.restore(
        state, model=model, dmesg=fs.read_optional(DMESG) or "",
        release=fs.read_text("proc/sys/kernel/osrelease").strip(),
        cmdline=(fs.read_optional("proc/cmdline") or "").strip(),
        cpu0_hotpluggable=fs.exists(f"{CPU_DIR}/cpu0/online"), block_size=block_size,
        policy=(fs.read_optional(f"{MEM_DIR}/auto_online_blocks") or "offline").strip(),
        blocks=read_memory_blocks(fs), syms=_kallsyms(fs),
    )
