"""A crash hotplug scenario on a ppc64le pseries guest: the machine from a snapshot, kexec-tools'
``kexec -p --hotplug`` load, then DLPAR memory and CPU events with the generic handler and the
powerpc arch handler, and a panic. The same plan format as :mod:`crash_hotplug.scenario`
(``load``, ``add_dimm``, ``del_dimm``, ``add_cpus``, ``panic``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crash_hotplug.crash.arch.ppc64 import Ppc64, get_fdt_index
from crash_hotplug.crash.hotplug import DESIGNS, CrashHotplug
from crash_hotplug.crash.panic_ppc64 import Ppc64PanicResult, crash_kexec_ppc64
from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.kexec.kexec_core import Kexec
from crash_hotplug.kexec.kexec_load_ppc64 import Ppc64Payload, kexec_tools_load_ppc64
from crash_hotplug.kexec.kimage import Kimage, kimage_find_elfcorehdr
from crash_hotplug.machine.pseries import OfNode, Pseries
from crash_hotplug.snapshot.model_ppc64 import pseries_from_snapshot

__all__ = ["PPC64_SCRIPTED_STEPS", "Ppc64Run", "Ppc64ScenarioError"]

MIB = 1 << 20

#: the plan of ../shared/vectors-ppc64/6.12/base: a 1 GiB DIMM, two cores, the DIMM removed, a
#: 2 GiB DIMM, a panic on the last online CPU (a hot-added one)
PPC64_SCRIPTED_STEPS: tuple[dict[str, Any], ...] = (
    {"op": "load"},
    {"op": "add_dimm", "idx": 1, "size_mib": 1024},
    {"op": "add_cpus", "n": 2},
    {"op": "del_dimm", "idx": 1},
    {"op": "add_dimm", "idx": 2, "size_mib": 2048},
    {"op": "panic", "cpu": "last_online"},
)


class Ppc64ScenarioError(CrashHotplugError):
    """A plan step that cannot run (unknown op, missing field, no image)."""


@dataclass
class Ppc64Run:
    """One scenario on one guest."""

    platform: Pseries
    payload: Ppc64Payload
    hotplug: bool = True
    kexec: Kexec = field(init=False)
    arch: Ppc64 = field(init=False)
    hp: CrashHotplug = field(init=False)
    image: Kimage | None = None
    panics: list[Ppc64PanicResult] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    _dimm_seq: int = 1

    def __post_init__(self) -> None:
        self.kexec = Kexec(self.platform.machine)
        self.arch = Ppc64(self.platform)
        self.hp = CrashHotplug(self.kexec, DESIGNS["upstream"], arch=self.arch).crash_hotplug_init()

    @classmethod
    def from_snapshot(cls, root: Path, payload: Ppc64Payload, *, hotplug: bool = True,
                      cpus_nodes: list[OfNode] | None = None,
                      cpu_node_templates: Mapping[int, OfNode] | None = None) -> Ppc64Run:
        return cls(pseries_from_snapshot(root, cpus_nodes=cpus_nodes, cpu_node_templates=cpu_node_templates),
                   payload, hotplug)

    # -- what is in memory ------------------------------------------------------------------
    def _image(self) -> Kimage:
        if self.image is None:
            raise Ppc64ScenarioError("no crash image loaded (the plan needs a 'load' step first)")
        return self.image

    def header(self) -> bytes:
        """The elfcorehdr segment's first page as it is in memory now."""
        img = self._image()
        idx = kimage_find_elfcorehdr(img, self.platform.machine.mem)
        if idx < 0:
            raise Ppc64ScenarioError("no elfcorehdr in the crash image")
        return self.platform.machine.mem.read(img.segments[idx].mem, 4096)

    def fdt(self) -> bytes:
        """The crash kernel's FDT (``totalsize`` bytes) as it is in memory now."""
        img = self._image()
        m = self.platform.machine
        idx = get_fdt_index(img, m.mem)
        if idx < 0:
            raise Ppc64ScenarioError("no FDT segment in the crash image")
        seg = img.segments[idx]
        size = int.from_bytes(m.mem.read(seg.mem + 4, 4), "big")
        return m.mem.read(seg.mem, min(size, seg.memsz))

    # -- steps ------------------------------------------------------------------------------
    def apply(self, step: Mapping[str, Any]) -> None:
        op = step.get("op")
        try:
            if op == "load":
                self.image = kexec_tools_load_ppc64(self.kexec, self.platform, self.payload, hotplug=self.hotplug,
                                                    post_load=self.arch.machine_kexec_post_load)
            elif op == "add_dimm":
                idx = int(step["idx"]) if "idx" in step else self._dimm_seq
                self._dimm_seq = max(self._dimm_seq, idx + 1)
                self.platform.dlpar_memory_add(f"dimm{idx}", int(step["size_mib"]) * MIB)
            elif op == "del_dimm":
                self.platform.dlpar_memory_remove(f"dimm{int(step['idx'])}")
            elif op == "add_cpus":
                m = self.platform.machine
                absent = [c for c in m.cpus.possible if not m.cpus.cpu(c).present]
                n = int(step.get("n", 1))
                if n > len(absent):
                    raise Ppc64ScenarioError(f"add_cpus: {n} asked, only {len(absent)} possible CPUs absent")
                for cpu in absent[:n]:
                    self.platform.dlpar_cpu_add(cpu)
            elif op == "offline_cpu":
                self.platform.machine.cpu_offline(int(step["cpu"]))
            elif op == "online_cpu":
                self.platform.machine.cpu_online(int(step["cpu"]))
            elif op == "panic":
                online = self.platform.machine.cpus.online
                cpu = online[-1] if step.get("cpu", "last_online") == "last_online" else int(step["cpu"])
                self.panics.append(crash_kexec_ppc64(self.kexec, self.platform, cpu, pid=int(step.get("pid", 1))))
            else:
                raise Ppc64ScenarioError(f"unknown op {op!r} (load, add_dimm, del_dimm, add_cpus, offline_cpu, "
                                         "online_cpu, panic)")
        except (KeyError, ValueError, TypeError) as e:
            raise Ppc64ScenarioError(f"step {dict(step)}: bad or missing field ({e})") from None
        self.log.append(str(dict(step)))

    def run(self, steps: Iterable[Mapping[str, Any]]) -> Ppc64Run:
        for s in steps:
            self.apply(s)
        return self
