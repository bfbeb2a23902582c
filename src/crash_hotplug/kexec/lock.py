"""The kexec lock (``kernel/kexec_internal.h``: ``kexec_trylock`` / ``kexec_unlock``).

An atomic 0 -> 1 exchange that never waits: loads, unloads, ``crash_kexec`` and the crash hotplug
handler all take it with a try, and whoever finds it taken gives up (``-EBUSY``, or a dropped event).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from crash_hotplug.errors import CrashHotplugError

__all__ = ["KexecBusyError", "KexecLock"]


class KexecBusyError(CrashHotplugError):
    """``-EBUSY``: ``kexec_trylock`` failed; ``what`` names the operation that gave up."""

    errno = 16

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what}: kexec lock busy (-EBUSY)")


class KexecLock:
    """``atomic_t __kexec_lock``: :meth:`trylock` succeeds only if nobody holds it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held = False
        self.failed_trylocks = 0
        #: called after every unlock (the ``ours`` design replays deferred events there)
        self.on_unlock: list[Callable[[], None]] = []

    def trylock(self) -> bool:
        """``kexec_trylock``: ``atomic_cmpxchg_acquire(&__kexec_lock, 0, 1) == 0``."""
        with self._guard:
            if self._held:
                self.failed_trylocks += 1
                return False
            self._held = True
            return True

    def unlock(self) -> None:
        """``kexec_unlock``: ``atomic_set_release(&__kexec_lock, 0)``."""
        with self._guard:
            if not self._held:
                raise RuntimeError("kexec_unlock of a lock that is not held")
            self._held = False
        for fn in list(self.on_unlock):
            fn()

    @property
    def locked(self) -> bool:
        return self._held

    def __deepcopy__(self, memo: dict[int, object]) -> KexecLock:
        twin = KexecLock()
        twin._held = self._held
        twin.failed_trylocks = self.failed_trylocks
        return twin
