"""The generic crash hotplug handler (the ``CONFIG_CRASH_HOTPLUG`` part of ``kernel/crash_core.c``).

:class:`CrashHotplug` registers on the memory notifier chain and at a CPU hotplug state
(``crash_hotplug_init``), and for each event runs ``crash_handle_hotplug_event``: take the
serialising mutex, *try* the kexec lock (an event that finds it taken is logged and dropped),
check that a crash image with hotplug support is loaded, find the elfcorehdr segment, make the
crashkernel region writable, let the architecture update the image, mark the header updated,
protect the region again.

Two designs are selectable (:data:`DESIGNS`):

``upstream``
    Linux 6.6+ as merged: MEM_ONLINE/MEM_OFFLINE, ``CPUHP_BP_PREPARE_DYN``, the elfcorehdr left out
    of the purgatory digest so only it is rewritten, x86 skipping CPU events.
``rfc``
    The 2021 RFC v1 the seed describes: memory events at MEM_GOING_ONLINE/MEM_OFFLINE/
    MEM_CANCEL_ONLINE, CPU events at ``CPUHP_AP_ONLINE_DYN`` and acted on, the elfcorehdr part of
    the digest, so every rewrite re-digests the segments and patches purgatory.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from crash_hotplug.crash.arch import ArchCrashHotplug, Outcome
from crash_hotplug.crash.arch.x86_64 import X86_64
from crash_hotplug.kexec.kexec_core import Kexec
from crash_hotplug.kexec.kimage import (
    KEXEC_CRASH_HP_ADD_CPU,
    KEXEC_CRASH_HP_ADD_MEMORY,
    KEXEC_CRASH_HP_NONE,
    KEXEC_CRASH_HP_REMOVE_CPU,
    KEXEC_CRASH_HP_REMOVE_MEMORY,
    kimage_find_elfcorehdr,
)
from crash_hotplug.machine.cpu import CpuhpState
from crash_hotplug.machine.memory import (
    MEM_CANCEL_ONLINE,
    MEM_GOING_ONLINE,
    MEM_OFFLINE,
    MEM_ONLINE,
    MemoryNotify,
)
from crash_hotplug.machine.notifier import NOTIFY_OK

__all__ = [
    "DESIGNS",
    "KEXEC_CRASH_HP_INVALID_CPU",
    "RFC",
    "UPSTREAM",
    "CrashHotplug",
    "Design",
    "HotplugRecord",
    "Window",
]

KEXEC_CRASH_HP_INVALID_CPU = 0xFFFFFFFF
HP_ACTION_NAMES = {
    KEXEC_CRASH_HP_ADD_CPU: "add cpu",
    KEXEC_CRASH_HP_REMOVE_CPU: "remove cpu",
    KEXEC_CRASH_HP_ADD_MEMORY: "add memory",
    KEXEC_CRASH_HP_REMOVE_MEMORY: "remove memory",
}


@dataclass(frozen=True)
class Design:
    """How a crash hotplug design hooks into the kernel and what it rewrites."""

    name: str
    #: memory notifier action -> hp_action
    memory_actions: tuple[tuple[int, int], ...]
    cpuhp_state: CpuhpState
    updates_on_cpu_events: bool
    elfcorehdr_in_digest: bool


UPSTREAM = Design(
    "upstream",
    ((MEM_ONLINE, KEXEC_CRASH_HP_ADD_MEMORY), (MEM_OFFLINE, KEXEC_CRASH_HP_REMOVE_MEMORY)),
    CpuhpState.CPUHP_BP_PREPARE_DYN,
    updates_on_cpu_events=False,
    elfcorehdr_in_digest=False,
)
RFC = Design(
    "rfc",
    (
        (MEM_GOING_ONLINE, KEXEC_CRASH_HP_ADD_MEMORY),
        (MEM_OFFLINE, KEXEC_CRASH_HP_REMOVE_MEMORY),
        (MEM_CANCEL_ONLINE, KEXEC_CRASH_HP_REMOVE_MEMORY),
    ),
    CpuhpState.CPUHP_AP_ONLINE_DYN,
    updates_on_cpu_events=True,
    elfcorehdr_in_digest=True,
)
DESIGNS: dict[str, Design] = {d.name: d for d in (UPSTREAM, RFC)}


@dataclass(frozen=True)
class Window:
    """An interval of machine time in which a panic would find the kdump path blocked: the
    kexec lock held (``lock``) or the crash image hidden (``hidden``)."""

    start: float
    end: float
    kind: str


@dataclass(frozen=True)
class HotplugRecord:
    """One call of ``crash_handle_hotplug_event`` and what came of it."""

    seq: int
    hp_action: int
    cpu: int | None
    block: tuple[int, int] | None
    outcome: Outcome

    @property
    def action_name(self) -> str:
        return HP_ACTION_NAMES.get(self.hp_action, str(self.hp_action))


@dataclass
class CrashHotplug:
    """``crash_hotplug_init`` and ``crash_handle_hotplug_event`` for one machine's kexec state."""

    kexec: Kexec
    design: Design = UPSTREAM
    arch: ArchCrashHotplug = field(default_factory=X86_64)
    #: called before every write an update makes, with a name for the step (panic injection)
    on_step: Callable[[str], None] | None = None
    records: list[HotplugRecord] = field(default_factory=list)
    #: when the handler held the kexec lock or hid the image (machine time, from the step costs)
    windows: list[Window] = field(default_factory=list)
    #: machine time each regeneration landed
    updated_at: list[float] = field(default_factory=list)
    _mutex: threading.Lock = field(default_factory=threading.Lock)
    _registered: bool = False
    #: seconds into the current update: its bytes are written at its start, its parts laid out
    #: after it for the windows, and the mutex and the kexec lock stay held until it ends
    _elapsed: float = 0.0
    #: machine time the update in progress releases ``__crash_hotplug_lock`` (and the kexec lock)
    busy_until: float = 0.0
    #: events that found the mutex held and slept on it, and those waiting now
    waited: int = 0
    _waiters: deque[tuple[int, int, MemoryNotify | None]] = field(default_factory=deque)

    def spend(self, what: str, units: float = 1.0, window: str | None = None) -> None:
        """Account for a part of the update; ``window`` names what a panic would find meanwhile."""
        d = self.cost(what, units)
        if window is not None and d > 0:
            t = self.kexec.machine.clock.now + self._elapsed
            self.windows.append(Window(t, t + d, window))
        self._elapsed += d

    # -- registration ------------------------------------------------------------------------
    def crash_hotplug_init(self) -> CrashHotplug:
        """Register on the memory notifier chain (priority 0) and at the design's CPU hotplug
        state with ``cpuhp_setup_state_nocalls`` (not called for CPUs already up)."""
        if self._registered:
            return self
        machine = self.kexec.machine
        if not machine.config.crash_hotplug:
            return self
        machine.register_memory_notifier(self._crash_memhp_notifier, 0, "crash_memhp_nb")
        machine.cpuhp_setup_state_nocalls(int(self.design.cpuhp_state), "crash/cpuhp",
                                          self._crash_cpuhp_online, self._crash_cpuhp_offline)
        self._registered = True
        return self

    def _crash_memhp_notifier(self, action: int, arg: MemoryNotify) -> int:
        for mem_action, hp_action in self.design.memory_actions:
            if action == mem_action:
                self.crash_handle_hotplug_event(hp_action, KEXEC_CRASH_HP_INVALID_CPU, arg)
        return NOTIFY_OK

    def _crash_cpuhp_online(self, cpu: int) -> int:
        self.crash_handle_hotplug_event(KEXEC_CRASH_HP_ADD_CPU, cpu, None)
        return 0

    def _crash_cpuhp_offline(self, cpu: int) -> int:
        self.crash_handle_hotplug_event(KEXEC_CRASH_HP_REMOVE_CPU, cpu, None)
        return 0

    # -- the handler -------------------------------------------------------------------------
    def step(self, name: str) -> None:
        """A point in an update just before it writes something (a panic may strike here)."""
        if self.on_step is not None:
            self.on_step(name)

    def cost(self, what: str, units: float = 1.0) -> float:
        """Seconds a step of the update takes under the machine clock's costs."""
        return self.kexec.machine.clock.cost(what, units)

    def crash_handle_hotplug_event(self, hp_action: int, cpu: int, arg: MemoryNotify | None) -> Outcome:
        """``crash_handle_hotplug_event``: ``crash_hotplug_lock()`` (a mutex: an event that finds an
        update in progress sleeps until it ends), then the update under ``kexec_trylock``."""
        clock = self.kexec.machine.clock
        if clock.now < self.busy_until:
            self.waited += 1
            self._waiters.append((hp_action, cpu, arg))
            return Outcome.WAITING
        with self._mutex:
            self._elapsed = 0.0
            outcome = self._handle_locked(hp_action, cpu, arg)
        self._record(hp_action, cpu, arg, outcome)
        return outcome

    def notifier_returns_at(self) -> float:
        """When the notifier call in progress returns: the caller (a memory block's online or
        offline, a CPU's hotplug step) holds the device hotplug lock until then, so the next
        hotplug operation waits for it."""
        return self.busy_until

    def _release(self) -> None:
        """The update in progress ends: ``kexec_unlock``, ``crash_hotplug_unlock``; the next waiter runs."""
        self.kexec.kexec_unlock()
        self._wake()

    def _wake(self) -> None:
        clock = self.kexec.machine.clock
        while self._waiters and clock.now >= self.busy_until:
            self.crash_handle_hotplug_event(*self._waiters.popleft())

    def _record(self, hp_action: int, cpu: int, arg: MemoryNotify | None, outcome: Outcome) -> None:
        block = (arg.start, arg.end) if arg is not None else None
        self.records.append(HotplugRecord(len(self.records), hp_action,
                                          None if cpu == KEXEC_CRASH_HP_INVALID_CPU else cpu, block, outcome))

    def _handle_locked(self, hp_action: int, cpu: int, arg: MemoryNotify | None) -> Outcome:
        kexec = self.kexec
        machine = kexec.machine
        if not kexec.kexec_trylock():
            if not kexec.kexec_in_progress:
                machine.printk("crash hp: kexec_trylock() failed, kdump image may be inaccurate")
            return Outcome.LOCK_BUSY
        start = machine.clock.now
        updating = False
        try:
            image = kexec.kexec_crash_image
            if image is None:
                return Outcome.NO_IMAGE
            if not image.hotplug_support:
                return Outcome.NO_HOTPLUG_SUPPORT
            if hp_action in (KEXEC_CRASH_HP_ADD_CPU, KEXEC_CRASH_HP_REMOVE_CPU):
                machine.printk(f"crash hp: hp_action {hp_action}, cpu {cpu}")
            else:
                machine.printk(f"crash hp: hp_action {hp_action}")
            if image.elfcorehdr_index < 0:
                image.elfcorehdr_index = kimage_find_elfcorehdr(image, machine.mem)
            if image.elfcorehdr_index < 0:
                machine.printk("crash hp: unable to locate elfcorehdr segment")
                return Outcome.NO_ELFCOREHDR
            kexec.arch_kexec_unprotect_crashkres()
            image.hp_action = hp_action
            updating = True
            outcome = self.arch.arch_crash_handle_hotplug_event(self, image, arg)
            if outcome is Outcome.UPDATED:
                self.updated_at.append(start + self._elapsed)
            image.hp_action = KEXEC_CRASH_HP_NONE
            # Errors in the arch handler are not a reason to roll back state.
            image.elfcorehdr_updated = True
            kexec.arch_kexec_protect_crashkres()
            return outcome
        finally:
            if updating:
                self.spend("crash_hotplug_event")
            if self._elapsed > 0:
                # the update takes time on the clock: the lock (and the mutex) stay held until it ends
                self.windows.append(Window(start, start + self._elapsed, "lock"))
                self.busy_until = start + self._elapsed
                machine.clock.call_at(self.busy_until, self._release, "crash hotplug update ends")
            else:
                kexec.kexec_unlock()
                self._wake()

    def crash_check_hotplug_support(self) -> int:
        """``crash_check_hotplug_support``: what ``cpu/crash_hotplug`` and ``memory/crash_hotplug`` read."""
        with self._mutex:
            return self.kexec.crash_check_hotplug_support()

    # -- summaries ---------------------------------------------------------------------------
    def count(self, outcome: Outcome) -> int:
        return sum(1 for r in self.records if r.outcome is outcome)

    @property
    def regenerations(self) -> int:
        return self.count(Outcome.UPDATED)
