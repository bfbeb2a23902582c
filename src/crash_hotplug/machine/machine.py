"""A whole x86_64 machine: CPUs, memory blocks and DIMMs, the iomem tree, memory bytes and the
kernel facts the crash code reads, built from a snapshot directory or from parameters.

:meth:`Machine.kernel_state` is the seam to the crash code: it yields the
:class:`~crash_hotplug.machine.kernel.KernelState` of the machine as it is now, exactly as
:func:`~crash_hotplug.snapshot.reader.read_kernel_state` would read it from a snapshot taken now.

The machine knows nothing of kexec; a kexec layer that wants sysfs to show its state registers
itself as :attr:`Machine.kexec` (see :class:`KexecStatus`).
"""

from __future__ import annotations

import bisect
import contextlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from operator import attrgetter, is_
from typing import Any, Final, Protocol

from crash_hotplug.elf.prstatus import CRASH_CORE_NOTE_BYTES
from crash_hotplug.elf.vmcoreinfo import VMCOREINFO_NOTE_SIZE, build_vmcoreinfo_note
from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.machine.clock import Clock
from crash_hotplug.machine.cpu import CpuHotplug, CpuhpCallback, CpuNotPossibleError
from crash_hotplug.machine.kernel import PAGE_OFFSET_L4, START_KERNEL_MAP, KernelConfig, KernelState, KernelVersion
from crash_hotplug.machine.kernel_data import KernelData, vmcoreinfo_template
from crash_hotplug.machine.memory import (
    MEM_OFFLINE,
    MEM_ONLINE,
    MEMORY_BLOCK_SIZE,
    Dimm,
    MemoryBlock,
    MemoryHotplug,
    MemoryNotify,
)
from crash_hotplug.machine.notifier import NOTIFY_OK, NotifierBlock
from crash_hotplug.machine.percpu import PcpuAllocInfo, parse_pcpu_alloc, place_per_cpu
from crash_hotplug.machine.physmem import PAGE_SIZE
from crash_hotplug.machine.profiles import KernelProfile, profile_for
from crash_hotplug.machine.protmem import GuardedPhysMem
from crash_hotplug.machine.resource import CRASH_KERNEL, SYSTEM_RAM, Resource, walk_system_ram_res
from crash_hotplug.machine.uevent import Uevent, UeventBus

#: a CPU's ``crash_notes`` address, read at C speed
_CRASH_NOTES = attrgetter("crash_notes")
#: a DIMM's start and size, read at C speed
_DIMM_SPAN = attrgetter("start", "size")

__all__ = [
    "GIB",
    "MIB",
    "KexecStatus",
    "Machine",
    "MachineError",
    "parse_crashkernel",
]

#: below every other memory notifier (``INT_MIN``)
_UEVENT_PRIORITY: Final = -(1 << 31)
MIB: Final = 1 << 20
GIB: Final = 1 << 30
#: x86 ``CRASH_ALIGN`` (16 MiB) and the 4 GiB limit of a plain ``crashkernel=X``
CRASH_ALIGN: Final = 16 * MIB
CRASH_ADDR_LOW_MAX: Final = 4 * GIB
CRASH_LOW_SIZE: Final = 256 * MIB
#: the ``mem_section`` root array: ``NR_SECTION_ROOTS`` (4096) pointers
_MEM_SECTION_ROOT_BYTES: Final = 4096 * 8
#: bytes QEMU ``pc`` keeps at the top of low RAM for firmware tables (e820 reserved)
QEMU_LOWMEM_RESERVED: Final = 0x21000


class MachineError(CrashHotplugError):
    """A machine that cannot be built as asked (bad parameters, no room for a reservation)."""


class KexecStatus(Protocol):
    """What sysfs shows of the kexec layer (``kernel/ksysfs.c``, ``crash_check_hotplug_support``)."""

    def kexec_loaded(self) -> bool: ...

    def kexec_crash_loaded(self) -> bool: ...

    def crash_check_hotplug_support(self) -> int: ...


def _size(text: str) -> int:
    """``memparse``: a number with an optional K/M/G/T suffix."""
    m = re.fullmatch(r"(0x[0-9a-fA-F]+|[0-9]+)([KMGTkmgt]?)", text.strip())
    if not m:
        raise MachineError(f"not a size: {text!r}")
    shift = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]
    return int(m.group(1), 0) << shift


def parse_crashkernel(spec: str) -> tuple[int, int | None, bool]:
    """``parse_crashkernel`` for ``X``, ``X@Y`` and ``X,high``: (size, fixed base or None, high)."""
    spec = spec.strip()
    if spec.endswith(",high"):
        return _size(spec[:-5]), None, True
    size, _, base = spec.partition("@")
    return _size(size), (_size(base) if base else None), False


@dataclass
class Machine:
    """An x86_64 machine as the kdump code sees it.

    The parts: :attr:`cpus` (``kernel/cpu.c``), :attr:`memory` (memory blocks, DIMMs and the
    memory notifier chain over :attr:`iomem`), :attr:`mem` (the bytes), and the kernel facts
    (:attr:`config`, kernel text, VMCOREINFO, per-CPU ``crash_notes``, ``crashk_res``).
    """

    config: KernelConfig
    release: str
    banner: str
    cmdline: str
    cpus: CpuHotplug
    memory: MemoryHotplug
    mem: GuardedPhysMem
    text_vaddr: int
    text_paddr: int
    #: ``_etext - _text`` and ``_end - _text``
    etext_size: int
    text_size: int
    vmcoreinfo_paddr: int
    vmcoreinfo_size: int
    page_offset: int = PAGE_OFFSET_L4
    crash_notes_size: int = CRASH_CORE_NOTE_BYTES
    crashk_res: tuple[int, int] | None = None
    crashk_low_res: tuple[int, int] | None = None
    pcpu: PcpuAllocInfo | None = None
    #: QEMU's device-memory region for pc-dimms: ``[dimm_base, dimm_limit)``, and its slot count
    dimm_base: int = 4 * GIB
    dimm_limit: int = 1 << 64
    dimm_slots: int = 256
    profile: str | None = None
    vmcoreinfo_items: dict[str, str] = field(default_factory=dict)
    #: kernel log lines, busybox ``dmesg`` style
    log: list[str] = field(default_factory=list)
    kexec: KexecStatus | None = None
    clock: Clock = field(default_factory=Clock)
    #: the kernel structures a dump tool reads (``init_uts_ns``, page tables, ``mem_section``);
    #: modelled for machines of a known kernel profile
    kdata: KernelData | None = None
    #: booted with ``memory_hotplug.memmap_on_memory=1`` (hot-added blocks carry their own memmap)
    memmap_on_memory: bool = False
    _boot_cache: tuple[object, tuple[tuple[int, int], ...], tuple[int, ...],
                       Mapping[int, int]] | None = field(default=None, repr=False, compare=False)
    uevents: UeventBus = field(default_factory=UeventBus)
    #: the CPU that panicked, once the panic path has run
    panic_cpu: int | None = None
    _clock_us: int = field(default=0, init=False, repr=False)
    #: see :meth:`_dimm_layout`
    _dimm_cache: tuple[tuple[Dimm, ...], list[tuple[int, int]], int, int] | None = field(
        default=None, init=False, repr=False, compare=False)
    #: the last :meth:`kernel_state` view of the live tree, with the objects it was made of
    _live_state: tuple[tuple[object, ...], KernelState] | None = field(
        default=None, init=False, repr=False, compare=False)
    _dimm_seq: int = field(default=1, init=False, repr=False)

    def __post_init__(self) -> None:
        # memory blocks send their uevent after the whole notifier chain ran: lowest priority
        self.memory.register_memory_notifier(self._memory_uevent, _UEVENT_PRIORITY, "memory uevent")

    def _memory_uevent(self, action: int, arg: MemoryNotify) -> int:
        """``memory_block_change_state``'s ``kobject_uevent`` once the chain ran (see :meth:`uevent`)."""
        if action in (MEM_ONLINE, MEM_OFFLINE):
            block = arg.start_pfn * PAGE_SIZE // self.memory.block_size
            self.uevents.send(Uevent("online" if action == MEM_ONLINE else "offline", "memory", f"memory{block}",
                                     self.clock.now))
        return NOTIFY_OK

    def uevent(self, action: str, subsystem: str, kernel: str) -> None:
        """``kobject_uevent``: tell udev (and anyone else listening)."""
        self.uevents.send(Uevent(action, subsystem, kernel, self.clock.now))

    # -- views -------------------------------------------------------------------------------
    @property
    def iomem(self) -> Resource:
        """The iomem resource tree (shared with :attr:`memory`)."""
        return self.memory.iomem

    @property
    def seed(self) -> int:
        return self.mem.seed

    @property
    def block_size(self) -> int:
        return self.memory.block_size

    def crash_notes(self) -> dict[int, int]:
        """``per_cpu_ptr_to_phys(per_cpu_ptr(crash_notes, cpu))`` for every possible CPU."""
        return {c: s.crash_notes for c, s in self.cpus.cpus.items()}

    def _boot_layout(self) -> tuple[tuple[int, ...], Mapping[int, int]]:
        """Possible CPUs and their ``crash_notes`` addresses: fixed from boot, so handed out as the
        same objects every time (the header builder reuses its packed CPU notes for them). Looked
        at again only when a CPU changed (:meth:`CpuHotplug.state_key`)."""
        cache = self._boot_cache
        state = self.cpus.state_key()
        if cache is not None and cache[0] is state:
            return cache[2], cache[3]
        cpus = self.cpus.cpus
        key = tuple(zip(cpus, map(_CRASH_NOTES, cpus.values()), strict=True))
        if cache is None or cache[1] != key:
            self._boot_cache = (state, key, self.cpus.possible, dict(key))
        else:
            # a CPU changed, but not the layout: the same objects as before
            self._boot_cache = (state, *cache[1:])
        return self._boot_cache[2], self._boot_cache[3]

    def kernel_state(self, *, snapshot: bool = True) -> KernelState:
        """The :class:`KernelState` of the machine now (what the header builder reads).

        ``snapshot=False`` shares the live iomem tree instead of copying it: for a caller that
        builds the header at once (the per-event hotplug path) and keeps nothing. Such a view is
        handed out again, the same object, while every value it holds is the same object as
        before (a storm asks for it several times per block event).
        """
        possible, notes = self._boot_layout()
        present, online = self.cpus.present, self.cpus.online
        if not snapshot:
            key = (possible, notes, present, online, self.iomem, self.config, self.crashk_res, self.crashk_low_res,
                   self.crash_notes_size, self.vmcoreinfo_paddr, self.vmcoreinfo_size, self.text_vaddr,
                   self.text_paddr, self.text_size, self.page_offset)
            cached = self._live_state
            if cached is not None and all(map(is_, key, cached[0])):
                return cached[1]
        state = KernelState(
            config=self.config,
            possible=possible,
            present=present,
            online=online,
            crash_notes=notes,
            crash_notes_size=self.crash_notes_size,
            vmcoreinfo_paddr=self.vmcoreinfo_paddr,
            vmcoreinfo_size=self.vmcoreinfo_size,
            text_vaddr=self.text_vaddr,
            text_paddr=self.text_paddr,
            text_size=self.text_size,
            page_offset=self.page_offset,
            iomem=self.iomem.copy() if snapshot else self.iomem,
            crashk_res=self.crashk_res,
            crashk_low_res=self.crashk_low_res,
        )
        if not snapshot:
            self._live_state = (key, state)
        return state

    def system_ram(self) -> list[tuple[int, int]]:
        """Inclusive ``System RAM`` ranges (``walk_system_ram_res``)."""
        return list(walk_system_ram_res(self.iomem))

    @property
    def clock_us(self) -> int:
        """The machine's clock (microseconds since boot), as its log stamps it."""
        return self._clock_us

    def dmesg(self) -> str:
        return "".join(line + "\n" for line in self.log)

    def printk(self, msg: str, *, advance_us: int = 100) -> None:
        """Append a kernel log line stamped with the machine's clock (never behind :attr:`clock`)."""
        us = self._clock_us + advance_us
        now_us = int(self.clock.now * 1e6)
        self._clock_us = us = us if us >= now_us else now_us
        s, us = divmod(us, 1_000_000)
        self.log.append(f"[{s:5d}.{us:06d}] {msg}")

    # -- boot-time memory contents -----------------------------------------------------------
    def _init_memory_contents(self) -> None:
        """Zeroed ``crash_notes`` for every possible CPU (percpu memory starts zeroed) and the
        VMCOREINFO note at its address (``crash_notes_memory_init``, ``crash_save_vmcoreinfo_init``)."""
        for s in self.cpus.cpus.values():
            if s.crash_notes:
                self.mem.zero(s.crash_notes, self.crash_notes_size)
        phys_base = self.text_paddr - (self.text_vaddr - START_KERNEL_MAP)
        if self.profile is not None:
            self._init_kernel_data(phys_base)
        if not self.vmcoreinfo_items:
            self.vmcoreinfo_items = {
                "OSRELEASE": self.release,
                "PAGESIZE": "4096",
                "SYMBOL(_stext)": f"{self.text_vaddr:x}",
                "NUMBER(phys_base)": str(phys_base),
                "KERNELOFFSET": "0",
                "NUMBER(pgtable_l5_enabled)": "0",
            }
        note = build_vmcoreinfo_note(self.vmcoreinfo_items)
        self.mem.write(self.vmcoreinfo_paddr, note.ljust(VMCOREINFO_NOTE_SIZE, b"\0"))

    def _init_kernel_data(self, phys_base: int) -> None:
        """The profile's VMCOREINFO (filled for this machine) and the kernel structures it points
        at (``crash_save_vmcoreinfo_init``, ``start_kernel``); hot-added DIMMs as ``add_memory`` left them."""
        assert self.profile is not None
        prof = profile_for(self.profile)
        if "SYMBOL(mem_section)" in self.vmcoreinfo_items:
            mem_section = int(self.vmcoreinfo_items["SYMBOL(mem_section)"], 16) - self.page_offset
        else:
            # sparse_init's memblock_alloc: top-down, from the end of the highest boot RAM
            boot_top = max(e for s, e in self.system_ram()
                           if not any(d.start <= s <= d.end for d in self.memory.dimms.values())) + 1
            mem_section = boot_top - _MEM_SECTION_ROOT_BYTES
            values = {"mem_section": f"{self.page_offset + mem_section:x}", "phys_base": str(phys_base),
                      "kerneloffset": f"{self.text_vaddr - prof.text_vaddr:x}"}
            self.vmcoreinfo_items = {k: v.format(**values) for k, v in vmcoreinfo_template(prof.key)}
        bss_end = max(e for n, _, e in prof.image if n == "Kernel bss") + 1
        self.kdata = KernelData(self.mem, self.vmcoreinfo_items, phys_base, self.page_offset,
                                (bss_end, self.text_paddr + self.text_size), mem_section)
        version = re.search(r"#[0-9]+ .*$", self.banner)
        dimms = [(d.start, d.end) for d in self.memory.dimms.values()]
        online = [self.memory.block_range(i) for i in self.memory.online_blocks]
        reserved = [(self.text_paddr, self.text_paddr + self.text_size - 1),
                    (self.vmcoreinfo_paddr, self.vmcoreinfo_paddr + self.vmcoreinfo_size - 1)]
        reserved += [r for r in (self.crashk_res, self.crashk_low_res) if r is not None]
        reserved += [(a, a + self.crash_notes_size - 1) for a in self.crash_notes().values() if a]
        self.kdata.boot(self.release, version.group(0) if version else "#1 SMP", self.system_ram(),
                        self.text_paddr + self.text_size, hot_added=dimms, online=online, reserved=reserved)
        if self.memmap_on_memory:
            self.kdata.memmap_on_memory = self.memory.block_size
        self.memory.arch = self.kdata

    def crash_save_vmcoreinfo(self, crashtime: int) -> None:
        """``crash_save_vmcoreinfo`` at panic: the note gains ``CRASHTIME=<seconds>`` and is rewritten."""
        self.vmcoreinfo_items["CRASHTIME"] = str(crashtime)
        note = build_vmcoreinfo_note(self.vmcoreinfo_items)
        self.mem.write(self.vmcoreinfo_paddr, note.ljust(VMCOREINFO_NOTE_SIZE, b"\0"))

    def vmcoreinfo_note(self) -> bytes:
        """The VMCOREINFO note bytes (``vmcoreinfo_size`` of them) as they are in memory now."""
        return self.mem.read(self.vmcoreinfo_paddr, self.vmcoreinfo_size)

    # -- CPU hotplug -------------------------------------------------------------------------
    def cpuhp_setup_state_nocalls(self, state: int, name: str, startup: CpuhpCallback | None,
                                  teardown: CpuhpCallback | None) -> int:
        """``cpuhp_setup_state_nocalls`` (see :meth:`CpuHotplug.cpuhp_setup_state_nocalls`)."""
        return self.cpus.cpuhp_setup_state_nocalls(state, name, startup, teardown)

    def cpu_hot_add(self, cpu: int) -> None:
        """ACPI vCPU hot-add (QMP ``device_add``): the CPU becomes present, still offline."""
        try:
            self.cpus.cpu_hot_add(cpu)
        except CpuNotPossibleError:
            self.printk("ACPI: Unable to map lapic to logical cpu number")
            raise
        self.printk(f"ACPI: CPU{cpu} has been hot-added")
        self.uevent("add", "cpu", f"cpu{cpu}")

    def cpu_online(self, cpu: int) -> None:
        """``echo 1 > cpuN/online``"""
        was = self.cpus.cpu(cpu).online
        self.cpus.cpu_up(cpu)
        if not was:
            self.printk(f"smpboot: Booting Node 0 Processor {cpu} APIC {cpu:#x}")
            self.uevent("online", "cpu", f"cpu{cpu}")

    def cpu_offline(self, cpu: int) -> None:
        """``echo 0 > cpuN/online``"""
        was = self.cpus.cpu(cpu).online
        self.cpus.cpu_down(cpu)
        if was:
            self.printk(f"smpboot: CPU {cpu} is now offline")
            self.uevent("offline", "cpu", f"cpu{cpu}")

    def cpu_hot_remove(self, cpu: int) -> None:
        """ACPI vCPU eject of an offline CPU: it leaves ``cpu_present_mask``; its ``crash_notes``
        buffer stays (per-CPU memory of possible CPUs is never freed)."""
        self.cpus.cpu_hot_remove(cpu)
        self.uevent("remove", "cpu", f"cpu{cpu}")

    def cpu_eject(self, cpu: int) -> None:
        """QMP ``device_del`` of a vCPU: ACPI offlines it first (``acpi_scan_try_to_offline``), then
        removes it; refused for the boot CPU and the last online CPU."""
        self.cpu_offline(cpu)
        self.cpu_hot_remove(cpu)

    # -- memory hotplug ----------------------------------------------------------------------
    def register_memory_notifier(self, call: Callable[[int, MemoryNotify], int], priority: int = 0,
                                 name: str = "") -> NotifierBlock[MemoryNotify]:
        """``register_memory_notifier``"""
        return self.memory.register_memory_notifier(call, priority, name)

    def next_dimm_address(self, size: int) -> int:
        """First address from :attr:`dimm_base` where ``size`` bytes fit between present DIMMs
        (QEMU's first fit in the device-memory region, block aligned)."""
        spans, packed, addr = self._dimm_layout()
        if size <= 0:
            packed, addr = 0, self.dimm_base
        for start, dimm_size in islice(spans, packed, None):
            if addr + size <= start:
                break
            if start + dimm_size > addr:
                addr = start + dimm_size
        return -(-addr // self.block_size) * self.block_size

    def _dimm_layout(self) -> tuple[list[tuple[int, int]], int, int]:
        """The present DIMMs' ``(start, size)`` in address order, how many of the first of them
        leave no hole from :attr:`dimm_base` on, and where that run ends: kept from one call to
        the next while DIMMs are only added (a storm's first fit then looks at no DIMM at all)."""
        dimms = tuple(self.memory.dimms.values())
        cache = self._dimm_cache
        if cache is not None and len(cache[0]) <= len(dimms) and all(map(is_, cache[0], dimms)):
            _, spans, packed, addr = cache
            for d in dimms[len(cache[0]):]:
                i = bisect.bisect_left(spans, (d.start, d.size))
                spans.insert(i, (d.start, d.size))
                if i < packed:
                    packed, addr = 0, self.dimm_base
        else:
            spans, packed, addr = sorted(map(_DIMM_SPAN, dimms)), 0, self.dimm_base
        while packed < len(spans) and spans[packed][0] <= addr:
            start, dimm_size = spans[packed]
            if start + dimm_size > addr:
                addr = start + dimm_size
            packed += 1
        self._dimm_cache = (dimms, spans, packed, addr)
        return spans, packed, addr

    def add_dimm(self, size: int, *, name: str | None = None, start: int | None = None,
                 online: str | None = None) -> Dimm:
        """Hot-add a pc-dimm of ``size`` bytes (``add_memory``), auto-onlined per ``auto_online_blocks``
        unless ``online`` names another policy."""
        if name is None:
            while f"dimm{self._dimm_seq}" in self.memory.dimms:
                self._dimm_seq += 1
            name = f"dimm{self._dimm_seq}"
            self._dimm_seq += 1
        addr = self.next_dimm_address(size) if start is None else start
        if len(self.memory.dimms) >= self.dimm_slots:
            raise MachineError(f"{name}: all {self.dimm_slots} DIMM slots are in use")
        if addr + size > self.dimm_limit:
            raise MachineError(f"{name}: {size >> 20} MiB at {addr:#x} exceeds maxmem (device memory ends at "
                               f"{self.dimm_limit:#x})")
        dimm = self.memory.add_memory(name, addr, size, online=online)
        self.printk(f"acpi PNP0C80:{len(self.memory.dimms) - 1:02x}: {name} [mem {addr:#010x}-{dimm.end:#010x}]")
        return dimm

    def remove_dimm(self, name: str) -> Dimm:
        """ACPI eject of a DIMM (QMP ``device_del``): offline every block, then remove it."""
        return self.memory.remove_memory(name)

    def memory_block_online(self, index: int, zone: str = "Movable") -> None:
        """``echo online > memoryN/state``"""
        self.memory.online_pages(index, zone)

    def memory_block_offline(self, index: int) -> None:
        """``echo offline > memoryN/state``"""
        self.memory.offline_pages(index)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def new(cls, *, mem_gib: float = 2, cpus: int = 2, possible: int = 8, crashkernel: str | None = "256M",
            kernel: str = "6.12.43", seed: int = 0, block_size: int = MEMORY_BLOCK_SIZE,
            auto_online_blocks: str = "online_movable", maxmem_gib: int = 16, slots: int = 8,
            memmap_on_memory: bool = False) -> Machine:
        """A QEMU ``pc``-like machine: ``-m {mem_gib}G,slots={slots},maxmem={maxmem_gib}G -smp
        {cpus},maxcpus={possible}``, booted with ``crashkernel=... nokaslr memhp_default_state=...``
        (and ``memory_hotplug.memmap_on_memory=1`` with ``memmap_on_memory``) on the kernel build
        ``kernel`` (``6.12.43``, ``6.12``, ``6.1``)."""
        prof = profile_for(kernel)
        if not 1 <= cpus <= possible:
            raise MachineError(f"need 1 <= cpus ({cpus}) <= possible ({possible})")
        ram = int(mem_gib * GIB)
        if ram < 256 * MIB or ram % block_size:
            raise MachineError(f"RAM of {ram:#x} bytes must be at least 256 MiB and a multiple of the block size")
        if maxmem_gib * GIB < ram:
            raise MachineError(f"maxmem {maxmem_gib} GiB is below the RAM size")
        below = ram if ram < 0xE0000000 else 0xC0000000
        above = ram - below
        low_end = below - QEMU_LOWMEM_RESERVED - 1
        dimm_base = 4 * GIB + -(-above // GIB) * GIB
        # QEMU sizes device memory as maxmem - ram plus 1 GiB per slot for alignment; the 64-bit
        # PCI hole (2 GiB) follows it
        dimm_limit = dimm_base + maxmem_gib * GIB - ram + slots * GIB
        iomem = _qemu_pc_iomem(prof, low_end, below, above, dimm_limit)
        version = KernelVersion.parse(prof.release)
        config = KernelConfig(version, prof.crash_hotplug, True, prof.nr_cpus, 8192)
        mem = GuardedPhysMem(seed)
        memory = MemoryHotplug(iomem, mem, block_size, auto_online_blocks)
        crashk: tuple[int, int] | None = None
        crashk_low: tuple[int, int] | None = None
        log_lines: list[str] = []
        if crashkernel:
            crashk, crashk_low = _reserve_crashkernel(iomem, crashkernel, prof)
            size = crashk[1] - crashk[0] + 1
            if version >= KernelVersion(6, 7):
                log_lines.append(f"crashkernel reserved: {crashk[0]:#018x} - {crashk[1] + 1:#018x} ({size >> 20} MB)")
            else:
                log_lines.append(f"Reserving {size >> 20}MB of memory at {crashk[0] >> 20}MB for crashkernel "
                                 f"(System RAM: {(ram - 1) >> 20}MB)")
            for region in (crashk_low, crashk):
                if region is not None:
                    iomem.insert(Resource(region[0], region[1], CRASH_KERNEL))
        ram_top = low_end + 1
        anchor = crashk_low[0] if crashk_low else crashk[0] if crashk else None
        cpu0_notes = prof.crash_notes_cpu0.resolve(anchor, ram_top)
        s, r, d, u, atom, pages = prof.pcpu
        notes = {c: cpu0_notes + c * u for c in range(possible)}
        hp = CpuHotplug.boot(range(possible), range(cpus), range(cpus), notes, nr_cpus=prof.nr_cpus)
        pcpu_lines = [
            f"setup_percpu: NR_CPUS:{prof.nr_cpus} nr_cpumask_bits:{possible} nr_cpu_ids:{possible} nr_node_ids:1",
            f"percpu: Embedded {pages} pages/cpu s{s} r{r} d{d} u{u}",
            f"pcpu-alloc: s{s} r{r} d{d} u{u} alloc=1*{atom}",
            "pcpu-alloc: [0] " + " ".join(str(c) for c in range(possible)) + " ",
        ]
        cmdline = (f"console=ttyS0{f' crashkernel={crashkernel}' if crashkernel else ''} nokaslr "
                   f"memhp_default_state={auto_online_blocks}"
                   f"{' memory_hotplug.memmap_on_memory=1' if memmap_on_memory else ''} panic=0 loglevel=7")
        m = cls(
            config=config, release=prof.release, banner=prof.banner, cmdline=cmdline, cpus=hp, memory=memory,
            mem=mem, text_vaddr=prof.text_vaddr, text_paddr=prof.text_paddr, etext_size=prof.etext,
            text_size=prof.end, vmcoreinfo_paddr=prof.vmcoreinfo.resolve(anchor, ram_top),
            vmcoreinfo_size=VMCOREINFO_NOTE_SIZE, crashk_res=crashk, crashk_low_res=crashk_low,
            pcpu=parse_pcpu_alloc("\n".join(pcpu_lines)),
            dimm_base=dimm_base, dimm_limit=dimm_limit, dimm_slots=slots, profile=prof.key,
            memmap_on_memory=memmap_on_memory,
        )
        m.printk(prof.banner)
        m.printk(f"Command line: {cmdline}")
        for line in log_lines:
            m.printk(line)
        m.printk(f"CPU topo: Allowing {cpus} present CPUs plus {possible - cpus} hotplug CPUs")
        for line in pcpu_lines:
            m.printk(line)
        _boot_blocks(memory)
        m._init_memory_contents()
        return m

    @classmethod
    def restore(cls, state: KernelState, *, model: Mapping[str, Any], dmesg: str, release: str, cmdline: str,
                cpu0_hotpluggable: bool, block_size: int, policy: str, blocks: Mapping[int, tuple[bool, str]],
                syms: Mapping[str, int]) -> Machine:
        """The machine a snapshot describes, from what :func:`crash_hotplug.snapshot.model.machine_from_snapshot`
        read: the kernel state, ``machine.json`` (``model``, may be empty), the boot log, the memory
        blocks (index -> (online, zone)) and the kallsyms values. Without recorded DIMMs, each
        top-level ``System RAM`` range at or above 4 GiB whose blocks are all ``Movable`` or offline
        is taken to be a DIMM.
        """
        pcpu = parse_pcpu_alloc(dmesg) if dmesg else None
        notes = {int(k): int(v) for k, v in model.get("crash_notes", {}).items()} or dict(state.crash_notes)
        missing = [c for c in state.possible if c not in notes]
        if missing and pcpu is not None:
            with contextlib.suppress(ValueError):
                notes = place_per_cpu(pcpu, notes, list(state.possible))
        hp = CpuHotplug.boot(state.possible, state.present, state.online, notes,
                             nr_cpus=state.config.nr_cpus_default)
        hp.cpu0_hotpluggable = cpu0_hotpluggable
        for key, cpu_model in model.get("cpus", {}).items():
            c = hp.cpus.get(int(key))
            if c is not None:
                c.counter = int(cpu_model.get("counter", 0))
                c.pid_override = cpu_model.get("pid_override")
        mem = GuardedPhysMem(int(model.get("memory_pattern_seed", 0)))
        iomem = state.iomem.copy()
        memory = MemoryHotplug(iomem, mem, block_size, policy)
        for index, (online, zone) in blocks.items():
            memory.blocks[index] = MemoryBlock(index, online, zone)
        _find_dimms(memory, model.get("dimms"))
        banner = next((line.split("] ", 1)[-1] for line in dmesg.splitlines() if "Linux version" in line), "")
        crash = sorted((r.start, r.end) for r in iomem.find(CRASH_KERNEL))
        m = cls(
            config=state.config,
            release=release,
            banner=banner,
            cmdline=cmdline,
            cpus=hp, memory=memory, mem=mem,
            text_vaddr=state.text_vaddr, text_paddr=state.text_paddr,
            etext_size=syms.get("_etext", state.text_vaddr + state.text_size) - state.text_vaddr,
            text_size=state.text_size,
            vmcoreinfo_paddr=state.vmcoreinfo_paddr, vmcoreinfo_size=state.vmcoreinfo_size,
            page_offset=state.page_offset, crash_notes_size=state.crash_notes_size,
            crashk_res=state.crashk_res, crashk_low_res=state.crashk_low_res if len(crash) > 1 else None,
            pcpu=pcpu, dimm_base=int(model.get("dimm_base", 4 * GIB)),
            dimm_limit=int(model.get("dimm_limit", 1 << 64)), dimm_slots=int(model.get("dimm_slots", 256)),
            profile=model.get("kernel_profile"),
            vmcoreinfo_items={str(k): str(v) for k, v in model.get("vmcoreinfo", {}).items()},
            log=dmesg.splitlines(),
            panic_cpu=model.get("panic_cpu"),
        )
        m._clock_us = _last_stamp_us(m.log)
        m._init_memory_contents()
        return m


# -- helpers ---------------------------------------------------------------------------------

def _qemu_pc_iomem(prof: KernelProfile, low_end: int, below: int, above: int, pci64: int) -> Resource:
    root = Resource(0, (1 << 64) - 1, "PCI mem")
    entries: list[tuple[int, int, str]] = [
        (0x0, 0xFFF, "Reserved"),
        (0x1000, 0x9FBFF, SYSTEM_RAM),
        (0x9FC00, 0x9FFFF, "Reserved"),
        (0xA0000, 0xBFFFF, "PCI Bus 0000:00"),
        (0xC0000, 0xC05FF, "Video ROM"),
        (0xF0000, 0xFFFFF, "Reserved"),
        (0xF0000, 0xFFFFF, "System ROM"),
        (0x100000, low_end, SYSTEM_RAM),
        (low_end + 1, below - 1, "Reserved"),
        (below, 0xFEBFFFFF, "PCI Bus 0000:00"),
        (0xFEC00000, 0xFEC003FF, "IOAPIC 0"),
        (0xFED00000, 0xFED003FF, "HPET 0"),
        (0xFED00000, 0xFED003FF, "PNP0103:00"),
    ]
    if prof.local_apic_in_iomem:
        entries.append((0xFEE00000, 0xFEE00FFF, "Local APIC"))
    entries.append((0xFFFC0000, 0xFFFFFFFF, "Reserved"))
    if above:
        entries.append((4 * GIB, 4 * GIB + above - 1, SYSTEM_RAM))
    entries += [(pci64, pci64 + 2 * GIB - 1, "PCI Bus 0000:00"), (0xFD00000000, 0xFFFFFFFFFF, "Reserved")]
    entries += [(s, e, n) for n, s, e in prof.iomem_extra]
    for name, s, e in prof.image:
        entries.append((s, e, name))
    for s, e, n in entries:
        # nested duplicates (System ROM in Reserved, PNP0103 in HPET) go under their twin
        twin = next((r for r in root.children if (r.start, r.end) == (s, e)), None)
        if twin is not None:
            twin.children.append(Resource(s, e, n))
        else:
            root.insert(Resource(s, e, n))
    return root


def _highest_slot(iomem: Resource, size: int, lo: int, hi: int, floor: int) -> int | None:
    """Top of the highest System RAM range in ``[lo, hi)`` with a ``CRASH_ALIGN``-aligned hole of ``size``."""
    for start, end in sorted(walk_system_ram_res(iomem), key=lambda r: r[1], reverse=True):
        top = min(end + 1, hi)
        cand = (top - size) // CRASH_ALIGN * CRASH_ALIGN
        if top > lo and cand >= max(start, lo, floor):
            return cand
    return None


Range = tuple[int, int]


def _reserve_crashkernel(iomem: Resource, spec: str, prof: KernelProfile) -> tuple[Range, Range | None]:
    """``reserve_crashkernel`` on x86: (crashk_res, crashk_low_res). A fixed base; or the highest
    ``CRASH_ALIGN``-aligned free range below 4 GiB (memblock allocates top-down); or, for ``,high``,
    above 4 GiB plus a 256 MiB ``crashk_low_res`` below 4 GiB (``DEFAULT_CRASH_KERNEL_LOW_SIZE``)."""
    size, base, high = parse_crashkernel(spec)
    if base is not None:
        return (base, base + size - 1), None
    floor = max(e for _, _, e in prof.image) + 1
    if high:
        cand = _highest_slot(iomem, size, CRASH_ADDR_LOW_MAX, 1 << 64, floor)
        low = _highest_slot(iomem, CRASH_LOW_SIZE, 0, CRASH_ADDR_LOW_MAX, floor)
        if cand is not None and low is not None:
            return (cand, cand + size - 1), (low, low + CRASH_LOW_SIZE - 1)
    else:
        cand = _highest_slot(iomem, size, 0, CRASH_ADDR_LOW_MAX, floor)
        if cand is not None:
            return (cand, cand + size - 1), None
    raise MachineError(f"crashkernel={spec}: no {size >> 20} MiB {CRASH_ALIGN >> 20} MiB-aligned free range")


def _zone_of_boot_block(start: int) -> str:
    if start < 16 * MIB:
        return "none"
    return "DMA32" if start < 4 * GIB else "Normal"


def _boot_blocks(memory: MemoryHotplug) -> None:
    """A memory block for every block-size chunk that holds boot System RAM, online."""
    bs = memory.block_size
    for start, end in walk_system_ram_res(memory.iomem):
        for i in range(start // bs, end // bs + 1):
            memory.blocks.setdefault(i, MemoryBlock(i, True, _zone_of_boot_block(i * bs)))


def _find_dimms(memory: MemoryHotplug, recorded: list[dict[str, int | str]] | None) -> None:
    found: list[Dimm] = []
    if recorded is not None:
        found = [Dimm(str(d["name"]), int(d["start"]), int(d["size"])) for d in recorded]
    else:
        bs = memory.block_size
        for r in memory.iomem.children:
            if not r.is_system_ram or r.start < 4 * GIB or r.start % bs or r.size % bs:
                continue
            idx = range(r.start // bs, (r.end + 1) // bs)
            blocks = [memory.blocks.get(i) for i in idx]
            if all(b is not None and (not b.online or b.zone == "Movable") for b in blocks):
                found.append(Dimm(f"dimm{len(found) + 1}", r.start, r.size))
    bs = memory.block_size
    for d in found:
        memory.dimms[d.name] = d
        for i in range(d.start // bs, (d.end + 1) // bs):
            b = memory.blocks.get(i)
            if b is not None:
                b.dimm = d.name


def _last_stamp_us(lines: list[str]) -> int:
    for line in reversed(lines):
        m = re.match(r"\[\s*([0-9]+)\.([0-9]{6})\]", line)
        if m:
            return int(m.group(1)) * 1_000_000 + int(m.group(2))
    return 0
