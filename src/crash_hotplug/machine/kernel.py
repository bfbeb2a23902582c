"""The running kernel as the crash code sees it: version, the Kconfig values that shape the
elfcorehdr, and the state ``crash_prepare_elf64_headers`` reads (CPU masks, ``crash_notes``,
VMCOREINFO, kernel text, the iomem tree, the crashkernel reservation).

Both a snapshot (:mod:`crash_hotplug.snapshot`) and the machine model produce a
:class:`KernelState`; the header builder takes nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self

from crash_hotplug.machine.resource import Resource

__all__ = ["KernelConfig", "KernelState", "KernelVersion"]

#: x86_64 direct-map base with 4-level paging and no KASLR (``__PAGE_OFFSET_BASE_L4``)
PAGE_OFFSET_L4 = 0xFFFF888000000000
#: x86_64 ``__START_KERNEL_map``
START_KERNEL_MAP = 0xFFFFFFFF80000000


@dataclass(frozen=True, order=True)
class KernelVersion:
    """``major.minor.patch`` of a kernel release string such as ``6.12.43+deb12-amd64``."""

    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, release: str) -> Self:
        m = re.match(r"\s*([0-9]+)\.([0-9]+)(?:\.([0-9]+))?", release)
        if not m:
            raise ValueError(f"not a kernel release: {release.strip()!r}")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


V6_6 = KernelVersion(6, 6)
V6_8 = KernelVersion(6, 8)


@dataclass(frozen=True)
class KernelConfig:
    """The kernel facts that change the header's layout or size.

    ``crash_hotplug`` is ``CONFIG_CRASH_HOTPLUG`` (6.6+, x86 default y); ``nr_cpus_default`` and
    ``crash_max_memory_ranges`` size the hotplug segment (``arch/x86/kernel/crash.c:
    crash_load_segments``).
    """

    version: KernelVersion
    crash_hotplug: bool
    memory_hotplug: bool = True
    nr_cpus_default: int = 8192
    crash_max_memory_ranges: int = 8192

    @classmethod
    def for_version(cls, version: KernelVersion, *, crash_hotplug: bool | None = None, **kw: int | bool) -> Self:
        hp = version >= V6_6 if crash_hotplug is None else crash_hotplug
        return cls(version, hp, **kw)  # type: ignore[arg-type]

    @property
    def header_lists_possible_cpus(self) -> bool:
        """6.6 switched ``crash_prepare_elf64_headers`` from present to possible CPUs."""
        return self.version >= V6_6

    @property
    def exclude_mem_range_rewritten(self) -> bool:
        """6.8 rewrote ``crash_exclude_mem_range`` (one pass, splits bounded by ``nr_ranges``)."""
        return self.version >= V6_8


@dataclass(frozen=True)
class KernelState:
    """What the crash code reads from the running kernel when it builds an elfcorehdr."""

    config: KernelConfig
    possible: tuple[int, ...]
    present: tuple[int, ...]
    online: tuple[int, ...]
    #: ``per_cpu_ptr_to_phys(per_cpu_ptr(crash_notes, cpu))`` for each CPU the header lists
    crash_notes: Mapping[int, int]
    crash_notes_size: int
    vmcoreinfo_paddr: int
    vmcoreinfo_size: int
    #: ``_text`` (virtual), ``__pa_symbol(_text)``, ``_end - _text``
    text_vaddr: int
    text_paddr: int
    text_size: int
    page_offset: int
    iomem: Resource
    crashk_res: tuple[int, int] | None
    crashk_low_res: tuple[int, int] | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def header_cpus(self) -> tuple[int, ...]:
        """CPUs that get a PT_NOTE: possible CPUs from 6.6, present ones before."""
        return self.possible if self.config.header_lists_possible_cpus else self.present
