"""The project's error hierarchy: every failure is a named exception carrying its context.

The CLI turns any :class:`CrashHotplugError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

__all__ = [
    "CrashHotplugError",
    "DumpFormatError",
    "ElfFormatError",
    "FdtFormatError",
    "InputFileError",
    "MissingCodecError",
    "SnapshotError",
]


class CrashHotplugError(Exception):
    """Base class for every error this package raises on bad input or bad state."""


class ElfFormatError(CrashHotplugError):
    """A truncated or inconsistent ELF core file or elfcorehdr.

    ``source`` names the file (or "<bytes>"), ``offset`` the byte offset where reading
    failed and ``what`` says what was wrong there.
    """

    def __init__(self, what: str, *, offset: int, source: str = "<bytes>") -> None:
        self.what = what
        self.offset = offset
        self.source = source
        super().__init__(f"{source}: at offset {offset:#x}: {what}")

    def with_source(self, source: str) -> ElfFormatError:
        """The same error, naming the file it came from."""
        return ElfFormatError(self.what, offset=self.offset, source=source)


class FdtFormatError(CrashHotplugError):
    """A truncated or inconsistent flattened device tree blob (same fields as :class:`ElfFormatError`)."""

    def __init__(self, what: str, *, offset: int, source: str = "<bytes>") -> None:
        self.what = what
        self.offset = offset
        self.source = source
        super().__init__(f"{source}: at offset {offset:#x}: {what}")


class InputFileError(CrashHotplugError):
    """A file the user named that cannot be read within bounds: missing, unreadable, not a regular
    file (a FIFO, socket, device or directory), larger than its format allows, or short.

    ``path`` names the file, ``what`` says what was wrong (see :mod:`crash_hotplug.fileio`).
    """

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        super().__init__(f"{path}: {what}")


class SnapshotError(CrashHotplugError):
    """A machine-state file under a root that is missing, unreadable or malformed.

    ``path`` is the file as the kernel names it (e.g. ``/proc/iomem``) joined to the root.
    """

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        super().__init__(f"{path}: {what}")


class DumpFormatError(CrashHotplugError):
    """A truncated, corrupted or inconsistent makedumpfile file (kdump-compressed or flattened).

    ``fmt`` names the format ("kdump-compressed", "flattened"), ``offset`` the byte offset in
    that format's file where reading failed, ``what`` what was wrong there.
    """

    def __init__(self, what: str, *, fmt: str, offset: int, source: str = "<bytes>") -> None:
        self.what = what
        self.fmt = fmt
        self.offset = offset
        self.source = source
        super().__init__(f"{source}: {fmt}: at offset {offset:#x}: {what}")

    def with_source(self, source: str) -> DumpFormatError:
        return DumpFormatError(self.what, fmt=self.fmt, offset=self.offset, source=source)


class MissingCodecError(CrashHotplugError):
    """A page is compressed with a codec whose Python package is not installed."""
