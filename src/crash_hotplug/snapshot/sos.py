"""A root as the facts it holds: a live host, a snapshot, or an extracted sosreport.

A sosreport (sos 4.x) keeps copies of files at their Linux paths (``proc/``, ``sys/``, ``etc/``,
``lib/udev`` or ``usr/lib/udev``) and command output under ``sos_commands/<plugin>/``. What the
kernel version and the kernel log are read from, in order:

==================  ==========================================================================
kernel release      ``proc/sys/kernel/osrelease``; ``sos_commands/kernel/uname_-a`` (3rd field)
kernel log          ``var/log/dmesg``; ``sos_commands/kernel/dmesg``; ``sos_commands/logs/
                    journalctl_--no-pager_--catalog_--boot`` is not a kernel log and is not used
==================  ==========================================================================

A file a sosreport does not have was not collected: its value is *unknown*. On a live host or in
a snapshot a file that does not exist is *absent* (the kernel does not provide it), unless the
snapshot's manifest lists it as unreadable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from crash_hotplug.errors import InputFileError, SnapshotError
from crash_hotplug.facts import ABSENT, Lookup
from crash_hotplug.fileio import read_text_limited
from crash_hotplug.machine.kernel import KernelState
from crash_hotplug.snapshot.reader import DMESG, RULE_DIRS, read_kernel_state
from crash_hotplug.snapshot.root import FsRoot, limit_for

__all__ = ["SNAPSHOT_MANIFEST", "SOS_DMESG", "SOS_UNAME", "HostRoot", "SosRoot", "fs_root", "is_sosreport", "open_root"]

SNAPSHOT_MANIFEST = "crash-hotplug-snapshot.json"
SOS_UNAME = "sos_commands/kernel/uname_-a"
SOS_DMESG = "sos_commands/kernel/dmesg"
#: what marks a directory as an extracted sosreport (besides sos_commands/)
_SOS_MARKS = ("sos_reports", "sos_logs", "version.txt", "sos_strings")
#: largest text file read from a root (kernel logs of long-running hosts are a few MiB)
MAX_TEXT = 64 << 20


def is_sosreport(path: Path) -> bool:
    """Whether ``path`` is an extracted sosreport: ``sos_commands/`` plus one of sos's own files."""
    return (path / "sos_commands").is_dir() and any((path / m).exists() for m in _SOS_MARKS)


def _uname_release(text: str) -> str | None:
    words = text.split()
    return words[2] if len(words) >= 3 and words[0] == "Linux" else None


class SosRoot(FsRoot):
    """An extracted sosreport read as a root: the files sos copied, plus the facts sos keeps as
    command output presented at the Linux path they stand for (``proc/sys/kernel/osrelease`` from
    ``uname -a``, ``var/log/dmesg`` from the kernel plugin's ``dmesg``)."""

    def _source(self, rel: str) -> str:
        """Where sos keeps ``rel``: the copied file when there is one, else sos's command output."""
        if rel == DMESG and not super().exists(rel) and super().exists(SOS_DMESG):
            return SOS_DMESG
        return rel

    def _release(self, rel: str) -> bytes | None:
        if rel == "proc/sys/kernel/osrelease" and not super().exists(rel) and super().exists(SOS_UNAME):
            release = _uname_release(super().read_text(SOS_UNAME))
            return None if release is None else (release + "\n").encode()
        return None

    def exists(self, rel: str) -> bool:
        return super().exists(self._source(rel)) or self._release(rel) is not None

    def read_bytes(self, rel: str, limit: int | None = None) -> bytes:
        got = self._release(rel)
        if got is not None:
            return got
        src = self._source(rel)
        if not super().exists(src):
            raise SnapshotError(self.display(rel), "not collected by this sosreport")
        return super().read_bytes(src, limit_for(rel) if limit is None else limit)

    def iter_lines(self, rel: str, limit: int | None = None) -> Iterator[tuple[int, str]]:
        src = self._source(rel)
        if not super().exists(src) and self._release(rel) is None:
            raise SnapshotError(self.display(rel), "not collected by this sosreport")
        if self._release(rel) is not None:
            yield 1, self.read_text(rel).rstrip("\n")
            return
        yield from super().iter_lines(src, limit_for(rel) if limit is None else limit)

    def display(self, rel: str) -> str:
        if rel == "proc/sys/kernel/osrelease" and not super().exists(rel) and super().exists(SOS_UNAME):
            return str(self.path / SOS_UNAME)
        return super().display(self._source(rel))


@dataclass
class HostRoot:
    """The facts of one root, each known, absent, or unknown with the reason."""

    path: Path
    kind: str
    fs: FsRoot
    unreadable: set[str] = field(default_factory=set)

    def lookup(self, rel: str) -> Lookup:
        """The file's text; :data:`ABSENT` when the kernel does not have it; None when unknown."""
        if rel in self.unreadable:
            return None
        try:
            if not self.fs.exists(rel):
                return None if self.kind == "sosreport" else ABSENT
            raw = self.fs.read_bytes(rel)
        except SnapshotError:
            return None
        if len(raw) > MAX_TEXT:
            return None
        return raw.decode("utf-8", errors="replace")

    def lookup_exists(self, rel: str) -> bool | None:
        if rel in self.unreadable:
            return None
        if self.fs.exists(rel):
            return True
        return None if self.kind == "sosreport" else False

    def why_unknown(self, rel: str) -> str:
        if rel in self.unreadable:
            return f"/{rel} was unreadable when the snapshot was taken"
        if self.kind == "sosreport":
            return f"/{rel} was not collected by this sosreport"
        return f"/{rel} is missing"

    def kernel_release(self) -> str | None:
        got = self.lookup("proc/sys/kernel/osrelease")
        return got.strip() or None if isinstance(got, str) else None

    def dmesg(self) -> str | None:
        got = self.lookup(DMESG)
        return got if isinstance(got, str) else None

    def has_rule_dirs(self) -> bool:
        """Whether the root holds any udev rule directory (a live host without one has no rules)."""
        return self.kind != "sosreport" or any((self.path / d).is_dir() for d in RULE_DIRS)

    def kernel_state(self, kernel_version: str | None = None) -> KernelState:
        return read_kernel_state(self.fs, kernel_version=kernel_version)


def fs_root(path: Path) -> FsRoot:
    """The files of the root at ``path``, read where sos keeps them when it is a sosreport."""
    return SosRoot(path) if FsRoot(path) and is_sosreport(path) else FsRoot(path)


def open_root(path: Path) -> HostRoot:
    """The root at ``path``: a sosreport (detected by its layout), a snapshot (it has the
    snapshot manifest), the live host (``/``), or any other tree."""
    path = Path(path)
    fs = FsRoot(path)  # raises SnapshotError when not a directory
    if is_sosreport(path):
        return HostRoot(path, "sosreport", SosRoot(path))
    manifest = path / SNAPSHOT_MANIFEST
    if manifest.is_file():
        try:
            data = json.loads(read_text_limited(manifest, limit_for(SNAPSHOT_MANIFEST)))
        except InputFileError as e:
            raise SnapshotError(e.path, e.what) from None
        except (OSError, ValueError, RecursionError):
            raise SnapshotError(str(manifest), "not a snapshot manifest (bad JSON)") from None
        unreadable = data.get("unreadable_files", []) if isinstance(data, dict) else []
        return HostRoot(path, "snapshot", fs, {str(u) for u in unreadable if isinstance(u, str)})
    kind = "live" if path.resolve() == Path("/") else "tree"
    return HostRoot(path, kind, fs)
