"""Reading procfs and sysfs files under a root directory, with errors that name the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crash_hotplug.errors import SnapshotError

__all__ = ["FsRoot"]


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
        return (self.path / rel).exists()

    def read_bytes(self, rel: str) -> bytes:
        p = self.path / rel
        try:
            return p.read_bytes()
        except FileNotFoundError:
            raise SnapshotError(str(p), "missing") from None
        except PermissionError:
            raise SnapshotError(str(p), "not readable (permission denied; read it as root)") from None
        except OSError as e:
            raise SnapshotError(str(p), f"cannot read: {e.strerror}") from None

    def read_text(self, rel: str) -> str:
        raw = self.read_bytes(rel)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SnapshotError(self.display(rel), f"not text (byte {e.start} is not UTF-8)") from None

    def read_optional(self, rel: str) -> str | None:
        """The file's text, or None when it does not exist (other failures still raise)."""
        if not (self.path / rel).exists():
            return None
        return self.read_text(rel)

    def read_int(self, rel: str, base: int = 10) -> int:
        text = self.read_text(rel).strip()
        try:
            return int(text, base)
        except ValueError:
            kind = "hex" if base == 16 else "decimal"
            raise SnapshotError(self.display(rel), f"expected a {kind} number, found {text[:40]!r}") from None
