"""What a kernel is, read from its own files: the bzImage's version string and its ``.config``.

The version string comes from the x86 boot protocol's setup header (``arch/x86/boot/header.S``:
``HdrS`` at 0x202, the ``kernel_version`` pointer at 0x20e, relative to 0x200), so a bzImage of
any origin names its release without being booted. The config is the ``Kconfig`` output format
(``scripts/kconfig/confdata.c``): ``CONFIG_X=value`` or ``# CONFIG_X is not set``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from crash_hotplug.lab.errors import KernelFetchError

__all__ = [
    "CRASH_HOTPLUG_SINCE",
    "KernelConfig",
    "bzimage_version",
    "hotplug_verdict",
    "release_major_minor",
]

# CONFIG_CRASH_HOTPLUG (and the in-kernel elfcorehdr update) came in Linux 6.5.
CRASH_HOTPLUG_SINCE = (6, 5)
_SETUP_MAGIC_OFF = 0x202
_KERNEL_VERSION_OFF = 0x20E


def bzimage_version(path: Path) -> str:
    """The version string a bzImage carries (``7.3.4+deb13-amd64 (debian-kernel@...) #1 SMP ...``).

    Raises ``KernelFetchError`` naming the file when it is not an x86 bzImage.
    """
    try:
        with path.open("rb") as f:
            head = f.read(0x10000)
    except OSError as exc:
        raise KernelFetchError(f"{path}: cannot read ({exc.strerror})") from exc
    if len(head) < 0x210 or head[_SETUP_MAGIC_OFF : _SETUP_MAGIC_OFF + 4] != b"HdrS":
        raise KernelFetchError(f"{path}: not an x86 bzImage (no 'HdrS' boot header at 0x202)")
    (ptr,) = struct.unpack_from("<H", head, _KERNEL_VERSION_OFF)
    off = ptr + 0x200
    if ptr == 0 or off >= len(head):
        raise KernelFetchError(f"{path}: the boot header has no kernel version string")
    text = head[off : off + 256].split(b"\0", 1)[0].decode("ascii", "replace").strip()
    if not text or not text[0].isdigit():
        raise KernelFetchError(f"{path}: the boot header's kernel version string is unreadable ({text!r})")
    return text


def release_major_minor(release: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a release such as ``6.1.0-50-amd64`` or ``7.3.4+deb13-amd64``."""
    m = re.match(r"([0-9]+)\.([0-9]+)", release)
    return (int(m[1]), int(m[2])) if m else None


@dataclass(frozen=True)
class KernelConfig:
    """A kernel ``.config``: every ``CONFIG_`` option set, and those explicitly not set."""

    path: Path
    values: dict[str, str] = field(default_factory=dict)
    not_set: frozenset[str] = frozenset()

    @classmethod
    def read(cls, path: Path) -> KernelConfig:
        try:
            raw = path.read_bytes()[: 8 << 20]
        except OSError as exc:
            raise KernelFetchError(f"{path}: cannot read the kernel config ({exc.strerror})") from exc
        return cls.parse(raw.decode("utf-8", "replace"), path)

    @classmethod
    def parse(cls, text: str, path: Path) -> KernelConfig:
        values: dict[str, str] = {}
        not_set: set[str] = set()
        for line in text.splitlines():
            line = line.strip()
            if m := re.fullmatch(r"(CONFIG_\w+)=(.*)", line):
                values[m[1]] = m[2].strip('"')
            elif m := re.fullmatch(r"# (CONFIG_\w+) is not set", line):
                not_set.add(m[1])
        if not values:
            raise KernelFetchError(f"{path}: not a kernel config (no CONFIG_ lines)")
        return cls(path, values, frozenset(not_set))

    def option(self, name: str) -> bool | None:
        """``True`` for ``=y``, ``False`` for not set (or absent where its neighbours are present),
        ``None`` when the config does not mention the option at all."""
        if name in self.values:
            return self.values[name] in ("y", "m")
        if name in self.not_set:
            return False
        return None

    @property
    def crash_hotplug(self) -> bool | None:
        return self.option("CONFIG_CRASH_HOTPLUG")

    @property
    def nr_cpus(self) -> int | None:
        v = self.values.get("CONFIG_NR_CPUS")
        return int(v) if v and v.isdigit() else None

    def summary(self) -> dict[str, str | int | None]:
        return {
            "CONFIG_CRASH_DUMP": self.values.get("CONFIG_CRASH_DUMP"),
            "CONFIG_KEXEC_FILE": self.values.get("CONFIG_KEXEC_FILE"),
            "CONFIG_CRASH_HOTPLUG": self.values.get("CONFIG_CRASH_HOTPLUG"),
            "CONFIG_CRASH_MAX_MEMORY_RANGES": self.values.get("CONFIG_CRASH_MAX_MEMORY_RANGES"),
            "CONFIG_NR_CPUS": self.nr_cpus,
            "CONFIG_MEMORY_HOTPLUG": self.values.get("CONFIG_MEMORY_HOTPLUG"),
            "CONFIG_HOTPLUG_CPU": self.values.get("CONFIG_HOTPLUG_CPU"),
        }


def hotplug_verdict(release: str, config: KernelConfig | None) -> tuple[str, str | None]:
    """How the lab runs a kernel: ``(mode, refusal)``.

    ``mode`` is ``in-kernel`` (CONFIG_CRASH_HOTPLUG=y), ``legacy`` (a kernel older than 6.5, the
    udev-reload baseline), or ``unknown`` (no config to read). ``refusal`` is one sentence when the
    kernel cannot serve the lab at all: no kdump (CONFIG_CRASH_DUMP, CONFIG_KEXEC_FILE), or a 6.5+
    kernel built without CONFIG_CRASH_HOTPLUG, which leaves nothing of crash hotplug to test.
    """
    mm = release_major_minor(release)
    if config is None:
        return "unknown", None
    where = str(config.path)
    for opt in ("CONFIG_CRASH_DUMP", "CONFIG_KEXEC_FILE"):
        if config.option(opt) is not True:
            return "none", f"{where}: {opt} is not set in kernel {release}: it cannot load a crash kernel"
    if config.crash_hotplug is True:
        return "in-kernel", None
    if mm is not None and mm < CRASH_HOTPLUG_SINCE:
        return "legacy", None
    return "none", (
        f"{where}: CONFIG_CRASH_HOTPLUG is not set in kernel {release} ({'.'.join(map(str, mm or ()))}, "
        "which has the option): it cannot update its elfcorehdr, so there is no crash hotplug to test"
    )
