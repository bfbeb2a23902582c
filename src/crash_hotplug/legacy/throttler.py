"""``kdump-udev-throttler``: kdump-utils' coalescing of a hotplug burst into one ``kdumpctl reload``.

Mirrors ``kdump-udev-throttler`` of ``rhkdump/kdump-utils`` v1.0.61 (installed as
``/usr/lib/udev/kdump-udev-throttler``; line numbers below are that file's). udev starts one
instance per event, through ``systemd-run --no-block`` (:mod:`crash_hotplug.legacy.udevd`), so each
runs in its own transient service, outside the udev worker, and ``udevadm settle`` in it does not
wait for its own event. One instance:

* opens the lock file ``/var/lock/kdump-udev-throttle`` (script line 30; when it cannot, it falls
  back to a plain ``kdumpctl reload``: the model's lock file always opens);
* ``flock -n`` on it (line 36): an instance that finds the lock held exits at once (line 38). No
  instance ever waits for this lock: at most one holds it, the others end;
* ``sleep 1 && udevadm settle --timeout 3`` (line 44): at least 1 s, then until the udev event
  queue is empty (``udevadm settle`` pings udevd, then polls ``/run/udev/queue``), at most 3 s more
  -- a storm that keeps the queue busy is cut off at 4 s, and the reload goes ahead all the same
  (the status of the line is not checked);
* closes the lock (``exec 9>&-``, line 48) *before* ``kdumpctl reload`` (line 51), so the next event
  can start the next instance while this one's reload waits for kdumpctl's own lock: any number of
  reloads may queue there (:class:`~crash_hotplug.legacy.kdumpctl.KdumpService`), one per instance
  that got past its settle;
* ``reuse_luks_keys`` / ``unuse_luks_keys`` (lines 50, 52) touch
  ``/sys/kernel/config/crash_dm_crypt_keys/reuse`` for LUKS dump targets: the model has none.

The process start (bash, ``flock``) is not priced: a few milliseconds beside the 1 s sleep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from crash_hotplug.legacy.kdumpctl import KdumpService

__all__ = ["SETTLE_TIMEOUT", "THROTTLE_SLEEP", "Throttler"]

#: ``sleep 1`` before ``udevadm settle`` (script line 44)
THROTTLE_SLEEP = 1.0
#: ``udevadm settle --timeout 3`` (script line 44)
SETTLE_TIMEOUT = 3.0


@dataclass
class Throttler:
    """The instances of ``kdump-udev-throttler`` on one host, and the lock they share."""

    service: KdumpService
    #: None when the udev event queue is empty now, else when it is expected to be (``udevadm settle``
    #: waits for it; the queue empties only once the worker of its last event is done)
    queue_empty_at: Callable[[], float | None]
    #: instances that took the lock (each runs one ``kdumpctl reload``)
    started: int = 0
    #: instances that found the lock held and exited (script line 38)
    exited: int = 0
    #: reloads started after ``udevadm settle`` timed out with events still queued
    settle_timeouts: int = 0
    _locked: bool = False

    def run(self) -> None:
        """One instance, started as a transient service for one event."""
        if self._locked:  # flock -n 9 fails: exit 0
            self.exited += 1
            return
        self._locked = True
        self.started += 1
        clock = self.service.kexec.machine.clock
        settle_deadline = clock.now + THROTTLE_SLEEP + SETTLE_TIMEOUT

        def settle() -> None:
            """``udevadm settle --timeout 3``: back when the queue is empty or the time is up."""
            empty = self.queue_empty_at()
            if empty is None or clock.now >= settle_deadline:
                if empty is not None:
                    self.settle_timeouts += 1
                self._locked = False  # exec 9>&-: the lock goes before kdumpctl runs
                self.service.reload()
                return
            # polled again when the queue should be empty (an event due now finishes first)
            clock.call_at(min(max(empty, clock.now), settle_deadline), settle, "udevadm settle")

        clock.call_later(THROTTLE_SLEEP, settle, "throttler sleep")
