"""Bounded reads: regular files only, a size cap per read, reads by offset, lines with limits."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from crash_hotplug.errors import InputFileError
from crash_hotplug.fileio import iter_lines, open_regular, read_at, read_limited, read_text_limited


def test_regular_file_reads(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"0123456789")
    assert read_limited(p, 10) == b"0123456789"
    with open_regular(p) as f:
        assert read_at(f, 3, 4, source=str(p)) == b"3456"


def test_over_limit_is_an_error_naming_the_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x" * 4097)
    with pytest.raises(InputFileError, match=r"f: larger than 4 KiB"):
        read_limited(p, 4096)


def test_sparse_4gib_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    p = tmp_path / "sparse"
    with p.open("wb") as f:
        f.truncate(4 << 30)
    with pytest.raises(InputFileError, match="larger than 4 KiB"):
        read_limited(p, 4096)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    p = tmp_path / "fifo"
    os.mkfifo(p)
    with pytest.raises(InputFileError, match=r"fifo: is a FIFO \(named pipe\), expected a regular file"):
        read_limited(p, 4096)
    with pytest.raises(InputFileError, match="FIFO"):
        list(iter_lines(p))


def test_device_directory_socket_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="/dev/zero: is a character device"):
        read_limited("/dev/zero", 4096)
    with pytest.raises(InputFileError, match="is a directory"):
        read_limited(tmp_path, 4096)
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")
    with pytest.raises(InputFileError, match="zero: is a character device"):
        open_regular(link)
    sock_path = tmp_path / "s"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(sock_path))
        with pytest.raises(InputFileError, match="is a socket"):
            read_limited(sock_path, 10)
    finally:
        s.close()


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="absent: missing"):
        read_limited(tmp_path / "absent", 10)
    with pytest.raises(InputFileError, match="not a valid file name"):
        read_limited(str(tmp_path / "a\0b"), 10)


def test_short_read_at_names_offset(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    with open_regular(p) as f, pytest.raises(InputFileError, match=r"notes: 8 bytes at offset 0x2 needed"):
        read_at(f, 2, 8, source=str(p), what="notes")
    with open_regular(p) as f, pytest.raises(InputFileError, match="file ends at 0x3"):
        read_at(f, 1 << 70, 8, source=str(p))


def test_text_and_lines(tmp_path: Path) -> None:
    p = tmp_path / "t"
    p.write_bytes(b"a\nbb\n\xff\n")
    with pytest.raises(InputFileError, match="byte 5 is not UTF-8"):
        read_text_limited(p, 100)
    it = iter_lines(p)
    assert next(it) == (1, "a")
    assert next(it) == (2, "bb")
    with pytest.raises(InputFileError, match="line 3: not text"):
        next(it)
    p.write_bytes(b"x" * 100 + b"\n")
    with pytest.raises(InputFileError, match="line 1: longer than 10 bytes"):
        list(iter_lines(p, max_line=10))
    p.write_bytes(b"abc\n" * 10)
    with pytest.raises(InputFileError, match="larger than 20 bytes"):
        list(iter_lines(p, max_bytes=20))
    assert len(list(iter_lines(p, max_bytes=40))) == 10


def test_huge_read_at_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    with open_regular(p) as f, pytest.raises(InputFileError, match="more than one read may take"):
        read_at(f, 0, 1 << 40, source=str(p))
