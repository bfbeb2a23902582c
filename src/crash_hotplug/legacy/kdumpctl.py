"""The userspace reload path: ``kdump.service`` and ``kdumpctl reload`` (kdump-utils ``kdumpctl``).

``kdumpctl reload`` unloads the crash image (``kexec -s -p -u``) and loads it again (``kexec -s -p``):
every segment rebuilt and re-digested, and between the two no crash image is loaded -- a panic
there is not dumped. Reloads are serialised by kdumpctl's lock (``single_instance_lock``: every
instance waits for it, however many). The throttler that coalesces a burst into one reload is
:mod:`crash_hotplug.legacy.throttler`.

Time comes from the machine's :class:`~crash_hotplug.machine.clock.Clock`: with the default zero
costs a reload happens at once; under a simulator's costs the unload and the load take their
measured time, holding the kexec lock meanwhile.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from crash_hotplug.kexec.kexec_core import Kexec
from crash_hotplug.kexec.kexec_file import KexecPayload, kexec_file_load, kexec_file_unload
from crash_hotplug.kexec.kexec_load import kexec_load_unload, kexec_tools_load
from crash_hotplug.kexec.kimage import Kimage
from crash_hotplug.kexec.lock import KexecBusyError
from crash_hotplug.machine.clock import Clock

__all__ = ["KdumpService"]


@dataclass
class KdumpService:
    """``kdump.service`` and ``kdumpctl``: load, unload, and serialised reloads."""

    kexec: Kexec
    syscall: str = "kexec_file_load"
    #: kexec-tools ``--hotplug`` (kexec_load only)
    hotplug: bool = False
    payload: KexecPayload = field(default_factory=KexecPayload.synthetic)
    #: called between the unload and the load (a panic may strike there)
    on_step: Callable[[str], None] | None = None
    image: Kimage | None = None
    reloads: int = 0
    #: (start, end) of each interval with no crash image loaded
    unloaded: list[tuple[float, float]] = field(default_factory=list)
    #: (start, end) of each interval a kexec syscall of a reload held the kexec lock
    lock_windows: list[tuple[float, float]] = field(default_factory=list)
    #: (start, end) of each ``kdumpctl reload``, from its unload to the end of its load
    busy: list[tuple[float, float]] = field(default_factory=list)
    #: reloads that failed (a syscall found the kexec lock busy)
    failed: int = 0
    #: loads the image (the design's own syscall); default: ``kexec -s -p`` or ``kexec -p``
    loader: Callable[[], Kimage] | None = None
    #: ``systemctl is-active kdump.service``: kdump-utils' unit is ``Type=oneshot`` with
    #: ``RemainAfterExit=yes``, so it is active from a ``kdumpctl start`` that loaded the image until
    #: ``kdumpctl stop``, whatever reloads do meanwhile
    active: bool = False
    _busy: bool = False
    _waiting: deque[Callable[[], None]] = field(default_factory=deque)

    @property
    def _clock(self) -> Clock:
        return self.kexec.machine.clock

    def start(self) -> Kimage:
        """``kdumpctl start`` (``kdump.service``'s ``ExecStart``): load the crash image now; the
        service is active from then on."""
        image = self._load()
        self.active = True
        return image

    def stop(self) -> None:
        """``kdumpctl stop`` (``ExecStop``): unload the crash image; the service is inactive."""
        self._unload()
        self.active = False

    def _load(self) -> Kimage:
        """``load_kdump``: ``kexec -s -p`` or ``kexec -p`` (or the design's own loader)."""
        image: Kimage | None
        if self.loader is not None:
            image = self.loader()
        else:
            image = (kexec_file_load(self.kexec, self.payload) if self.syscall == "kexec_file_load"
                     else kexec_tools_load(self.kexec, self.payload, hotplug=self.hotplug))
        assert image is not None
        self.image = image
        return image

    def _unload(self) -> None:
        """``stop_kdump``: ``kexec -p -u``."""
        if self.syscall == "kexec_file_load":
            kexec_file_unload(self.kexec)
        else:
            kexec_load_unload(self.kexec)
        self.image = None

    def reload(self, done: Callable[[], None] | None = None) -> None:
        """``kdumpctl reload``; waits for a reload in progress first (kdumpctl's lock).

        Each syscall takes the kexec lock with a try when it starts (``-EBUSY`` if an in-kernel
        update holds it: kdumpctl reports the failure and stops, counted in ``failed``) and holds it
        for its cost. The unload lands at its end; the load builds the new image -- its elfcorehdr
        from the machine as it is -- at its start, and the image becomes the crash image at its
        end (``kexec_file_load`` and ``kexec_load`` install it last), so memory that changes during
        a load is missing from the header it installs."""
        if self._busy:
            self._waiting.append(lambda: self.reload(done))
            return
        self._busy = True
        clock = self._clock
        began = clock.now
        unload_s = clock.cost("kexec_unload")
        load_s = clock.cost(f"{self.syscall}")

        def finished(ok: bool) -> None:
            self.busy.append((began, clock.now))
            if not ok:
                self.failed += 1
            self._busy = False
            if done is not None:
                done()
            if self._waiting:
                self._waiting.popleft()()

        def unloaded() -> None:
            gone = clock.now
            if self.on_step is not None:
                self.on_step("unloaded")

            def loaded() -> None:
                self.unloaded.append((gone, clock.now))
                self.reloads += 1
                finished(True)

            if not self._syscall(load_s, self._load, loaded, install_at_end=True):
                self.unloaded.append((gone, clock.now))
                finished(False)

        if not self._syscall(unload_s, self._unload, unloaded):
            finished(False)

    def _syscall(self, seconds: float, effect: Callable[[], object], then: Callable[[], None], *,
                 install_at_end: bool = False) -> bool:
        """A syscall that takes ``seconds`` holding the kexec lock; False if the lock was busy
        (``-EBUSY``). Its ``effect`` lands at the end, or, with ``install_at_end``, runs at the start
        with the crash image it installs hidden until the end."""
        if seconds <= 0:
            try:
                effect()
            except KexecBusyError:
                return False
            then()
            return True
        kexec = self.kexec
        if install_at_end:
            try:
                effect()
            except KexecBusyError:
                return False
            image, kexec.kexec_crash_image = kexec.kexec_crash_image, None
        if not kexec.kexec_trylock():
            if install_at_end:
                kexec.kexec_crash_image = image
            return False
        start = self._clock.now
        self.lock_windows.append((start, start + seconds))

        def finish() -> None:
            if install_at_end:
                kexec.kexec_crash_image = image
            kexec.kexec_unlock()
            if not install_at_end:
                effect()
            then()

        self._clock.call_later(seconds, finish, "kexec syscall")
        return True
