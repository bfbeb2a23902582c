"""Named failures of the real-kernel lab, each carrying what went wrong.

Modelled on ``qemu.qmp.error``: one base class, one subclass per stage (fetch, build, VM, guest,
scenario, run directory), and every instance printable as one clear sentence for the CLI.
"""

from __future__ import annotations

__all__ = [
    "GuestCommandError",
    "GuestPanicked",
    "GuestTimeout",
    "InitramfsError",
    "KernelFetchError",
    "LabError",
    "QemuError",
    "RunDirError",
    "ScenarioError",
]


class LabError(Exception):
    """Base class of every lab failure; ``str()`` is a sentence fit for the CLI."""


class KernelFetchError(LabError):
    """A Debian package could not be resolved, downloaded or unpacked."""


class InitramfsError(LabError):
    """The guest initramfs (busybox, kexec-tools, helper) could not be built."""


class QemuError(LabError):
    """QEMU could not be started, died, or a QMP command failed."""


class ScenarioError(LabError):
    """A scenario file or plan is malformed, or a step cannot be carried out."""


class RunDirError(LabError):
    """A run directory is missing files or has malformed ones."""


class GuestTimeout(LabError):
    """The guest did not print what was awaited in time.

    Carries what was awaited, the timeout and the tail of the serial log.
    """

    def __init__(self, awaited: str, timeout: float, serial_tail: str) -> None:
        self.awaited = awaited
        self.timeout = timeout
        self.serial_tail = serial_tail
        super().__init__(
            f"guest did not show {awaited!r} within {timeout:g} s; last serial output:\n{serial_tail}"
        )


class GuestPanicked(LabError):
    """The guest kernel panicked where no panic was asked for (an oops at boot or in a step).

    Carries the oops's own lines (``Oops:``, ``BUG:``, ``RIP:``, the panic line) and the serial tail,
    so the one-line error says what the kernel said instead of waiting out a timeout.
    """

    def __init__(self, awaited: str, summary: list[str], serial_tail: str) -> None:
        self.awaited = awaited
        self.summary = summary
        self.serial_tail = serial_tail
        super().__init__(f"the guest kernel panicked while waiting for {awaited!r}: " + " | ".join(summary))


class GuestCommandError(LabError):
    """A shell command in the guest exited non-zero."""

    def __init__(self, command: str, status: int, output: str) -> None:
        self.command = command
        self.status = status
        self.output = output
        super().__init__(f"guest command {command!r} exited {status}: {output[-800:]}")
