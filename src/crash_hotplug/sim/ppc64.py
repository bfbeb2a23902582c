"""The storm simulator's approaches on a ppc64le pseries guest.

The guest starts from a snapshot (``--root``, as ``scenario run --arch ppc64le`` does), with
kexec-tools' ``kexec_load`` path (Debian's ppc64el kernels have no ``kexec_file_load``) and the
crash kernel's FDT it was given (``--fdt``). Memory comes and goes one LMB at a time, as DLPAR
does it (``dlpar_memory_add_by_count``: each LMB added and onlined; ``dlpar_memory_remove_by_index``:
each LMB offlined and removed, ascending), so a storm's block events are LMB events.

The approaches that exist on powerpc:

``legacy`` / ``legacy-throttled``
    udev reloading kdump (``kexec -p -u`` then ``kexec -p``, without ``--hotplug``) on every event,
    or once per burst through kdump-utils' throttler, with the rule kdump-utils installs on ppc64le
    (``98-kexec.rules.ppc64``: its fadump checks find no ``/sys/kernel/fadump``).
``upstream``
    the kernel's update (6.9+, ``arch/powerpc/kexec/crash.c``) of an image loaded with
    ``kexec -p --hotplug``: on a removal the range going away is cut out of the header at once
    (``remove_mem_range``), so unlike x86 the header is not left describing removed memory.

``rfc`` (the 2021 RFC patched ``arch/x86`` and kexec_file only) and ``ours`` (built on the x86
header builder) are not modelled on ppc64le.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from crash_hotplug.crash.arch.ppc64 import Ppc64
from crash_hotplug.crash.core import CrashMem
from crash_hotplug.crash.hotplug import DESIGNS, CrashHotplug
from crash_hotplug.crash.ppc64 import get_crash_memory_ranges
from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.kexec.kexec_core import Kexec
from crash_hotplug.kexec.kexec_load_ppc64 import Ppc64Payload, kexec_tools_load_ppc64
from crash_hotplug.kexec.kimage import Kimage
from crash_hotplug.legacy.kdumpctl import KdumpService
from crash_hotplug.legacy.udevd import (
    RULES_ALWAYS_RELOAD,
    RULES_CRASH_HOTPLUG_AWARE,
    UdevDaemon,
    bundled_rules,
    without_fadump,
)
from crash_hotplug.machine.machine import Machine
from crash_hotplug.machine.pseries import LMB_SIZE, Pseries
from crash_hotplug.machine.resource import system_ram_ranges
from crash_hotplug.snapshot.model_ppc64 import pseries_from_snapshot

__all__ = [
    "NOT_ON_PPC64",
    "PPC64_APPROACHES",
    "Ppc64Guest",
    "Ppc64SimError",
    "Ppc64SimRun",
    "ppc64_base_ranges",
    "start_ppc64",
]

PPC64_APPROACHES: Final = ("legacy", "legacy-throttled", "upstream")
#: approaches with no powerpc counterpart, and why
NOT_ON_PPC64: Final = {
    "rfc": "the 2021 RFC patched arch/x86 and kexec_file_load only",
    "ours": "built on the x86 header builder (cutting offline blocks out); not ported to powerpc",
}


class Ppc64SimError(CrashHotplugError):
    """A ppc64le storm that cannot run (an approach powerpc lacks, a guest that does not fit)."""


@dataclass(frozen=True)
class Ppc64Guest:
    """The pseries guest a storm starts from: its snapshot, the crash kernel's FDT kexec-tools
    loads, and the capture kernel's sizes."""

    root: Path
    fdt: bytes
    kernel_memsz: int = 0x289F000
    initrd_size: int = 1221577

    def payload(self) -> Ppc64Payload:
        return Ppc64Payload(b"", self.kernel_memsz, bytes(self.initrd_size), self.fdt)

    def boot(self) -> Pseries:
        return pseries_from_snapshot(self.root)

    def facts(self) -> tuple[int, int, int, str]:
        """(System RAM bytes, online CPUs, possible CPUs, kernel release) of the guest as it boots."""
        m = self.boot().machine
        return (sum(e - s + 1 for s, e in system_ram_ranges(m.iomem)), len(m.cpus.online), len(m.cpus.possible),
                m.release)


@dataclass
class Ppc64SimRun:
    """What the simulator drives on a pseries guest (the ppc64le counterpart of
    :class:`~crash_hotplug.scenario.ScenarioRun`)."""

    platform: Pseries
    kexec: Kexec
    arch: Ppc64
    payload: Ppc64Payload
    hotplug: CrashHotplug | None = None
    kdump: KdumpService | None = None
    udev: UdevDaemon | None = None
    syscall: str = "kexec_load"
    image: Kimage | None = None
    #: DIMM name -> (base address, LMB names added so far, in order)
    lmbs: dict[str, tuple[int, list[str]]] = field(default_factory=dict)

    @property
    def machine(self) -> Machine:
        return self.platform.machine

    def crash_hotplug_attr(self) -> int | None:
        """What ``memory/crash_hotplug`` reads now; None when no kernel handler runs."""
        if not self.machine.config.crash_hotplug or self.hotplug is None:
            return None
        return self.hotplug.crash_check_hotplug_support()

    def load_image(self) -> Kimage:
        """``kexec -p --hotplug`` with a kernel handler, plain ``kexec -p`` for udev's reloads."""
        return kexec_tools_load_ppc64(self.kexec, self.platform, self.payload, hotplug=self.hotplug is not None,
                                      post_load=self.arch.machine_kexec_post_load)

    def load(self) -> Kimage:
        image = self.kdump.start() if self.kdump is not None else self.load_image()
        self.image = image
        return image

    # -- DLPAR, one LMB per operation ------------------------------------------------------
    def dimm_add(self, name: str, size: int) -> None:
        """The DIMM's place (its LMBs come one per ``lmb_add``)."""
        if name in self.lmbs or name in self.platform.dimms:
            raise Ppc64SimError(f"{name}: already present")
        self.lmbs[name] = (self.platform.next_dimm_address(size), [])
        self.platform.dimms[name] = []

    def lmb_add(self, name: str, k: int) -> None:
        """``dlpar_add_lmb``: ``__add_memory`` of LMB ``k`` of the DIMM, onlined by the policy."""
        base, names = self.lmbs[name]
        lmb_base = base + k * self.platform.lmb_size
        lmb = f"{name}/lmb{lmb_base >> 28}"
        # as Pseries.dlpar_memory_add does it, one LMB at a time
        self.machine.memory.add_memory(lmb, lmb_base, self.platform.lmb_size)
        names.append(lmb)
        self.platform.dimms[name] = list(names)

    def lmb_remove(self, name: str, k: int) -> None:
        """``dlpar_remove_lmb``: LMB ``k`` offlined, then removed (memblock forgets it)."""
        lmbs = self.platform.dimms[name]
        lmb = lmbs[k] if k < len(lmbs) else None
        if lmb is None or lmb not in self.machine.memory.dimms:
            raise Ppc64SimError(f"{name}: no LMB {k}")
        self.machine.memory.remove_memory(lmb)

    def dimm_remove(self, name: str) -> None:
        """The DIMM's last LMB is gone: forget it."""
        lmbs = self.platform.dimms.pop(name, [])
        for lmb in lmbs:
            if lmb in self.machine.memory.dimms:
                self.machine.memory.remove_memory(lmb)
        self.lmbs.pop(name, None)


def start_ppc64(guest: Ppc64Guest, approach: str, rules: str | None = None) -> Ppc64SimRun:
    """The guest booted, with ``approach``'s kdump path set up (not yet loaded)."""
    if approach in NOT_ON_PPC64:
        raise Ppc64SimError(f"approach {approach!r} is not modelled on ppc64le: {NOT_ON_PPC64[approach]}")
    if approach not in PPC64_APPROACHES:
        raise Ppc64SimError(f"unknown approach {approach!r} on ppc64le ({', '.join(PPC64_APPROACHES)})")
    platform = guest.boot()
    if platform.machine.memory.block_size != LMB_SIZE:
        raise Ppc64SimError(f"{guest.root}: memory blocks of {platform.machine.memory.block_size:#x} bytes; "
                            f"the simulator's pseries storms are in {LMB_SIZE >> 20} MiB LMBs")
    kexec = Kexec(platform.machine)
    arch = Ppc64(platform)
    run = Ppc64SimRun(platform, kexec, arch, guest.payload())
    if approach == "upstream":
        run.hotplug = CrashHotplug(kexec, DESIGNS["upstream"], arch=arch).crash_hotplug_init()
    else:
        throttled = approach == "legacy-throttled"
        run.kdump = KdumpService(kexec, "kexec_load", loader=run.load_image)
        chosen = rules or (RULES_CRASH_HOTPLUG_AWARE if throttled else RULES_ALWAYS_RELOAD)
        run.udev = UdevDaemon(run.kdump, bundled_rules(chosen, arch="ppc64le"), run.crash_hotplug_attr,
                              throttle=throttled, read_file=without_fadump).attach()
    return run


def ppc64_base_ranges(run: Ppc64SimRun) -> CrashMem:
    """The ranges powerpc's builder starts from now (``get_crash_memory_ranges``: memblock, less the
    crashkernel region, plus RTAS and the first 64 KiB)."""
    return get_crash_memory_ranges(run.machine.kernel_state(snapshot=False), run.platform.rtas)
