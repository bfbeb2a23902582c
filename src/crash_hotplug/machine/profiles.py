"""Kernel builds a model machine can run: where their image, per-CPU area and VMCOREINFO sit.

The numbers are the ones the real Debian kernels printed under QEMU ``pc`` with 2 GiB
(``shared/vectors``: ``proc/iomem``, ``proc/kallsyms``, ``cpuN/crash_notes``,
``/sys/kernel/vmcoreinfo``, the ``pcpu-alloc`` boot lines). Addresses of allocations are kept
relative to the landmark they sat near (the crashkernel base, the top of low RAM, or absolute
inside the kernel image) so a machine with another RAM size gets a plausible layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["PROFILES", "KernelProfile", "Placement", "profile_for"]

Anchor = Literal["abs", "crashk", "ram_top"]


@dataclass(frozen=True)
class Placement:
    """An address as ``anchor - offset`` (``crashk``: crashkernel base; ``ram_top``: end of the low
    System RAM range + 1) or an absolute address (``abs``: ``offset`` is the address)."""

    anchor: Anchor
    offset: int

    def resolve(self, crashk_base: int | None, ram_top: int) -> int:
        if self.anchor == "abs":
            return self.offset
        if self.anchor == "crashk" and crashk_base is not None:
            return crashk_base - self.offset
        return ram_top - self.offset


@dataclass(frozen=True)
class KernelProfile:
    """One kernel build: release, Kconfig facts, image layout and boot-time allocations."""

    key: str
    release: str
    banner: str
    crash_hotplug: bool
    nr_cpus: int
    #: physical start of the kernel image (``Kernel code``); ``_text`` is its virtual address
    text_paddr: int
    text_vaddr: int
    #: ``_etext - _text`` and ``_end - _text``
    etext: int
    end: int
    #: iomem children of the boot RAM: (name, start, end)
    image: tuple[tuple[str, int, int], ...]
    crash_notes_cpu0: Placement
    vmcoreinfo: Placement
    #: pcpu first chunk: static, reserved, dynamic sizes, unit size, atom size, pages per CPU
    pcpu: tuple[int, int, int, int, int, int]
    #: extra top-level iomem lines this build shows (after the fixed QEMU ones)
    iomem_extra: tuple[tuple[str, int, int], ...] = ()
    local_apic_in_iomem: bool = False


PROFILES: Final[dict[str, KernelProfile]] = {
    "6.12.43": KernelProfile(
        key="6.12.43",
        release="6.12.43+deb12-amd64",
        banner=("Linux version 6.12.43+deb12-amd64 (debian-kernel@lists.debian.org) (x86_64-linux-gnu-gcc-12 "
                "(Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP "
                "PREEMPT_DYNAMIC Debian 6.12.43-1~bpo12+1 (2025-09-06)"),
        crash_hotplug=True,
        nr_cpus=8192,
        text_paddr=0x1000000,
        text_vaddr=0xFFFFFFFF81000000,
        etext=0x1000000,
        end=0x2C30000,
        image=(("Kernel code", 0x1000000, 0x1FFFFFF), ("Kernel rodata", 0x2000000, 0x2B65FFF),
               ("Kernel data", 0x2C00000, 0x2E6D8BF), ("Kernel bss", 0x3724000, 0x3BFFFFF)),
        crash_notes_cpu0=Placement("crashk", 0x6F000000 - 0x6CC3D800),
        vmcoreinfo=Placement("crashk", 0x6F000000 - 0x6CCE8000),
        pcpu=(233472, 8192, 28672, 524288, 2097152, 66),
    ),
    "6.12": KernelProfile(
        key="6.12",
        release="6.12.117+deb13-amd64",
        banner=("Linux version 6.12.117+deb13-amd64 (debian-kernel@lists.debian.org) (x86_64-linux-gnu-gcc-14 "
                "(Debian 14.2.0-19) 14.2.0, GNU ld (GNU Binutils for Debian) 2.44) #1 SMP PREEMPT_DYNAMIC "
                "Debian 6.12.117-1 (2026-11-12)"),
        crash_hotplug=True,
        nr_cpus=8192,
        text_paddr=0x1000000,
        text_vaddr=0xFFFFFFFF81000000,
        etext=0x1000000,
        end=0x2C30000,
        image=(("Kernel code", 0x1000000, 0x1FFFFFF), ("Kernel rodata", 0x2000000, 0x2B8DFFF),
               ("Kernel data", 0x2C00000, 0x2E70D3F), ("Kernel bss", 0x373C000, 0x3BFFFFF)),
        crash_notes_cpu0=Placement("crashk", 0x6F000000 - 0x6CE3D800),
        vmcoreinfo=Placement("abs", 0x4214000),
        pcpu=(233472, 8192, 28672, 1048576, 2097152, 66),
    ),
    "6.1": KernelProfile(
        key="6.1",
        release="6.1.0-50-amd64",
        banner=("Linux version 6.1.0-50-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) "
                "12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 "
                "(2026-07-02)"),
        crash_hotplug=False,
        nr_cpus=8192,
        text_paddr=0x1000000,
        text_vaddr=0xFFFFFFFF81000000,
        etext=0xE01D32,
        end=0x3430000,
        image=(("Kernel code", 0x1000000, 0x1E01D31), ("Kernel rodata", 0x2000000, 0x28E6FFF),
               ("Kernel data", 0x2A00000, 0x2C489BF), ("Kernel bss", 0x330D000, 0x43FFFFF)),
        crash_notes_cpu0=Placement("ram_top", 0x7FFDF000 - 0x7F23A400),
        vmcoreinfo=Placement("abs", 0x4A00000),
        pcpu=(217088, 8192, 28672, 262144, 2097152, 62),
        local_apic_in_iomem=True,
    ),
}


def profile_for(kernel: str) -> KernelProfile:
    """The profile named ``kernel`` (``6.12.43``, ``6.12``, ``6.1``); ``KeyError`` lists the choices."""
    try:
        return PROFILES[kernel]
    except KeyError:
        raise KeyError(f"no kernel profile {kernel!r}; choose one of {', '.join(PROFILES)}") from None
