"""The guest's serial console: a reader thread, a log file, and a shell driven line by line.

The guest's ``/init`` (``initramfs.py``) leaves ``sh`` on ``ttyS0`` with echo off. A command is
sent as ``echo @@B<n>; { CMD; } 2>&1; echo "@@E<n> $?"`` and its output is what comes between the
two marks. Every wait has a timeout and raises ``GuestTimeout`` with the tail of the serial log; a
kernel panic the caller did not ask for ends the wait at once with ``GuestPanicked``.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import threading
import time
from pathlib import Path

from crash_hotplug.lab.errors import GuestCommandError, GuestPanicked, GuestTimeout, QemuError

__all__ = ["SerialConsole", "oops_summary", "parse_snapshot_stream"]

_OVERLAP = 4096
#: the last line of a panic (kernel/panic.c ``panic``), printed once the panic message is out
_PANIC_END_RE = re.compile(r"^.*---\[ end Kernel panic - not syncing: .*$", re.M)
#: the lines of an oops that say what happened (arch/x86/kernel/dumpstack.c, lib/bug.c, kernel/panic.c)
_OOPS_LINE_RE = re.compile(
    r"^.*(?:Oops:|BUG:|kernel BUG at|general protection fault|RIP: |NIP |Kernel panic - not syncing:).*$", re.M
)


def oops_summary(text: str, limit: int = 6) -> list[str]:
    """The first lines of ``text`` that say what an oops or panic was (timestamps dropped)."""
    out: list[str] = []
    for m in _OOPS_LINE_RE.finditer(text):
        line = re.sub(r"^\s*\[\s*[0-9.]+\]\s*", "", m.group(0)).strip()
        if line and "---[ end " not in line and line not in out:
            out.append(line)
        if len(out) >= limit:
            break
    return out


class SerialConsole:
    """QEMU's ``-serial`` chardev socket, read continuously into memory and ``log_path``."""

    def __init__(self, sock_path: Path, log_path: Path, connect_timeout: float = 10.0) -> None:
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._closed = False
        self._cursor = 0
        self._seq = 0
        self._log = log_path.open("ab")
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.connect(str(sock_path))
                break
            except OSError as exc:
                self._sock.close()
                if time.monotonic() > deadline:
                    raise QemuError(f"cannot connect to the serial socket {sock_path}: {exc}") from exc
                time.sleep(0.05)
        self._thread = threading.Thread(target=self._reader, name="serial-reader", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    break
                self._log.write(data)
                self._log.flush()
                with self._cond:
                    self._buf += data
                    self._cond.notify_all()
        except OSError:
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=2)
        self._log.close()

    # -- reading -------------------------------------------------------------------------

    @property
    def position(self) -> int:
        with self._cond:
            return len(self._buf)

    def text(self, start: int = 0) -> str:
        with self._cond:
            return self._buf[start:].decode("utf-8", "replace")

    def _buf_slice(self, start: int, end: int) -> str:
        with self._cond:
            return self._buf[start:end].decode("latin-1")

    def tail(self, n: int = 2000) -> str:
        with self._cond:
            return self._buf[-n:].decode("utf-8", "replace")

    def wait_for(
        self, pattern: str, timeout: float, start: int | None = None, panic_ok: bool = False
    ) -> re.Match[str]:
        """Wait until ``pattern`` (a multiline regex) matches serial output after ``start``.

        ``start`` defaults to the console's cursor, which moves past each match. Output is scanned
        incrementally (with a 4 KiB overlap), so a match must fit in 4 KiB of new output. Unless
        ``panic_ok``, the end of a kernel panic in that output raises ``GuestPanicked``.
        """
        rx = re.compile(pattern, re.M)
        begin = self._cursor if start is None else start
        scan = begin
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                end = len(self._buf)
                window_start = max(begin, scan - _OVERLAP)
                window = bytes(self._buf[window_start:end])
                m = rx.search(window.decode("latin-1"))
                if m:
                    self._cursor = window_start + m.end()
                    return m
                if not panic_ok and _PANIC_END_RE.search(window.decode("latin-1")):
                    seen = self._buf[begin:end].decode("utf-8", "replace")
                    raise GuestPanicked(pattern, oops_summary(seen), self._buf[-3000:].decode("utf-8", "replace"))
                scan = end
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    tail = self._buf[-3000:].decode("utf-8", "replace")
                    why = "serial closed" if self._closed else "timeout"
                    raise GuestTimeout(f"{pattern} ({why})", timeout, tail)
                self._cond.wait(min(remaining, 0.5))

    # -- the shell -----------------------------------------------------------------------

    def send(self, line: str) -> None:
        try:
            self._sock.sendall(line.encode() + b"\n")
        except OSError as exc:
            raise QemuError(f"serial socket write failed: {exc}") from exc

    def run(self, command: str, timeout: float = 60.0, check: bool = True) -> tuple[int, str]:
        """Run ``command`` in the guest shell; returns (exit status, output)."""
        self._seq += 1
        tag = f"{self._seq}x{int(time.monotonic() * 1000) % 100000}"
        start = self.position
        self.send(f'echo @@B{tag}; {{ {command}\n}} 2>&1; echo "@@E{tag} $?"')
        m = self.wait_for(rf"^@@E{tag} (?P<rc>[0-9]+)\r?$", timeout, start)
        body = self._buf_slice(start, self._cursor)
        begin_mark = f"@@B{tag}\n"
        out = body[body.index(begin_mark) + len(begin_mark) : body.rindex(f"@@E{tag} ")]
        rc = int(m["rc"])
        if check and rc != 0:
            raise GuestCommandError(command, rc, out)
        return rc, out

    def read_file(self, path: str, timeout: float = 60.0) -> bytes:
        """The exact bytes of a guest file, sent as base64."""
        _rc, out = self.run(f"base64 {path}", timeout)
        return base64.b64decode("".join(out.split()))


def parse_snapshot_stream(text: str) -> tuple[dict[str, bytes], list[str]]:
    """Decode ``/bin/snap`` output: ``{guest path: bytes}`` and the paths that could not be read."""
    files: dict[str, bytes] = {}
    unreadable: list[str] = []
    current: str | None = None
    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if line.startswith("@@F "):
            current, lines = line[4:], []
        elif line.startswith("@@E ") and current is not None:
            if line == "@@E ok":
                files[current] = base64.b64decode("".join(lines))
            else:
                unreadable.append(current)
            current = None
        elif current is not None:
            lines.append(line.strip())
    return files, unreadable
