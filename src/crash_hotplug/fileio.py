"""Bounded reads of input files: regular files only, a size cap per read, reads by offset.

Every reader of a file the user names (a snapshot root's procfs/sysfs copies, raw headers,
vmcores, step and cost files, logs) goes through here, so that a hostile or careless input
cannot hang the program or exhaust its memory:

* :func:`open_regular` refuses anything but a regular file (a FIFO, socket, character or block
  device, or a directory) with one :class:`~crash_hotplug.errors.InputFileError` naming the
  path. It checks with ``os.stat`` before opening and opens with ``O_NONBLOCK``, so a FIFO
  swapped in between the two cannot block the ``open``; the check is repeated on the open
  descriptor.
* :func:`read_limited` reads a whole file of at most ``limit`` bytes. It never trusts
  ``st_size`` (procfs files report 0, sysfs attributes 4096): it reads ``limit + 1`` bytes and
  fails when it got them.
* :func:`read_at` reads ``size`` bytes at ``offset`` of an open file, failing on a short read;
  :func:`file_size` gives the size to check offsets against.
* :func:`iter_lines` yields decoded lines one at a time with a cap on the line length and on
  the total bytes, for files that are big on real hosts (``/proc/kallsyms``, logs).

Limits a reader can use are the module constants below.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from crash_hotplug.errors import InputFileError

__all__ = [
    "LOG_LIMIT",
    "READ_AT_LIMIT",
    "SYSFS_LIMIT",
    "TEXT_FILE_LIMIT",
    "file_size",
    "iter_lines",
    "open_regular",
    "read_at",
    "read_limited",
    "read_text_limited",
]

#: a sysfs attribute's ``show`` fills at most one page (``fs/sysfs/file.c: sysfs_kf_seq_show``)
SYSFS_LIMIT = 4096
#: a JSON or text data file written by hand or by us (steps, costs, rule files)
TEXT_FILE_LIMIT = 16 << 20
#: a kernel log or uevent log read line by line
LOG_LIMIT = 256 << 20
#: the most one :func:`read_at` returns (program headers and notes are far smaller)
READ_AT_LIMIT = 64 << 20
_CHUNK = 1 << 20


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in the words the error uses; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def _oserror(path: str, e: OSError) -> InputFileError:
    if isinstance(e, FileNotFoundError):
        return InputFileError(path, "missing (cannot read: no such file or directory)")
    if isinstance(e, PermissionError):
        return InputFileError(path, "not readable (permission denied; read it as root)")
    return InputFileError(path, f"cannot read: {e.strerror or e}")


def open_regular(path: Path | str) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file (symlinks followed).

    Raises :class:`InputFileError` naming the path when it is missing, unreadable or not a
    regular file. Never blocks on a FIFO.
    """
    name = str(path)
    try:
        kind = _kind(os.stat(name).st_mode)
    except OSError as e:
        raise _oserror(name, e) from None
    except ValueError:  # an embedded NUL byte in the name
        raise InputFileError(name, "not a valid file name") from None
    if kind is not None:
        raise InputFileError(name, f"is {kind}, expected a regular file")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _oserror(name, e) from None
    try:
        kind = _kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise InputFileError(name, f"is {kind}, expected a regular file")
        # O_NONBLOCK has no effect on a regular file; drop it so reads behave plainly.
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_size(f: BinaryIO) -> int:
    """The size of an open regular file in bytes."""
    return os.fstat(f.fileno()).st_size


def read_at(f: BinaryIO, offset: int, size: int, *, source: str, what: str = "data") -> bytes:
    """Exactly ``size`` bytes at ``offset`` of ``f``; :class:`InputFileError` on a short read."""
    if offset < 0 or size < 0:
        raise InputFileError(source, f"{what}: negative offset {offset} or size {size}")
    if size > READ_AT_LIMIT:
        raise InputFileError(source, f"{what}: {size} bytes at offset {offset:#x}: more than one read may take")
    end = file_size(f)
    if end and offset + size > end:  # procfs files report 0: then the read says
        raise InputFileError(
            source, f"{what}: {size} bytes at offset {offset:#x} needed, the file ends at {end:#x}"
        )
    try:
        f.seek(offset)
        data = f.read(size)
    except OSError as e:
        raise _oserror(source, e) from None
    except (OverflowError, ValueError):
        raise InputFileError(source, f"{what}: offset {offset:#x} out of range") from None
    if len(data) != size:
        raise InputFileError(
            source, f"{what}: {size} bytes at offset {offset:#x} needed, the file ends at {offset + len(data):#x}"
        )
    return data


def read_limited(path: Path | str, limit: int) -> bytes:
    """The whole content of the regular file ``path``, which must hold at most ``limit`` bytes."""
    name = str(path)
    chunks: list[bytes] = []
    got = 0
    with open_regular(name) as f:
        while got <= limit:
            try:
                chunk = f.read(min(_CHUNK, limit + 1 - got))
            except OSError as e:
                raise _oserror(name, e) from None
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    data = b"".join(chunks)
    if len(data) > limit:
        raise InputFileError(name, f"larger than {_limit_text(limit)}: not what this file can hold")
    return data


def read_text_limited(path: Path | str, limit: int) -> str:
    """:func:`read_limited`, decoded as UTF-8 (an error naming the first bad byte otherwise)."""
    raw = read_limited(path, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputFileError(str(path), f"not text (byte {e.start} is not UTF-8)") from None


def iter_lines(
    path: Path | str, *, max_bytes: int = LOG_LIMIT, max_line: int = 64 << 10, errors: str = "strict"
) -> Iterator[tuple[int, str]]:
    """``(line number, line without its newline)`` for each line of a regular file, read lazily.

    Raises :class:`InputFileError` when a line is longer than ``max_line`` bytes, the file is
    longer than ``max_bytes``, or (with ``errors="strict"``) a line is not UTF-8.
    """
    name = str(path)
    total = 0
    with open_regular(name) as f:
        lineno = 0
        while True:
            try:
                raw = f.readline(max_line + 1)
            except OSError as e:
                raise _oserror(name, e) from None
            if not raw:
                return
            lineno += 1
            total += len(raw)
            if len(raw) > max_line and not raw.endswith(b"\n"):
                raise InputFileError(name, f"line {lineno}: longer than {_limit_text(max_line)}")
            if total > max_bytes:
                raise InputFileError(name, f"larger than {_limit_text(max_bytes)}: not what this file can hold")
            try:
                text = raw.decode("utf-8", errors)
            except UnicodeDecodeError as e:
                raise InputFileError(name, f"line {lineno}: not text (byte {e.start} is not UTF-8)") from None
            yield lineno, text.rstrip("\n")


def _limit_text(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"
