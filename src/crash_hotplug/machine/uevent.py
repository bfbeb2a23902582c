"""Uevents: what the kernel tells userspace (udev) after a device changes (``lib/kobject_uevent.c``).

CPUs send ``add``/``remove`` when they are hot-added or removed (``register_cpu``) and
``online``/``offline`` when they come up or go down; memory blocks send ``online``/``offline``
after the block changed state (``memory_block_change_state``), i.e. after the memory notifier
chain ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Uevent", "UeventBus"]


@dataclass(frozen=True)
class Uevent:
    """``ACTION``, ``SUBSYSTEM`` and the kernel device name (``cpu3``, ``memory40``)."""

    action: str
    subsystem: str
    kernel: str
    time: float = 0.0


@dataclass
class UeventBus:
    """The netlink socket udev listens on: every listener gets every uevent, in order."""

    listeners: list[Callable[[Uevent], None]] = field(default_factory=list)
    sent: int = 0

    def listen(self, fn: Callable[[Uevent], None]) -> None:
        self.listeners.append(fn)

    def send(self, ev: Uevent) -> None:
        self.sent += 1
        for fn in list(self.listeners):
            fn(ev)
