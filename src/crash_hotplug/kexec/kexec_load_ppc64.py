"""What kexec-tools ``kexec -p --hotplug`` does on ppc64 before it calls ``kexec_load``
(``kexec/arch/ppc64/crashdump-ppc64.c``, ``kexec-elf-ppc64.c``, ``fdt.c``, ``fs2dt.c``).

The first elfcorehdr is built in userspace: one PT_NOTE per possible CPU (``cpuN/crash_notes``),
the VMCOREINFO note, then PT_LOADs in this order: ``[0, 64K)`` pointing at the backup segment, the
rest of RAM minus the crashkernel region, and last the RTAS region rounded out to whole pages (the
kernel, when it rebuilds the header, sorts it in with its exact size). ``p_vaddr`` is
``PAGE_OFFSET + paddr`` for every PT_LOAD and 0 for the notes; there is no kernel-text PT_LOAD. The
buffer is 1 KiB aligned; with ``--hotplug`` its segment is ``/sys/kernel/crash_elfcorehdr_size``
rounded to 1 KiB, and every segment to a page.

The crash kernel's FDT (flattened from ``/proc/device-tree`` by fs2dt) gets 4 KiB of room plus,
with ``--hotplug``, room for a CPU node per possible but absent core (``kdump_fdt_extra_size``:
the size of the first CPU node's files and names), then ``linux,booted-from-kexec`` in
``/chosen`` (``fixup_dt``).

Placement follows the capture in ``../shared/vectors-ppc64``: the kernel at the start of the
crashkernel region, then backup, elfcorehdr, purgatory and initrd each at the next free page, the
FDT at the top of the region.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from crash_hotplug.crash.ppc64 import (
    BACKUP_SRC_END,
    BACKUP_SRC_SIZE,
    BACKUP_SRC_START,
    arch_crash_get_elfcorehdr_size,
    for_each_mem_range,
)
from crash_hotplug.elf.constants import EM_PPC64, PF_R, PF_W, PF_X, PT_LOAD, PT_NOTE
from crash_hotplug.elf.structs import PHDR, Elf64_Ehdr
from crash_hotplug.fdt.blob import FdtBlob
from crash_hotplug.kexec.kexec_core import Kexec
from crash_hotplug.kexec.kexec_load import kexec_load
from crash_hotplug.kexec.kimage import KEXEC_CRASH_HOTPLUG_SUPPORT, KEXEC_ON_CRASH, KexecError, KexecSegment, Kimage
from crash_hotplug.machine.physmem import PAGE_SIZE
from crash_hotplug.machine.pseries import OfNode, Pseries

__all__ = [
    "KEXEC_ARCH_PPC64",
    "Ppc64KexecLoad",
    "Ppc64Payload",
    "cpu_node_size",
    "crash_create_elf64_headers_ppc64",
    "crash_memory_ranges_ppc64",
    "fixup_dt",
    "kdump_fdt_extra_size",
    "kexec_tools_load_ppc64",
]

#: ``KEXEC_ARCH_PPC64`` (``include/uapi/linux/kexec.h``: EM_PPC64 << 16)
KEXEC_ARCH_PPC64: Final = EM_PPC64 << 16
ELF_CORE_HEADER_ALIGN: Final = 1024
_RWX: Final = PF_R | PF_W | PF_X


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def crash_memory_ranges_ppc64(platform: Pseries) -> list[tuple[int, int]]:
    """``get_crash_memory_ranges`` of kexec-tools (inclusive ranges, in header order).

    The memory nodes and assigned LMBs of the device tree are the machine's System RAM; the
    crashkernel region is cut out, ``[0, 64K)`` becomes its own first range and RTAS, page-rounded,
    the last.
    """
    m = platform.machine
    out: list[tuple[int, int]] = []
    for s, e in for_each_mem_range(m.kernel_state(snapshot=False)):
        parts = [(s, e)]
        if m.crashk_res is not None:
            cs, ce = m.crashk_res
            parts = [(a, b) for a, b in ((s, min(e, cs - 1)), (max(s, ce + 1), e)) if a <= b] \
                if cs <= e and ce >= s else parts
        for a, b in parts:
            if a == BACKUP_SRC_START and b > BACKUP_SRC_END:
                out += [(BACKUP_SRC_START, BACKUP_SRC_END), (BACKUP_SRC_END + 1, b)]
            else:
                out.append((a, b))
    if platform.rtas is not None:
        base, size = platform.rtas
        start = base // PAGE_SIZE * PAGE_SIZE
        out.append((start, _align(base + size, PAGE_SIZE) - 1))
    return out


def crash_create_elf64_headers_ppc64(platform: Pseries, backup_mem: int) -> bytes:
    """kexec-tools' elfcorehdr for ppc64, padded to 1 KiB."""
    m = platform.machine
    notes = [(m.cpus.cpu(c).crash_notes, m.crash_notes_size) for c in m.cpus.possible]
    ranges = crash_memory_ranges_ppc64(platform)
    nr = len(notes) + 1 + len(ranges)
    buf = bytearray(_align(Elf64_Ehdr.SIZE + nr * PHDR.size, ELF_CORE_HEADER_ALIGN))
    off = Elf64_Ehdr.SIZE
    for addr, length in [*notes, (m.vmcoreinfo_paddr, m.vmcoreinfo_size)]:
        PHDR.pack_into(buf, off, PT_NOTE, 0, addr, 0, addr, length, length, 0)
        off += PHDR.size
    for s, e in ranges:
        p_offset = backup_mem if s == BACKUP_SRC_START else s
        PHDR.pack_into(buf, off, PT_LOAD, _RWX, p_offset, (m.page_offset + s) & ((1 << 64) - 1), s,
                       e - s + 1, e - s + 1, 0)
        off += PHDR.size
    buf[: Elf64_Ehdr.SIZE] = Elf64_Ehdr.core(machine=EM_PPC64, phnum=nr).pack()
    return bytes(buf)


def cpu_node_size(node: OfNode) -> int:
    """``get_cpu_node_size``: the bytes of a CPU node's files plus their names, as
    ``/proc/device-tree`` shows them (the kernel's ``name`` property is one of the files)."""
    return sum(len(v) + len(n) for n, v in node.properties)


def kdump_fdt_extra_size(possible: int, present: int, online: int, cpus_nodes: Sequence[OfNode]) -> int:
    """``kdump_fdt_extra_size``: room for the CPU nodes of the cores not present yet (0 when every
    possible CPU is online)."""
    if online == possible:
        return 0
    first = next((n for n in cpus_nodes if n.is_cpu), None)
    if first is None:
        raise KexecError("kexec-tools: Failed to get cpu info (no CPU node under /proc/device-tree/cpus)", 99)
    servers = first.get("ibm,ppc-interrupt-server#s")
    threads = len(servers) // 4 if servers else 0
    size = cpu_node_size(first)
    if not threads or not size:
        raise KexecError("kexec-tools: Failed to get cpu info", 99)
    in_system, possible_cores = present // threads, possible // threads
    if in_system > possible_cores:
        raise KexecError("kexec-tools: Possible CPU nodes can't be less than active CPU nodes", 99)
    return (possible_cores - in_system) * size


def fixup_dt(fdt: bytes, extra: int) -> bytes:
    """``fixup_dt``: grow the flattened tree by 4 KiB and ``extra`` (``fdt_open_into``; the blocks
    stay where they are) and add the empty ``linux,booted-from-kexec`` to ``/chosen``."""
    blob = FdtBlob(fdt)
    size = blob.totalsize + 4096 + extra
    raw = bytearray(blob.data() + bytes(size - blob.totalsize))
    raw[4:8] = size.to_bytes(4, "big")
    grown = FdtBlob(raw)
    chosen = grown.path_offset("/chosen")
    if chosen is None:
        chosen = grown.add_subnode(0, "chosen")
    grown.setprop(chosen, "linux,booted-from-kexec", b"")
    return grown.data()


@dataclass
class Ppc64Payload:
    """What ``kexec -p`` is given: the capture kernel (its memory size), initrd, command line, the
    purgatory's size, and the crash kernel's FDT as kexec-tools flattened and fixed it up."""

    kernel: bytes
    kernel_memsz: int
    initrd: bytes
    fdt: bytes
    purgatory_memsz: int = 0x4000


@dataclass
class Ppc64KexecLoad:
    segments: list[KexecSegment]
    flags: int
    elfcorehdr: int
    backup: int
    fdt: int


def _place(platform: Pseries, payload: Ppc64Payload, hotplug: bool, hdr_size: int) -> Ppc64KexecLoad:
    m = platform.machine
    if m.crashk_res is None:
        raise KexecError("kexec-tools: no crashkernel region (/proc/device-tree/chosen/linux,crashkernel-*)", 99)
    cs, ce = m.crashk_res
    segs: list[KexecSegment] = []
    cur = cs

    def add(buf: bytes, memsz: int, name: str) -> KexecSegment:
        nonlocal cur
        memsz = _align(max(memsz, len(buf)), PAGE_SIZE)
        seg = KexecSegment(buf, len(buf), cur, memsz, name)
        cur += memsz
        segs.append(seg)
        return seg

    add(payload.kernel, payload.kernel_memsz, "kernel")
    backup = add(bytes(BACKUP_SRC_SIZE), BACKUP_SRC_SIZE, "backup")
    hdr = crash_create_elf64_headers_ppc64(platform, backup.mem)
    memsz = _align(hdr_size, ELF_CORE_HEADER_ALIGN) if hotplug else len(hdr)
    elfhdr = add(hdr, memsz, "elfcorehdr")
    add(bytes(payload.purgatory_memsz), payload.purgatory_memsz, "purgatory")
    if payload.initrd:
        add(payload.initrd, len(payload.initrd), "initrd")
    fdt_memsz = _align(len(payload.fdt), PAGE_SIZE)
    fdt_mem = (ce + 1 - fdt_memsz) // PAGE_SIZE * PAGE_SIZE
    if fdt_mem < cur:
        raise KexecError("kexec-tools: could not find a free area of memory for the FDT", 99)
    fdt = KexecSegment(payload.fdt, len(payload.fdt), fdt_mem, fdt_memsz, "fdt")
    segs.append(fdt)
    flags = KEXEC_ON_CRASH | KEXEC_ARCH_PPC64 | (KEXEC_CRASH_HOTPLUG_SUPPORT if hotplug else 0)
    return Ppc64KexecLoad(segs, flags, elfhdr.mem, backup.mem, fdt.mem)


def kexec_tools_load_ppc64(kx: Kexec, platform: Pseries, payload: Ppc64Payload, *, hotplug: bool = True,
                           post_load: Callable[[Kimage, bytes], None] | None = None) -> Kimage:
    """``kexec -p [--hotplug]`` on ppc64: prepare the segments and call ``kexec_load``; ``post_load``
    is the kernel's ``machine_kexec_post_load`` (the arch handler's, which takes the backup address
    from the header)."""
    config = platform.machine.config
    size = arch_crash_get_elfcorehdr_size(len(platform.machine.cpus.possible), config.crash_max_memory_ranges,
                                          config.memory_hotplug) if config.crash_hotplug else 0
    if hotplug and size == 0:
        raise KexecError("kexec-tools --hotplug: the kernel needs CONFIG_CRASH_HOTPLUG "
                         "(/sys/kernel/crash_elfcorehdr_size missing or 0)")
    prep = _place(platform, payload, hotplug, size)
    image = kexec_load(kx, prep.segments[1].mem, prep.segments, prep.flags)
    if image is None:
        raise KexecError("kexec_load returned no image")
    image.hotplug_support = bool(prep.flags & KEXEC_CRASH_HOTPLUG_SUPPORT)
    image.elf_load_addr = prep.elfcorehdr
    if post_load is not None:
        post_load(image, prep.segments[2].buf)
    return image
