"""A panic on a ppc64 pseries guest with a kexec_load crash image, and whether the capture
kernel comes up (``kernel/crash_core.c: __crash_kexec``, ``arch/powerpc/kexec/crash.c:
default_machine_crash_shutdown``, kexec-tools ``purgatory/arch/ppc64/v2wrap.S``,
``arch/powerpc/kernel/prom.c: early_init_dt_scan_cpus``).

The panicking CPU saves its registers into its ``crash_notes`` (the others are stopped by IPI and
save theirs), purgatory copies ``[0, 64K)`` to the backup segment and writes the panicking CPU's
hardware id into the FDT header's ``boot_cpuid_phys``; the capture kernel then looks for that id in
the ``ibm,ppc-interrupt-server#s`` of the ``/cpus`` nodes of its FDT. A CPU hot-added after the
load whose node never reached that FDT is not found: the capture kernel stops early and the dump
is lost.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum

from crash_hotplug.crash.ppc64 import BACKUP_SRC_SIZE, BACKUP_SRC_START
from crash_hotplug.elf.prstatus_ppc64 import PT_REGS, ElfPrstatusPpc64
from crash_hotplug.errors import FdtFormatError
from crash_hotplug.fdt.blob import FDT_MAGIC, FdtBlob
from crash_hotplug.kexec.kexec_core import Kexec
from crash_hotplug.kexec.kimage import kimage_find_elfcorehdr
from crash_hotplug.machine.pseries import Pseries

__all__ = ["Ppc64DumpLost", "Ppc64PanicResult", "capture_kernel_boot_cpu", "crash_kexec_ppc64"]


class Ppc64DumpLost(StrEnum):
    LOCK_HELD = "kexec lock held (a load, unload or hotplug update in progress): kernel halts"
    NO_IMAGE = "no crash image loaded: kernel halts"
    NO_FDT = "no FDT segment in the crash image: purgatory has no device tree to pass"
    BOOT_CPU_NOT_IN_FDT = "capture kernel: the panicking CPU has no /cpus node in its FDT, boot stops"


@dataclass(frozen=True)
class Ppc64PanicResult:
    cpu: int
    lost: Ppc64DumpLost | None
    #: the capture kernel's boot CPU node, when found
    boot_node: str | None = None
    elfcorehdr: bytes = b""
    fdt: bytes = b""

    @property
    def dumped(self) -> bool:
        return self.lost is None


def capture_kernel_boot_cpu(fdt: bytes, boot_cpuid_phys: int) -> str | None:
    """``early_init_dt_scan_cpus``: the ``/cpus`` node whose interrupt servers (``reg`` without
    them) include the boot CPU's hardware id, or None."""
    blob = FdtBlob(fdt)
    cpus = blob.path_offset("/cpus")
    if cpus is None:
        return None
    for node in blob.subnodes(cpus):
        dt = blob.get_property(node, "device_type")
        if dt is None or dt.split(b"\0", 1)[0] != b"cpu":
            continue
        raw = blob.get_property(node, "ibm,ppc-interrupt-server#s") or blob.get_property(node, "reg") or b""
        ids = struct.unpack(f">{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
        if boot_cpuid_phys in ids:
            return f"/cpus/{blob.node_name(node)}"
    return None


def crash_kexec_ppc64(kx: Kexec, platform: Pseries, cpu: int, *, pid: int = 0) -> Ppc64PanicResult:
    """Panic on ``cpu`` (its hardware id is its number: one thread per core, as under QEMU TCG)."""
    m = platform.machine
    if not kx.kexec_trylock():
        return Ppc64PanicResult(cpu, Ppc64DumpLost.LOCK_HELD)
    try:
        image = kx.kexec_crash_image
        if image is None:
            return Ppc64PanicResult(cpu, Ppc64DumpLost.NO_IMAGE)
        m.panic_cpu = cpu
        for c in m.cpus.online:
            st = ElfPrstatusPpc64(pr_pid=pid if c == cpu else 0, regs=(0,) * len(PT_REGS))
            m.mem.write(m.cpus.cpu(c).crash_notes, st.note_buf())
        fdt_seg = next((s for s in image.segments
                        if int.from_bytes(m.mem.read(s.mem, 4), "big") == FDT_MAGIC), None)
        if fdt_seg is None:
            return Ppc64PanicResult(cpu, Ppc64DumpLost.NO_FDT)
        kx.arch_kexec_unprotect_crashkres()
        backup = next((s for s in image.segments if s.name == "backup"), None)
        if backup is not None:
            m.mem.write(backup.mem, m.mem.read(BACKUP_SRC_START, BACKUP_SRC_SIZE))
        size = int.from_bytes(m.mem.read(fdt_seg.mem + 4, 4), "big")
        m.mem.write(fdt_seg.mem + 28, cpu.to_bytes(4, "big"))
        fdt = m.mem.read(fdt_seg.mem, min(size, fdt_seg.memsz))
        idx = image.elfcorehdr_index if image.elfcorehdr_index >= 0 else kimage_find_elfcorehdr(image, m.mem)
        hdr_seg = image.segments[idx] if idx >= 0 else None
        hdr = m.mem.read(hdr_seg.mem, 4096) if hdr_seg is not None else b""
        try:
            node = capture_kernel_boot_cpu(fdt, cpu)
        except FdtFormatError:
            node = None
        if node is None:
            return Ppc64PanicResult(cpu, Ppc64DumpLost.BOOT_CPU_NOT_IN_FDT, None, hdr, fdt)
        return Ppc64PanicResult(cpu, None, node, hdr, fdt)
    finally:
        kx.kexec_unlock()
