"""CPU hotplug (``kernel/cpu.c``, ``include/linux/cpuhotplug.h``, ``drivers/base/cpu.c``).

CPUs move between the possible, present and online masks. Hot-add makes a possible CPU present
(``acpi_map_cpu`` + ``arch_register_cpu``); ``cpu_up`` walks it through the hotplug states to
``CPUHP_ONLINE``; ``cpu_down`` walks it back to ``CPUHP_OFFLINE``; hot-remove makes an offline CPU
absent again. Callbacks registered at a state with :meth:`CpuHotplug.cpuhp_setup_state_nocalls`
run in the kernel's order: startup callbacks in ascending state order on the way up, teardown
callbacks in descending order on the way down. States below ``CPUHP_BRINGUP_CPU`` are run by the
control CPU: their startup before the new CPU runs at all, their teardown after the leaving CPU
is dead; so a ``CPUHP_BP_PREPARE_DYN`` callback never sees its CPU online.

Each CPU also carries what the panic path saves for it: the pid of its current task and its 27
``user_regs_struct`` values, both a pure function of the CPU id and a counter (:func:`task_pid`,
:func:`user_regs`), so a test can predict the NT_PRSTATUS a crash writes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import compress
from operator import attrgetter
from typing import Final

from crash_hotplug.elf.prstatus import USER_REGS, ElfPrstatus
from crash_hotplug.errors import CrashHotplugError

#: a CPU's flags, read at C speed when a mask is made (every hotplug event reads them)
_PRESENT = attrgetter("present")
_ONLINE = attrgetter("online")

__all__ = [
    "CpuAlreadyPresentError",
    "CpuBusyError",
    "CpuHotplug",
    "CpuHotplugError",
    "CpuNotHotpluggableError",
    "CpuNotPossibleError",
    "CpuNotPresentError",
    "CpuState",
    "CpuhpCallbackError",
    "CpuhpState",
    "CpuhpStateError",
    "CpuhpStep",
    "task_pid",
    "user_regs",
]

EBUSY: Final = 16
EPERM: Final = 1
ENODEV: Final = 19
EINVAL: Final = 22
ENOSPC: Final = 28


class CpuhpState(IntEnum):
    """``enum cpuhp_state``, reduced to the states that matter here (values keep the order)."""

    CPUHP_OFFLINE = 0
    CPUHP_CREATE_THREADS = 1
    CPUHP_PERF_PREPARE = 2
    #: first of the dynamically allocated prepare states (the crash hotplug callbacks live here)
    CPUHP_BP_PREPARE_DYN = 10
    CPUHP_BP_PREPARE_DYN_END = 29
    #: the control CPU kicks the new CPU; below this the CPU is not running
    CPUHP_BRINGUP_CPU = 30
    CPUHP_AP_OFFLINE = 31
    #: the CPU marks itself online in ``cpu_online_mask`` here
    CPUHP_AP_ONLINE = 50
    #: ``take_cpu_down``: the leaving CPU clears itself from ``cpu_online_mask``
    CPUHP_TEARDOWN_CPU = 51
    CPUHP_AP_ONLINE_IDLE = 52
    CPUHP_AP_ONLINE_DYN = 60
    CPUHP_AP_ONLINE_DYN_END = 89
    CPUHP_ONLINE = 100


_DYN_RANGES: Final = {
    CpuhpState.CPUHP_BP_PREPARE_DYN: (CpuhpState.CPUHP_BP_PREPARE_DYN, CpuhpState.CPUHP_BP_PREPARE_DYN_END),
    CpuhpState.CPUHP_AP_ONLINE_DYN: (CpuhpState.CPUHP_AP_ONLINE_DYN, CpuhpState.CPUHP_AP_ONLINE_DYN_END),
}

CpuhpCallback = Callable[[int], int]


class CpuHotplugError(CrashHotplugError):
    """A CPU transition the kernel refuses; ``cpu`` names the CPU and ``errno`` the kernel's code."""

    errno: int = EINVAL

    def __init__(self, cpu: int, what: str) -> None:
        self.cpu = cpu
        self.what = what
        super().__init__(f"cpu{cpu}: {what}")


class CpuNotPossibleError(CpuHotplugError):
    """The CPU id is not in ``cpu_possible_mask`` (``-EINVAL``; ACPI: "Unable to map lapic")."""


class CpuNotPresentError(CpuHotplugError):
    """Bringing up or removing a CPU that is not present (``-EINVAL`` / ``-ENODEV``)."""

    errno = ENODEV


class CpuAlreadyPresentError(CpuHotplugError):
    """Hot-adding a CPU that is already present."""


class CpuBusyError(CpuHotplugError):
    """``-EBUSY``: offlining the last online CPU, or hot-removing a CPU that is still online."""

    errno = EBUSY


class CpuNotHotpluggableError(CpuHotplugError):
    """``-EPERM``: the CPU cannot be offlined (the boot CPU on x86 has no ``cpu0/online``)."""

    errno = EPERM


class CpuhpStateError(CrashHotplugError):
    """``cpuhp_setup_state_nocalls`` refused: the state is taken, or no dynamic slot is free (``-ENOSPC``)."""

    def __init__(self, state: int, name: str, what: str) -> None:
        self.state = state
        self.name = name
        super().__init__(f"cpuhp state {state} ({name}): {what}")


class CpuhpCallbackError(CpuHotplugError):
    """A startup callback failed; the CPU was rolled back to the state it started from."""

    def __init__(self, cpu: int, state: int, name: str, ret: int) -> None:
        self.state = state
        self.callback = name
        self.ret = ret
        self.errno = -ret
        super().__init__(cpu, f"cpuhp state {state} ({name}) startup returned {ret}")


@dataclass(frozen=True)
class CpuhpStep:
    """``struct cpuhp_step``: the callbacks registered at one state."""

    name: str
    startup: CpuhpCallback | None
    teardown: CpuhpCallback | None


def _u64s(tag: bytes, n: int) -> list[int]:
    out: list[int] = []
    i = 0
    while len(out) < n:
        out += struct.unpack("<4Q", hashlib.sha256(tag + i.to_bytes(4, "little")).digest())
        i += 1
    return out[:n]


def user_regs(cpu: int, counter: int) -> tuple[int, ...]:
    """The 27 ``user_regs_struct`` values of ``cpu`` at ``counter``: SHA-256 derived, with the
    selectors, flags, ``orig_ax`` and ``ip`` set to what a kernel-mode x86_64 CPU shows."""
    regs = _u64s(b"user_regs:%d:%d" % (cpu, counter), len(USER_REGS))
    fixed = {
        "cs": 0x10, "ss": 0x18, "flags": 0x246, "orig_ax": 0xFFFFFFFFFFFFFFFF,
        "ds": 0, "es": 0, "fs": 0, "gs": 0,
        "ip": 0xFFFFFFFF81000000 + (regs[USER_REGS.index("ip")] & 0xFFFFF0),
        "sp": 0xFFFFC90000000000 + (regs[USER_REGS.index("sp")] & 0xFFFFF8),
    }
    for name, value in fixed.items():
        regs[USER_REGS.index(name)] = value
    return tuple(regs)


def task_pid(cpu: int, counter: int) -> int:
    """The pid of the task current on ``cpu`` at ``counter`` (0, the idle task, at counter 0)."""
    return 0 if counter == 0 else 1000 + 100 * counter + cpu


#: bumped whenever any CPU's ``present`` or ``online`` bit or its ``crash_notes`` is set (the key
#: of the caches over the masks and the notes)
_MASK_GEN = [0]


@dataclass
class CpuState:
    """One possible CPU: its hotplug state, its ``crash_notes`` buffer and what is running on it."""

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name == "online" or name == "present" or name == "crash_notes":
            _MASK_GEN[0] += 1

    cpu: int
    present: bool
    #: current ``enum cpuhp_state`` (``CPUHP_ONLINE`` when up, ``CPUHP_OFFLINE`` when down)
    state: int
    #: physical address of ``per_cpu_ptr(crash_notes, cpu)``
    crash_notes: int
    #: bit in ``cpu_online_mask`` (set at ``CPUHP_AP_ONLINE``, cleared at ``CPUHP_TEARDOWN_CPU``)
    online: bool = False
    #: advances the task pid and registers; see :func:`task_pid`, :func:`user_regs`
    counter: int = 0
    #: an explicit pid overrides :func:`task_pid` (e.g. the task that triggers a panic)
    pid_override: int | None = None

    @property
    def pid(self) -> int:
        return task_pid(self.cpu, self.counter) if self.pid_override is None else self.pid_override

    @property
    def regs(self) -> tuple[int, ...]:
        return user_regs(self.cpu, self.counter)

    def prstatus(self) -> ElfPrstatus:
        """What ``crash_save_cpu`` records for this CPU."""
        return ElfPrstatus(pr_pid=self.pid, regs=self.regs)


@dataclass
class CpuHotplug:
    """The CPU masks and the cpuhp state machine (``kernel/cpu.c``).

    ``cpu0_hotpluggable`` is false on x86 unless ``cpu0_hotplug`` was given: cpu0 has no
    ``online`` attribute and cannot be offlined.
    """

    cpus: dict[int, CpuState]
    nr_cpus: int = 8192
    cpu0_hotpluggable: bool = False
    steps: dict[int, CpuhpStep] = field(default_factory=dict)
    #: (cpu, state, "startup"|"teardown", name) for every callback run, in order
    trace: list[tuple[int, int, str, str]] = field(default_factory=list)
    #: (generation, CPU map, its size, present mask, online mask): the masks as last computed,
    #: valid while no CPU's bits were set since and the CPU map is the same (every event of a
    #: storm reads them)
    _masks: tuple[int, dict[int, CpuState], int, tuple[int, ...], tuple[int, ...]] | None = field(
        default=None, init=False, repr=False, compare=False)

    @classmethod
    def boot(cls, possible: Iterable[int], present: Iterable[int], online: Iterable[int],
             crash_notes: dict[int, int], *, nr_cpus: int = 8192) -> CpuHotplug:
        """CPU state after boot; every possible CPU has its ``crash_notes`` address."""
        pres, onl = set(present), set(online)
        cpus = {}
        for c in sorted(set(possible)):
            state = CpuhpState.CPUHP_ONLINE if c in onl else CpuhpState.CPUHP_OFFLINE
            cpus[c] = CpuState(c, c in pres, state, crash_notes.get(c, 0), online=c in onl)
        return cls(cpus, nr_cpus)

    # -- masks -------------------------------------------------------------------------------
    @property
    def possible(self) -> tuple[int, ...]:
        """``cpu_possible_mask``"""
        return tuple(self.cpus)

    def state_key(self) -> object:
        """An object that stays the same one (``is``) until a CPU's mask bits or ``crash_notes``
        are set or the CPU map is replaced or resized (not a kernel concept: what caches over the
        masks compare)."""
        return self._current_masks()

    def _current_masks(self) -> tuple[int, dict[int, CpuState], int, tuple[int, ...], tuple[int, ...]]:
        cpus = self.cpus
        masks = self._masks
        if masks is None or masks[0] != _MASK_GEN[0] or masks[1] is not cpus or masks[2] != len(cpus):
            masks = (_MASK_GEN[0], cpus, len(cpus), tuple(compress(cpus, map(_PRESENT, cpus.values()))),
                     tuple(compress(cpus, map(_ONLINE, cpus.values()))))
            self._masks = masks
        return masks

    @property
    def present(self) -> tuple[int, ...]:
        """``cpu_present_mask``"""
        return self._current_masks()[3]

    @property
    def online(self) -> tuple[int, ...]:
        """``cpu_online_mask``"""
        return self._current_masks()[4]

    @property
    def offline(self) -> tuple[int, ...]:
        """What ``cpu/offline`` prints: CPUs below ``nr_cpu_ids`` that are not online."""
        return tuple(c for c in range(max(self.cpus) + 1) if c not in self.online)

    def cpu(self, cpu: int) -> CpuState:
        s = self.cpus.get(cpu)
        if s is None:
            raise CpuNotPossibleError(cpu, "not a possible CPU")
        return s

    def hotpluggable(self, cpu: int) -> bool:
        """Whether ``cpuN/online`` exists (``cpu_is_hotpluggable``)."""
        return cpu != 0 or self.cpu0_hotpluggable

    # -- callbacks ---------------------------------------------------------------------------
    def cpuhp_setup_state_nocalls(self, state: int, name: str, startup: CpuhpCallback | None,
                                  teardown: CpuhpCallback | None) -> int:
        """``cpuhp_setup_state_nocalls``: register callbacks without calling them for CPUs already up.

        For ``CPUHP_BP_PREPARE_DYN`` / ``CPUHP_AP_ONLINE_DYN`` a free slot of the range is taken
        and its number returned; a fixed state returns 0. ``-ENOSPC`` when the range is full.
        """
        if state in _DYN_RANGES:
            lo, hi = _DYN_RANGES[CpuhpState(state)]
            slot = next((s for s in range(lo, hi + 1) if s not in self.steps), None)
            if slot is None:
                raise CpuhpStateError(state, name, "no free dynamic state (-ENOSPC)")
            self.steps[slot] = CpuhpStep(name, startup, teardown)
            return slot
        if state in self.steps:
            raise CpuhpStateError(state, name, f"already taken by {self.steps[state].name}")
        self.steps[state] = CpuhpStep(name, startup, teardown)
        return 0

    def cpuhp_remove_state_nocalls(self, state: int) -> None:
        """``cpuhp_remove_state_nocalls``"""
        self.steps.pop(state, None)

    def _walk(self, lo: int, hi: int) -> list[int]:
        marks = {CpuhpState.CPUHP_AP_ONLINE, CpuhpState.CPUHP_TEARDOWN_CPU}
        return sorted(k for k in set(self.steps) | marks if lo < k <= hi)

    def _run(self, s: CpuState, target: int) -> None:
        if target > s.state:
            start = s.state
            for st in self._walk(s.state, target):
                s.state = st
                if st == CpuhpState.CPUHP_AP_ONLINE:
                    s.online = True
                step = self.steps.get(st)
                if step is None or step.startup is None:
                    continue
                self.trace.append((s.cpu, st, "startup", step.name))
                ret = step.startup(s.cpu)
                if ret:
                    s.state = st - 1
                    if st <= CpuhpState.CPUHP_AP_ONLINE:
                        s.online = False
                    self._run(s, start)
                    raise CpuhpCallbackError(s.cpu, st, step.name, ret)
        else:
            for st in reversed(self._walk(target, s.state)):
                s.state = st - 1
                if st == CpuhpState.CPUHP_TEARDOWN_CPU:
                    s.online = False
                step = self.steps.get(st)
                if step is None or step.teardown is None:
                    continue
                self.trace.append((s.cpu, st, "teardown", step.name))
                step.teardown(s.cpu)
        s.state = target

    # -- transitions -------------------------------------------------------------------------
    def cpu_hot_add(self, cpu: int) -> None:
        """ACPI processor hot-add (``acpi_map_cpu``, ``arch_register_cpu``): the CPU becomes present."""
        s = self.cpus.get(cpu)
        if s is None:
            raise CpuNotPossibleError(cpu, f"not possible (possible CPUs: {len(self.cpus)}); cannot hot-add")
        if s.present:
            raise CpuAlreadyPresentError(cpu, "already present")
        s.present = True

    def cpu_up(self, cpu: int) -> None:
        """``cpu_up`` / ``echo 1 > cpuN/online``: bring a present CPU to ``CPUHP_ONLINE``."""
        s = self.cpu(cpu)
        if not s.present:
            raise CpuNotPresentError(cpu, "not present; cannot bring it online")
        if s.online:
            return
        self._run(s, CpuhpState.CPUHP_ONLINE)

    def cpu_down(self, cpu: int) -> None:
        """``cpu_down`` / ``echo 0 > cpuN/online``: take an online CPU to ``CPUHP_OFFLINE``."""
        s = self.cpu(cpu)
        if not s.online:
            return
        if not self.hotpluggable(cpu):
            raise CpuNotHotpluggableError(cpu, "the boot CPU cannot be offlined")
        if len(self.online) == 1:
            raise CpuBusyError(cpu, "it is the last online CPU")
        self._run(s, CpuhpState.CPUHP_OFFLINE)

    def cpu_hot_remove(self, cpu: int) -> None:
        """ACPI processor eject after offlining (``arch_unregister_cpu``): the CPU leaves ``present``."""
        s = self.cpu(cpu)
        if not s.present:
            raise CpuNotPresentError(cpu, "not present; nothing to remove")
        if s.online:
            raise CpuBusyError(cpu, "still online; offline it before removing it")
        if not self.hotpluggable(cpu):
            raise CpuNotHotpluggableError(cpu, "the boot CPU cannot be removed")
        s.present = False
        s.counter = 0
        s.pid_override = None
