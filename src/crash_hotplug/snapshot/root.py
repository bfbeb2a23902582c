"""Reading procfs and sysfs files under a root directory, bounded, with errors that name the file.

Every read goes through :mod:`crash_hotplug.fileio`: regular files only (a FIFO, socket, device or
directory where a file is expected is one :class:`SnapshotError` naming the path, and a FIFO is
never opened in blocking mode), and at most :func:`limit_for` bytes per file, whatever the file's
``st_size`` claims. Files that are big on real hosts (``/proc/kallsyms``, logs) are read line by
line with :meth:`FsRoot.iter_lines`; ``/proc/kcore`` by offset with :meth:`FsRoot.open`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from crash_hotplug.errors import InputFileError, SnapshotError
from crash_hotplug.fileio import (
    SYSFS_LIMIT,
    TEXT_FILE_LIMIT,
    iter_lines,
    open_regular,
    read_limited,
)
from crash_hotplug.machine.sysfs_values import parse_decimal, parse_flag, parse_hex

__all__ = ["DMESG_LIMIT", "IOMEM_LIMIT", "KALLSYMS_LIMIT", "FsRoot", "limit_for"]

#: ``/proc/iomem``: a few hundred lines on a real host; a guest grown to 16 TiB in 128 MiB blocks
#: has ~131k System RAM lines (about 5 MiB); twice that is still far below a hostile file
IOMEM_LIMIT = 16 << 20
#: ``/proc/kallsyms``: 10-30 MiB with modules on distribution kernels
KALLSYMS_LIMIT = 256 << 20
#: a saved kernel log (``dmesg``): the ring buffer is at most 32 MiB (``CONFIG_LOG_BUF_SHIFT`` <= 25)
#: unless ``log_buf_len=`` asks for more; sosreports keep older logs next to it
DMESG_LIMIT = 64 << 20

_PROC_LIMITS = {"proc/iomem": IOMEM_LIMIT, "proc/kallsyms": KALLSYMS_LIMIT}


def limit_for(rel: str) -> int:
    """The most bytes a file at ``rel`` (relative to the root) can hold.

    A sysfs attribute or a ``/proc/sys`` value is one page (``sysfs_kf_seq_show``,
    ``proc_sys_call_handler`` print into a page); ``/proc/cmdline`` is at most
    ``COMMAND_LINE_SIZE``, also below a page.
    """
    rel = rel.lstrip("/")
    if rel in _PROC_LIMITS:
        return _PROC_LIMITS[rel]
    if rel.startswith(("sys/", "proc/sys/")) or rel == "proc/cmdline":
        return SYSFS_LIMIT
    if rel.startswith("var/log/"):
        return DMESG_LIMIT
    return TEXT_FILE_LIMIT


@dataclass(frozen=True)
class FsRoot:
    """A directory that holds ``proc/``, ``sys/`` (and ``var/log/``) as a host shows them."""

    path: Path

    def __post_init__(self) -> None:
        try:
            ok = self.path.is_dir()
        except OSError as e:
            raise SnapshotError(str(self.path), f"cannot open: {e.strerror}") from None
        if not ok:
            raise SnapshotError(str(self.path), "not a directory")

    def file(self, rel: str) -> Path:
        return self.path / rel

    def display(self, rel: str) -> str:
        return str(self.path / rel)

    def exists(self, rel: str) -> bool:
        try:
            return (self.path / rel).exists()
        except (OSError, ValueError):
            return False

    def open(self, rel: str) -> BinaryIO:
        """The regular file at ``rel`` opened for reads by offset (see :func:`~crash_hotplug.fileio.read_at`)."""
        try:
            return open_regular(self.path / rel)
        except InputFileError as e:
            raise SnapshotError(e.path, e.what) from None

    def read_bytes(self, rel: str, limit: int | None = None) -> bytes:
        """The whole file, at most ``limit`` bytes (default :func:`limit_for`)."""
        try:
            return read_limited(self.path / rel, limit_for(rel) if limit is None else limit)
        except InputFileError as e:
            raise SnapshotError(e.path, e.what) from None

    def read_text(self, rel: str, limit: int | None = None) -> str:
        raw = self.read_bytes(rel, limit)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SnapshotError(self.display(rel), f"not text (byte {e.start} is not UTF-8)") from None

    def iter_lines(self, rel: str, limit: int | None = None) -> Iterator[tuple[int, str]]:
        """``(line number, line)`` of a text file read lazily, at most ``limit`` bytes in all."""
        try:
            yield from iter_lines(self.path / rel, max_bytes=limit_for(rel) if limit is None else limit)
        except InputFileError as e:
            raise SnapshotError(e.path, e.what) from None

    def read_optional(self, rel: str, limit: int | None = None) -> str | None:
        """The file's text, or None when it does not exist (other failures still raise)."""
        if not self.exists(rel):
            return None
        return self.read_text(rel, limit)

    def read_int(self, rel: str, base: int = 10) -> int:
        """A number as a ``show`` callback prints it: ``%llx`` (base 16) or unsigned ``%u`` (base 10),
        strictly (see :mod:`crash_hotplug.machine.sysfs_values`)."""
        text = self.read_text(rel)
        try:
            return parse_hex(text, "value") if base == 16 else parse_decimal(text, "value")
        except ValueError as e:
            raise SnapshotError(self.display(rel), str(e).removeprefix("value: ")) from None

    def read_flag(self, rel: str) -> bool | None:
        """A ``0``/``1`` attribute; None when the file does not exist (the kernel lacks it).
        Anything but ``0`` or ``1`` is an error: a value we cannot trust is not a "no"."""
        text = self.read_optional(rel)
        if text is None:
            return None
        try:
            return parse_flag(text)
        except ValueError as e:
            raise SnapshotError(self.display(rel), str(e).removeprefix("flag: ")) from None

    def read_optional_int(self, rel: str, base: int = 10) -> int | None:
        """:meth:`read_int`, or None when the file does not exist."""
        return self.read_int(rel, base) if self.exists(rel) else None

