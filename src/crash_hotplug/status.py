"""Is kdump ready for hotplug on this machine? The facts behind ``crash-hotplug status``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crash_hotplug.crash.x86_64 import (
    arch_crash_get_elfcorehdr_size,
    crash_load_segments_memsz,
    prepare_elf_headers,
)
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.legacy.udev import HotplugEvent, evaluate, load_rules
from crash_hotplug.snapshot.reader import CPU_DIR, MEM_DIR, read_kernel_state
from crash_hotplug.snapshot.root import FsRoot

__all__ = ["HOTPLUG_EVENTS", "KdumpStatus", "UdevVerdict", "kdump_status"]

PAGE_SIZE = 4096

#: (subsystem, action, device) of the uevents a hotplug produces
HOTPLUG_EVENTS = (
    ("cpu", "add", "cpu4"),
    ("cpu", "remove", "cpu4"),
    ("cpu", "online", "cpu4"),
    ("cpu", "offline", "cpu4"),
    ("memory", "add", "memory40"),
    ("memory", "online", "memory40"),
    ("memory", "offline", "memory40"),
    ("memory", "remove", "memory40"),
)


@dataclass
class UdevVerdict:
    subsystem: str
    action: str
    reloads: bool
    by: list[str]


@dataclass
class KdumpStatus:
    root: str
    kernel_release: str | None
    crash_loaded: bool | None
    crash_size: int | None
    cpu_crash_hotplug: int | None
    memory_crash_hotplug: int | None
    header_used: int | None = None
    header_bufsz: int | None = None
    header_ranges: int | None = None
    segment_memsz: int | None = None
    sysfs_elfcorehdr_size: int | None = None
    udev: list[UdevVerdict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def headroom_phdrs(self) -> int | None:
        if self.header_used is None or self.segment_memsz is None:
            return None
        return (self.segment_memsz - self.header_used) // 56

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["headroom_phdrs"] = self.headroom_phdrs
        return d


def _read_flag(root: FsRoot, rel: str) -> int | None:
    text = root.read_optional(rel)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def kdump_status(root_dir: Path) -> KdumpStatus:
    """Collect the status; parts that cannot be read become ``problems``, not exceptions."""
    root = FsRoot(root_dir)
    release = root.read_optional("proc/sys/kernel/osrelease")
    st = KdumpStatus(
        root=str(root_dir),
        kernel_release=release.strip() if release else None,
        crash_loaded=bool(_read_flag(root, "sys/kernel/kexec_crash_loaded"))
        if root.exists("sys/kernel/kexec_crash_loaded") else None,
        crash_size=_read_flag(root, "sys/kernel/kexec_crash_size"),
        cpu_crash_hotplug=_read_flag(root, f"{CPU_DIR}/crash_hotplug"),
        memory_crash_hotplug=_read_flag(root, f"{MEM_DIR}/crash_hotplug"),
        sysfs_elfcorehdr_size=_read_flag(root, "sys/kernel/crash_elfcorehdr_size"),
    )
    try:
        state = read_kernel_state(root_dir)
        buf, nr = prepare_elf_headers(state)
        st.header_used = ElfCore.parse(buf).used_size
        st.header_bufsz = len(buf)
        st.header_ranges = nr
        memsz = crash_load_segments_memsz(state.config, len(buf), nr)
        st.segment_memsz = -(-memsz // PAGE_SIZE) * PAGE_SIZE
        if state.config.crash_hotplug and st.sysfs_elfcorehdr_size is None:
            st.sysfs_elfcorehdr_size = arch_crash_get_elfcorehdr_size(state.config)
    except CrashHotplugError as e:
        st.problems.append(f"cannot build the header: {e}")
    try:
        rules = load_rules(root_dir)
    except CrashHotplugError as e:
        st.problems.append(str(e))
        rules = []
    for subsystem, action, dev in HOTPLUG_EVENTS:
        flag = st.cpu_crash_hotplug if subsystem == "cpu" else st.memory_crash_hotplug
        attrs = {} if flag is None else {"crash_hotplug": str(flag)}
        res = evaluate(rules, HotplugEvent(subsystem, action, dev, attrs))
        by = [f"{where}: {cmd}" for where, cmd in res.runs if res.reloads_kdump]
        st.udev.append(UdevVerdict(subsystem, action, res.reloads_kdump, by))
    return st
