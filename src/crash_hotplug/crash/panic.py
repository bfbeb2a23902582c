"""A panic with a crash kernel loaded, and what the capture kernel makes of it.

``__crash_kexec`` (``kernel/crash_core.c``): try the kexec lock (a load, an unload or a hotplug
update holding it means no dump); no crash image means no dump; otherwise every online CPU saves
its registers into its ``crash_notes`` (``crash_save_cpu``, the NMI shoot-down of
``native_machine_crash_shutdown``), VMCOREINFO gets ``CRASHTIME`` (``crash_save_vmcoreinfo``), and
``machine_kexec`` jumps to purgatory, which checks the SHA-256 of the segments and spins on a
mismatch (``arch/x86/purgatory/purgatory.c``). The capture kernel then reads the elfcorehdr at
``elfcorehdr=`` and presents ``/proc/vmcore`` (:mod:`crash_hotplug.crash.vmcore`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from crash_hotplug.crash.vmcore import (
    ElfcorehdrNotSane,
    Vmcore,
    VmcoreNotInitialized,
    parse_crash_elf64_headers,
    parse_elfcorehdr_param,
    write_vmcore,
)
from crash_hotplug.errors import ElfFormatError
from crash_hotplug.kexec.kexec_core import Kexec, kimage_verify_digest
from crash_hotplug.machine.machine import Machine
from crash_hotplug.snapshot.writer import write_snapshot

__all__ = ["DumpLost", "PanicResult", "crash_kexec", "crash_save_cpu", "write_panic_artifacts"]


class DumpLost(StrEnum):
    """Why a panic produced no vmcore."""

    LOCK_HELD = "kexec lock held (a load, unload or hotplug update in progress): kernel halts"
    NO_IMAGE = "no crash image loaded: kernel halts"
    DIGEST_MISMATCH = "purgatory: SHA-256 digest mismatch, spins forever"
    BAD_ELFCOREHDR = "capture kernel: elfcorehdr not sane, no /proc/vmcore"


@dataclass
class PanicResult:
    panic_cpu: int
    lost: DumpLost | None
    detail: str = ""
    vmcore: Vmcore | None = None
    elfcorehdr_addr: int | None = None
    saved_cpus: tuple[int, ...] = ()

    @property
    def dumped(self) -> bool:
        return self.lost is None


def crash_save_cpu(machine: Machine, cpu: int) -> None:
    """``crash_save_cpu``: an NT_PRSTATUS note and the terminator into the CPU's ``crash_notes``."""
    st = machine.cpus.cpu(cpu)
    machine.mem.write(st.crash_notes, st.prstatus().note_buf())


def crash_kexec(kexec: Kexec, panic_cpu: int) -> PanicResult:
    """``__crash_kexec`` through purgatory to the capture kernel's ``/proc/vmcore``."""
    machine = kexec.machine
    if not machine.cpus.cpu(panic_cpu).online:
        raise ValueError(f"cpu{panic_cpu} is not online: it cannot panic")
    if not kexec.kexec_trylock():
        return PanicResult(panic_cpu, DumpLost.LOCK_HELD)
    machine.panic_cpu = panic_cpu
    try:
        image = kexec.kexec_crash_image
        if image is None:
            return PanicResult(panic_cpu, DumpLost.NO_IMAGE)
        # The panic path writes to memory the way the crashed kernel does, protection or not.
        kexec.arch_kexec_unprotect_crashkres()
        saved = machine.cpus.online
        for cpu in saved:
            crash_save_cpu(machine, cpu)
        machine.crash_save_vmcoreinfo(1_700_000_000 + machine.clock_us // 1_000_000)
        for hook in kexec.crash_kexec_hooks:
            hook()
        if not kimage_verify_digest(image, machine):
            return PanicResult(panic_cpu, DumpLost.DIGEST_MISMATCH, saved_cpus=saved)
        # the capture kernel finds the header where its command line says (elfcorehdr=)
        addr = parse_elfcorehdr_param(image.cmdline) if "elfcorehdr=" in image.cmdline else image.elf_load_addr
        try:
            vmcore = parse_crash_elf64_headers(machine.mem, addr, kernel_version=machine.config.version)
        except (ElfcorehdrNotSane, VmcoreNotInitialized, ElfFormatError) as e:
            return PanicResult(panic_cpu, DumpLost.BAD_ELFCOREHDR, str(e), elfcorehdr_addr=addr, saved_cpus=saved)
        return PanicResult(panic_cpu, None, vmcore=vmcore, elfcorehdr_addr=addr, saved_cpus=saved)
    finally:
        kexec.kexec_unlock()


def write_panic_artifacts(machine: Machine, result: PanicResult, out_dir: Path, *,
                          vmcore: bool = True) -> tuple[Path, Path | None]:
    """The machine at the panic as a snapshot (``out_dir/root``, with ``panic_cpu`` and the pages the
    kernel wrote in ``machine.json``) and, with ``vmcore``, the whole vmcore (``out_dir/vmcore``)."""
    machine.panic_cpu = result.panic_cpu
    root = write_snapshot(machine, out_dir / "root").root
    if result.vmcore is None or not vmcore:
        return root, None
    vmcore_path = out_dir / "vmcore"
    write_vmcore(result.vmcore, machine.mem, vmcore_path)
    return root, vmcore_path
