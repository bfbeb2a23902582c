"""Machine quirks as data: changes to the guest machine, each applied only where the booted kernel
reports the problem it works around, and recorded with its reason in the run's ``scenario.json``.

``hypervisor-detect``: from 6.12.117 (and on 7.x) x86 refuses QEMU's disabled MADT processor entries
unless a hypervisor is detected (``acpi_is_processor_usable()`` in ``arch/x86/kernel/acpi/boot.c``),
so under TCG, where the CPUID hypervisor bit alone does not name one, the kernel sizes
``possible`` to the boot CPUs ("Allowing 2 present CPUs plus 0 hotplug CPUs", and later "ACPI:
Unable to map lapic to logical cpu number") and no vCPU can be hot-added. A VMware-looking
machine (``vmware_platform()`` in ``arch/x86/kernel/cpu/vmware.c``: the DMI serial and the
backdoor I/O port) makes the kernel detect one; it then allows the hotplug CPUs (and uses ``tsc``
rather than ``hpet`` as its clock source).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HYPERVISOR_DETECT", "QUIRKS", "MachineQuirk", "QuirkVerdicts", "hotplug_cpus", "needs_quirk"]

# arch/x86/kernel/cpu/topology.c (6.9+) and, before it, arch/x86/kernel/smpboot.c.
_ALLOWING_RE = re.compile(r"Allowing ([0-9]+) present CPUs plus ([0-9]+) hotplug CPUs")
_ALLOWING_OLD_RE = re.compile(r"smpboot: Allowing ([0-9]+) CPUs, ([0-9]+) hotplug CPUs")


@dataclass(frozen=True)
class MachineQuirk:
    """One change to the QEMU machine, and when it is applied."""

    name: str
    cpu_flags: tuple[str, ...]  # appended to -cpu
    machine_opts: tuple[str, ...]  # appended to -machine
    extra_args: tuple[str, ...]  # appended to the command line
    accels: tuple[str, ...]  # accelerators it applies to
    reason: str

    def to_json(self, evidence: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "cpu_flags": list(self.cpu_flags),
            "machine_opts": list(self.machine_opts),
            "extra_args": list(self.extra_args),
            "reason": self.reason,
            "evidence": evidence,
        }


HYPERVISOR_DETECT = MachineQuirk(
    name="hypervisor-detect",
    cpu_flags=("hypervisor=off",),
    machine_opts=("vmport=on",),
    extra_args=("-smbios", "type=1,serial=VMware-lab-tcg"),
    accels=("tcg",),
    reason=(
        "the kernel allows no hotplug CPUs on the plain machine: acpi_is_processor_usable() takes "
        "QEMU's disabled MADT entries only when a hypervisor is detected, so the guest is made to "
        "detect VMware (DMI serial + backdoor port) and vCPU hot-add works"
    ),
)
QUIRKS: dict[str, MachineQuirk] = {HYPERVISOR_DETECT.name: HYPERVISOR_DETECT}


def hotplug_cpus(dmesg: str) -> tuple[int, int, str] | None:
    """``(present, hotplug, line)`` from the kernel's "Allowing N present CPUs plus M hotplug CPUs"
    (or, before 6.9, "smpboot: Allowing N CPUs, M hotplug CPUs", N counting both)."""
    found = None
    for m in _ALLOWING_RE.finditer(dmesg):
        found = m
    if found is not None:
        line = next((ln for ln in dmesg.splitlines() if found[0] in ln), found[0])
        return int(found[1]), int(found[2]), line.strip()
    for m in _ALLOWING_OLD_RE.finditer(dmesg):
        found = m
    if found is None:
        return None
    line = next((ln for ln in dmesg.splitlines() if found[0] in ln), found[0])
    return int(found[1]) - int(found[2]), int(found[2]), line.strip()


def needs_quirk(dmesg: str, maxcpus: int, cpus: int, accel: str) -> tuple[MachineQuirk, str] | None:
    """The quirk a booted kernel asks for, with the line it said it in; None when it needs none.

    Only ``hypervisor-detect``: the kernel allows 0 hotplug CPUs while the machine has free slots,
    or says it cannot map a hot-added lapic.
    """
    if accel not in HYPERVISOR_DETECT.accels or maxcpus <= cpus:
        return None
    allowing = hotplug_cpus(dmesg)
    if allowing is not None and allowing[1] == 0:
        return HYPERVISOR_DETECT, allowing[2]
    lapic = next((ln.strip() for ln in dmesg.splitlines() if "Unable to map lapic" in ln), None)
    if lapic is not None:
        return HYPERVISOR_DETECT, lapic
    return None


class QuirkVerdicts:
    """The quirks each kernel release asked for once, per accelerator (``<cache>/machine-quirks.json``),
    so the next run boots the right machine at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, release: str, accel: str) -> list[tuple[MachineQuirk, str]]:
        entry = self._load().get(f"{release}|{accel}", [])
        out = []
        for item in entry if isinstance(entry, list) else []:
            if isinstance(item, dict) and item.get("name") in QUIRKS:
                out.append((QUIRKS[item["name"]], str(item.get("evidence", ""))))
        return out

    def put(self, release: str, accel: str, quirks: list[tuple[MachineQuirk, str]]) -> None:
        data = self._load()
        data[f"{release}|{accel}"] = [{"name": q.name, "evidence": ev} for q, ev in quirks]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path)
