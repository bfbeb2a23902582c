"""The pseries guest's QEMU command line (``qemu-system-ppc64``, TCG), as the ppc64 vectors ran it.

``-machine pseries`` with the speculation capabilities TCG cannot provide turned off
(``cap-cfpc``, ``cap-sbbc``, ``cap-ibs`` broken; ``cap-ccf-assist``, ``cap-large-decr`` off),
``-cpu POWER9``; SLOF boots the package's ELF ``vmlinux``; the console is the spapr-vty ``hvc0``
on ``-serial``. There is no KVM path: the host is x86.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crash_hotplug.lab.errors import QemuError
from crash_hotplug.lab.qemu import boot_and_console_args

__all__ = [
    "KERNEL_CMDLINE_PPC64",
    "PSERIES",
    "QEMU_PPC64",
    "Ppc64MachineConfig",
    "qemu_argv_ppc64",
]

PSERIES = "pseries,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off,cap-large-decr=off"
KERNEL_CMDLINE_PPC64 = "console=hvc0 crashkernel=512M memhp_default_state=online_movable panic=0 loglevel=7"
#: (QEMU program, Debian package)
QEMU_PPC64 = ("qemu-system-ppc64", "qemu-system-ppc")


@dataclass(frozen=True)
class Ppc64MachineConfig:
    """The vectors' pseries guest: 2 GiB + 8 DIMM slots up to 16 GiB, 2 of 8 single-thread cores."""

    memory: str = "2G"
    slots: int = 8
    maxmem: str = "16G"
    cpus: int = 2
    maxcpus: int = 8
    machine: str = PSERIES
    cpu: str = "POWER9"
    cmdline: str = KERNEL_CMDLINE_PPC64

    @classmethod
    def from_plan(cls, machine: dict[str, Any]) -> Ppc64MachineConfig:
        """The plan's ``machine`` overrides that apply to pseries (x86-only keys are refused)."""
        known = set(cls.__dataclass_fields__)
        bad = set(machine) - known
        if bad:
            raise QemuError(f"machine keys {sorted(bad)} do not apply to the pseries guest (known: {sorted(known)})")
        return cls(**machine)


def qemu_argv_ppc64(cfg: Ppc64MachineConfig, kernel: str, initrd: str) -> Callable[[str, str], list[str]]:
    """A builder of the command line from the serial and QMP socket paths (for ``qemu.VM``)."""

    def build(serial_sock: str, qmp_sock: str) -> list[str]:
        return [
            QEMU_PPC64[0],
            "-machine",
            cfg.machine,
            "-cpu",
            cfg.cpu,
            "-accel",
            "tcg,thread=multi",
            "-m",
            f"{cfg.memory},slots={cfg.slots},maxmem={cfg.maxmem}",
            "-smp",
            f"{cfg.cpus},maxcpus={cfg.maxcpus}",
            *boot_and_console_args(kernel, initrd, cfg.cmdline, serial_sock, qmp_sock),
        ]

    return build
