"""The ``ours`` crash hotplug design: upstream's mechanism with four departures, each a switch.

1. **Coalescing** (``coalesce``). An event marks the header dirty and (re)arms a short timer
   (``coalesce_delay_s``); the header is rebuilt once when the burst is over, and never later than
   ``max_lag_s`` after the first event it covers. A 1 GiB DIMM (8 block events a few ms apart) costs
   one rebuild instead of eight. The panic path flushes a pending (or interrupted) update before
   purgatory runs (the other CPUs are stopped by then), so a panic inside the lag still dumps with
   a true header.
2. **No dump lost during an update** (``double_buffer``). The elfcorehdr segment holds two slots.
   An update writes the inactive slot, then flips one index; the crash image is never hidden and
   the kexec lock is held only to look the image up and to flip, never while writing. At panic the
   active slot is copied over slot 0, which is where ``elfcorehdr=`` points -- so the capture kernel
   and its command line (inside the digested boot parameters) are untouched, and the whole segment
   stays out of purgatory's digest as upstream already has it. A panic at any write sees a complete
   header, old or new, never a torn one.
3. **No update dropped** (``defer_when_busy``). If the kexec lock is busy (a load or unload), the
   update is deferred and run when the lock is released. Updates rebuild from the machine as it is,
   so a replay applies every deferred event at once, in order, and never twice.
4. **A true header after memory leaves** (``online_only``). Offline memory blocks are cut out of the
   header, and a block's removal is reflected at its ``MEM_OFFLINE``. Upstream lists every System
   RAM resource, offline blocks included, and rebuilds at ``MEM_OFFLINE`` before the removed DIMM
   leaves iomem, so its header keeps removed memory until some later memory event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crash_hotplug.crash.arch import Outcome
from crash_hotplug.crash.core import CrashMemError
from crash_hotplug.crash.hotplug import CrashHotplug, Design, HotplugRecord
from crash_hotplug.crash.x86_64 import prepare_elf_headers
from crash_hotplug.kexec.kimage import (
    KEXEC_CRASH_HP_ADD_CPU,
    KEXEC_CRASH_HP_ADD_MEMORY,
    KEXEC_CRASH_HP_REMOVE_CPU,
    KEXEC_CRASH_HP_REMOVE_MEMORY,
    Kimage,
    kimage_find_elfcorehdr,
)
from crash_hotplug.machine.clock import Clock, Timer
from crash_hotplug.machine.cpu import CpuhpState
from crash_hotplug.machine.memory import MEM_OFFLINE, MEM_ONLINE, MemoryNotify
from crash_hotplug.machine.physmem import PAGE_SIZE

__all__ = ["OURS", "OursCrashHotplug", "OursOptions"]

OURS = Design(
    "ours",
    ((MEM_ONLINE, KEXEC_CRASH_HP_ADD_MEMORY), (MEM_OFFLINE, KEXEC_CRASH_HP_REMOVE_MEMORY)),
    CpuhpState.CPUHP_BP_PREPARE_DYN,
    updates_on_cpu_events=False,
    elfcorehdr_in_digest=False,
)


@dataclass(frozen=True)
class OursOptions:
    """The four departures from upstream; all on is the design we recommend."""

    coalesce: bool = True
    coalesce_delay_s: float = 0.010
    max_lag_s: float = 0.100
    double_buffer: bool = True
    defer_when_busy: bool = True
    online_only: bool = True


@dataclass
class Update:
    """One regeneration: when the first event it covers came, when it landed, and why it ran."""

    dirty_since: float
    landed: float
    reason: str

    @property
    def lag(self) -> float:
        return self.landed - self.dirty_since


@dataclass
class OursCrashHotplug(CrashHotplug):
    """The ``ours`` design (see the module docstring)."""

    design: Design = OURS
    options: OursOptions = field(default_factory=OursOptions)
    updates: list[Update] = field(default_factory=list)
    #: events that found the kexec lock busy and were replayed later
    deferred: int = 0
    dirty_since: float | None = None
    #: bumped by every queued event: an update clears ``dirty_since`` only if none came meanwhile
    _generation: int = 0
    _timer: Timer | None = None
    _waiting_for_lock: bool = False
    _image_seen: Kimage | None = None

    def crash_hotplug_init(self) -> OursCrashHotplug:
        super().crash_hotplug_init()
        self._image_seen = self.kexec.kexec_crash_image
        if self._registered:
            self.kexec.lock.on_unlock.append(self._lock_released)
            self.kexec.crash_kexec_hooks.append(self.crash_kexec_flush)
        return self

    # -- events --------------------------------------------------------------------------------
    def crash_handle_hotplug_event(self, hp_action: int, cpu: int, arg: MemoryNotify | None) -> Outcome:
        """Queue the change; the header is rebuilt by :meth:`flush` (now, or when the burst ends)."""
        image = self.kexec.kexec_crash_image
        outcome: Outcome
        if image is None:
            outcome = Outcome.NO_IMAGE
        elif not image.hotplug_support:
            outcome = Outcome.NO_HOTPLUG_SUPPORT
        elif hp_action in (KEXEC_CRASH_HP_ADD_CPU, KEXEC_CRASH_HP_REMOVE_CPU) and (
            image.file_mode or image.elfcorehdr_updated
        ):
            outcome = Outcome.CPU_SKIPPED
        else:
            outcome = self._queue()
        block = (arg.start, arg.end) if arg is not None else None
        self.records.append(HotplugRecord(len(self.records), hp_action, None if cpu < 0 or cpu > 0xFFFF else cpu,
                                          block, outcome))
        return outcome

    def _queue(self) -> Outcome:
        clock = self.kexec.machine.clock
        self._generation += 1
        if self.dirty_since is None:
            self.dirty_since = clock.now
        if not self.options.coalesce:
            return self.flush("event")
        Clock.cancel(self._timer)
        due = min(clock.now + self.options.coalesce_delay_s, self.dirty_since + self.options.max_lag_s)
        self._timer = clock.call_at(due, self._burst_over, "coalesced elfcorehdr update")
        return Outcome.QUEUED

    def notifier_returns_at(self) -> float:
        """The notifier only queues: hotplug operations never wait for an update."""
        return 0.0

    def _burst_over(self) -> None:
        self._timer = None
        clock = self.kexec.machine.clock
        if clock.now < self.busy_until:
            # the previous rebuild still holds the mutex: run when it is done
            self._timer = clock.call_at(self.busy_until, self._burst_over, "coalesced elfcorehdr update")
            return
        self.flush("burst over")

    def _lock_released(self) -> None:
        if self.kexec.lock.locked:
            return
        image = self.kexec.kexec_crash_image
        if image is not self._image_seen:
            # a new image was loaded: its header is the one the loader built (offline blocks, or
            # kexec-tools' present CPUs); bring it in line like any other change
            self._image_seen = image
            if image is not None and image.hotplug_support:
                self._queue()
        if self._waiting_for_lock:
            self._waiting_for_lock = False
            self.flush("kexec lock released")

    # -- the update ----------------------------------------------------------------------------
    def _slot_addr(self, image: Kimage, slot: int) -> int:
        seg = image.segments[image.elfcorehdr_index]
        return seg.mem + slot * (seg.memsz // image.elfcorehdr_slots)

    def _build(self) -> bytes | None:
        machine = self.kexec.machine
        exclude: list[tuple[int, int]] = []
        if self.options.online_only:
            # one pass over every block (a storm's thousands) picks the offline ones, few
            offline = sorted([i for i, b in machine.memory.blocks.items() if not b.online])
            for index in offline:
                start, end = machine.memory.block_range(index)
                if exclude and exclude[-1][1] + 1 == start:
                    exclude[-1] = (exclude[-1][0], end)
                else:
                    exclude.append((start, end))
        try:
            buf, _ = prepare_elf_headers(machine.kernel_state(snapshot=False), exclude)
        except CrashMemError:
            machine.printk("crash hp: unable to create new elfcorehdr")
            return None
        # the rebuild takes as long as upstream's update, but outside the kexec lock
        self.spend("crash_hotplug_event")
        self.spend("elfcorehdr_build_phdr", (len(buf) - 64) // 56)
        return buf

    def flush(self, reason: str) -> Outcome:
        """Rebuild the header if events are pending: write the inactive slot, then flip."""
        if self.dirty_since is None:
            return Outcome.UPDATED
        kexec = self.kexec
        machine = kexec.machine
        self._elapsed = 0.0
        with self._mutex:
            start = machine.clock.now
            if not kexec.kexec_trylock():
                if self.options.defer_when_busy:
                    self.deferred += 1
                    self._waiting_for_lock = True
                    return Outcome.DEFERRED
                machine.printk("crash hp: kexec_trylock() failed, kdump image may be inaccurate")
                self.dirty_since = None
                return Outcome.LOCK_BUSY
            try:
                image = kexec.kexec_crash_image
                if image is None or not image.hotplug_support:
                    self.dirty_since = None
                    return Outcome.NO_IMAGE if image is None else Outcome.NO_HOTPLUG_SUPPORT
                if image.elfcorehdr_index < 0:
                    image.elfcorehdr_index = kimage_find_elfcorehdr(image, machine.mem)
                if image.elfcorehdr_index < 0:
                    self.dirty_since = None
                    machine.printk("crash hp: unable to locate elfcorehdr segment")
                    return Outcome.NO_ELFCOREHDR
            finally:
                self.spend("kexec_lock_lookup", window="lock")
                kexec.kexec_unlock()
            dirty_since = self.dirty_since
            generation = self._generation
            # dirty_since stays set until the flip: a panic meanwhile rebuilds (crash_kexec_flush)
            outcome = self._write(image)
            if outcome is Outcome.DEFERRED:
                return outcome
            if self._generation == generation:
                self.dirty_since = None
            if outcome is Outcome.UPDATED:
                self.updates.append(Update(dirty_since, start + self._elapsed, reason))
                self.updated_at.append(start + self._elapsed)
            # the mutex is held for the rebuild's time; the next flush waits for it
            self.busy_until = start + self._elapsed
            return outcome

    def _write(self, image: Kimage, *, in_panic: bool = False) -> Outcome:
        kexec = self.kexec
        machine = kexec.machine
        buf = self._build()
        if buf is None:
            return Outcome.BUILD_FAILED
        seg = image.segments[image.elfcorehdr_index]
        slot_size = seg.memsz // image.elfcorehdr_slots
        if len(buf) > slot_size:
            machine.printk(f"crash hp: update elfcorehdr elfsz {len(buf)} > memsz {slot_size}")
            return Outcome.TOO_BIG
        double = self.options.double_buffer and image.elfcorehdr_slots >= 2
        target = 1 - image.elfcorehdr_active if double else 0
        addr = self._slot_addr(image, target)
        if machine.mem.read(self._slot_addr(image, image.elfcorehdr_active if double else 0), len(buf)) == buf:
            return Outcome.UNCHANGED
        kexec.arch_kexec_unprotect_crashkres()
        for off in range(0, len(buf), PAGE_SIZE):
            if not in_panic:
                self.step(f"write slot {target} page {off // PAGE_SIZE}")
            machine.mem.write(addr + off, buf[off : off + PAGE_SIZE])
        self.spend("elfcorehdr_copy_page", -(-len(buf) // PAGE_SIZE))
        if double:
            if not in_panic:
                self.step(f"flip to slot {target}")
                if not kexec.kexec_trylock():
                    kexec.arch_kexec_protect_crashkres()
                    if self.options.defer_when_busy:
                        self.deferred += 1
                        self._waiting_for_lock = True
                        return Outcome.DEFERRED
                    return Outcome.LOCK_BUSY
                try:
                    if kexec.kexec_crash_image is not image:
                        return Outcome.NO_IMAGE  # reloaded meanwhile: the new image has a fresh header
                    image.elfcorehdr_active = target
                finally:
                    self.spend("kexec_lock_lookup", window="lock")
                    kexec.kexec_unlock()
            else:
                image.elfcorehdr_active = target
        image.elfcorehdr_updated = True
        kexec.arch_kexec_protect_crashkres()
        machine.printk("crash hp: updated elfcorehdr")
        return Outcome.UPDATED

    # -- the panic path ----------------------------------------------------------------------
    def crash_kexec_flush(self) -> None:
        """Run by the panic path with the other CPUs stopped: land a pending update, then put the
        active slot where ``elfcorehdr=`` points."""
        image = self.kexec.kexec_crash_image
        if image is None or image.elfcorehdr_index < 0:
            return
        if self.dirty_since is not None and self.options.coalesce:
            self._write(image, in_panic=True)
            self.dirty_since = None
        if image.elfcorehdr_active != 0:
            src = self._slot_addr(image, image.elfcorehdr_active)
            seg = image.segments[image.elfcorehdr_index]
            size = seg.memsz // image.elfcorehdr_slots
            machine = self.kexec.machine
            self.kexec.arch_kexec_unprotect_crashkres()
            machine.mem.write(self._slot_addr(image, 0), machine.mem.read(src, size))
            image.elfcorehdr_active = 0

    @property
    def regenerations(self) -> int:
        return len(self.updates)

