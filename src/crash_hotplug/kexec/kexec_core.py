"""The kexec globals of one machine (``kernel/kexec_core.c``, ``kernel/crash_reserve.c``): the
loaded images, the kexec lock, the crashkernel reservation and its write protection
(``arch/x86/kernel/machine_kexec_64.c: arch_kexec_protect_crashkres``).

A :class:`Kexec` attaches itself to its :class:`~crash_hotplug.machine.machine.Machine` so that the
machine's sysfs (``kexec_crash_loaded``, ``crash_hotplug``) shows the kexec state.
"""

from __future__ import annotations

from collections.abc import Callable

from crash_hotplug.kexec.kimage import KexecError, Kimage
from crash_hotplug.kexec.lock import KexecLock
from crash_hotplug.kexec.purgatory import verify_sha256_digest
from crash_hotplug.machine.machine import Machine

__all__ = ["Kexec", "kimage_verify_digest"]


class Kexec:
    """``kexec_image``, ``kexec_crash_image``, ``kexec_lock`` and ``crashk_res`` of ``machine``."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.lock = KexecLock()
        self.kexec_image: Kimage | None = None
        self.kexec_crash_image: Kimage | None = None
        #: ``kexec_in_progress``: a kexec reboot is under way
        self.kexec_in_progress = False
        #: run by the panic path once the other CPUs are stopped, before purgatory
        self.crash_kexec_hooks: list[Callable[[], None]] = []
        machine.kexec = self

    # -- crashkernel -------------------------------------------------------------------------
    @property
    def crashk_res(self) -> tuple[int, int] | None:
        return self.machine.crashk_res

    @property
    def crashk_low_res(self) -> tuple[int, int] | None:
        return self.machine.crashk_low_res

    def crash_windows(self) -> list[tuple[int, int]]:
        """Where a crash image's segments may go: ``crashk_res`` (``kexec_walk_resources``)."""
        if self.crashk_res is None:
            raise KexecError("no crashkernel= reservation", 99)
        return [self.crashk_res]

    def _crash_ranges(self) -> list[tuple[int, int]]:
        return [r for r in (self.crashk_low_res, self.crashk_res) if r is not None and r[1]]

    def arch_kexec_protect_crashkres(self) -> None:
        """``arch_kexec_protect_crashkres``: the crashkernel regions become read-only."""
        for start, end in self._crash_ranges():
            self.machine.mem.protect(start, end)

    def arch_kexec_unprotect_crashkres(self) -> None:
        """``arch_kexec_unprotect_crashkres``: the crashkernel regions become writable."""
        for start, end in self._crash_ranges():
            self.machine.mem.unprotect(start, end)

    @property
    def crashkres_protected(self) -> bool:
        return any(self.machine.mem.is_protected(s, e - s + 1) for s, e in self._crash_ranges())

    # -- locking -----------------------------------------------------------------------------
    def kexec_trylock(self) -> bool:
        """``kexec_trylock``: take the lock without waiting; False if someone holds it."""
        return self.lock.trylock()

    def kexec_unlock(self) -> None:
        """``kexec_unlock``"""
        self.lock.unlock()

    # -- sysfs views (KexecStatus) -----------------------------------------------------------
    def kexec_loaded(self) -> bool:
        """``/sys/kernel/kexec_loaded``"""
        return self.kexec_image is not None

    def kexec_crash_loaded(self) -> bool:
        """``/sys/kernel/kexec_crash_loaded`` (``kexec_crash_loaded``)."""
        return self.kexec_crash_image is not None

    def crash_check_hotplug_support(self) -> int:
        """``crash_check_hotplug_support``: 1 only if the lock is free, a crash image is loaded and
        it has ``hotplug_support``; what ``cpu/crash_hotplug`` and ``memory/crash_hotplug`` print."""
        if not self.machine.config.crash_hotplug:
            return 0
        if not self.kexec_trylock():
            return 0
        try:
            img = self.kexec_crash_image
            return int(img is not None and img.hotplug_support)
        finally:
            self.kexec_unlock()


def kimage_verify_digest(image: Kimage, machine: Machine, *, raise_on_mismatch: bool = False) -> bool:
    """Run purgatory's check on ``image`` as loaded in ``machine``'s memory: the region table and
    digest are read from the purgatory segment in memory (``verify_sha256_digest``). False on a
    mismatch, or :class:`~crash_hotplug.kexec.purgatory.PurgatoryDigestMismatch` with ``raise_on_mismatch``."""
    pi = image.purgatory
    if pi is None:
        raise KexecError("image has no purgatory")
    regions_sym, digest_sym = image.digest_symbols
    return verify_sha256_digest(machine.mem, pi.symbol_addr(regions_sym), pi.symbol_addr(digest_sym),
                                raise_on_mismatch=raise_on_mismatch)
