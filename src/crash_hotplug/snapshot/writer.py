"""The one snapshot writer: the machine-state files a kdump tool reads, at their Linux paths (the
layout of ../shared/vectors), from a live host or any root (copied exactly as read) or from a model
:class:`~crash_hotplug.machine.machine.Machine` (the text the kernel would print, see
:mod:`crash_hotplug.snapshot.model`).

A root's snapshot keeps what it can: every CPU folder with the files that exist, and a "could not
see" list naming every file the header builder needs that is missing or unreadable, and why (not
root: ``/proc/iomem`` and ``/proc/kallsyms`` read as zeros, ``crash_notes`` and ``/proc/kcore`` are
mode 0400; kernel without the feature; not present). The list is also in the snapshot's manifest,
so a reader of the snapshot knows which files are unknown rather than absent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from crash_hotplug.elf.core import ElfCore
from crash_hotplug.errors import ElfFormatError, InputFileError, SnapshotError
from crash_hotplug.fileio import read_limited
from crash_hotplug.machine.machine import Machine
from crash_hotplug.snapshot.model import write_machine_files
from crash_hotplug.snapshot.reader import CPU_DIR, DMESG, MEM_DIR, RULE_DIRS
from crash_hotplug.snapshot.root import limit_for
from crash_hotplug.snapshot.sos import SNAPSHOT_MANIFEST

__all__ = ["SNAPSHOT_MANIFEST", "SnapshotReport", "write_snapshot"]

#: files the header builder needs, and why a kernel may not have them
_NEEDED = {
    "proc/iomem": "not present",
    "proc/sys/kernel/osrelease": "not present",
    f"{CPU_DIR}/possible": "not present",
    f"{CPU_DIR}/present": "not present",
    f"{CPU_DIR}/online": "not present",
    f"{CPU_DIR}/kernel_max": "not present",
    f"{CPU_DIR}/crash_hotplug": "kernel without CONFIG_CRASH_HOTPLUG (before 6.6, or not configured)",
    f"{MEM_DIR}/crash_hotplug": "kernel without CONFIG_CRASH_HOTPLUG or without memory hotplug",
    f"{MEM_DIR}/block_size_bytes": "kernel without CONFIG_MEMORY_HOTPLUG",
    "sys/kernel/vmcoreinfo": "kernel without CONFIG_VMCORE_INFO (CONFIG_CRASH_CORE before 6.9)",
    "sys/kernel/kexec_crash_loaded": "kernel without CONFIG_KEXEC_CORE",
    "sys/kernel/kexec_crash_size": "kernel without CONFIG_KEXEC_CORE",
    "sys/kernel/crash_elfcorehdr_size": "kernel without CONFIG_CRASH_HOTPLUG",
}
_PLAIN = (
    "proc/iomem", "proc/cmdline", "proc/sys/kernel/osrelease",
    f"{CPU_DIR}/possible", f"{CPU_DIR}/present", f"{CPU_DIR}/online", f"{CPU_DIR}/offline",
    f"{CPU_DIR}/kernel_max", f"{CPU_DIR}/crash_hotplug",
    f"{MEM_DIR}/block_size_bytes", f"{MEM_DIR}/crash_hotplug", f"{MEM_DIR}/auto_online_blocks",
    "sys/kernel/vmcoreinfo", "sys/kernel/kexec_crash_loaded", "sys/kernel/kexec_crash_size",
    "sys/kernel/crash_elfcorehdr_size", "sys/kernel/kexec_loaded",
)
_KALLSYMS = ("_text", "_stext", "_etext", "_end")
_KCORE_HEAD = 65536


@dataclass
class SnapshotReport:
    root: Path
    files_written: int = 0
    cannot_see: list[str] = field(default_factory=list)
    unreadable_files: list[str] = field(default_factory=list)
    #: files the builder needs that the source does not have (rel -> why)
    absent: dict[str, str] = field(default_factory=dict)


def _copy(src_root: Path, dst_root: Path, rel: str, rep: SnapshotReport) -> bytes | None:
    src = src_root / rel
    if not src.exists():
        return None
    try:
        data = read_limited(src, limit_for(rel))
    except InputFileError as e:
        rep.unreadable_files.append(rel)
        rep.cannot_see.append(f"/{rel}: {e.what}")
        return None
    except PermissionError:
        rep.unreadable_files.append(rel)
        rep.cannot_see.append(f"/{rel}: permission denied (not root)")
        return None
    except OSError as e:
        rep.unreadable_files.append(rel)
        rep.cannot_see.append(f"/{rel}: {e.strerror}")
        return None
    dst = dst_root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    rep.files_written += 1
    return data


def _dmesg(src_root: Path) -> str | None:
    if src_root.resolve() == Path("/") and shutil.which("dmesg"):
        try:
            r = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout if r.returncode == 0 else None
    p = src_root / DMESG
    return p.read_text(errors="replace") if p.is_file() else None


def write_snapshot(source: Path | Machine, dst: Path) -> SnapshotReport:
    """Write the snapshot of ``source`` (a root directory, ``/`` for this host, or a model machine)
    to ``dst``; the report says what could not be seen. A model machine shows everything."""
    if isinstance(source, Machine):
        dst.mkdir(parents=True, exist_ok=True)
        return SnapshotReport(dst, files_written=write_machine_files(source, dst))
    if dst.exists() and any(dst.iterdir()):
        raise SnapshotError(str(dst), "exists and is not empty")
    src_root = Path(source)
    if not src_root.is_dir():
        raise SnapshotError(str(src_root), "not a directory")
    dst.mkdir(parents=True, exist_ok=True)
    rep = SnapshotReport(dst)
    for rel in _PLAIN:
        data = _copy(src_root, dst, rel, rep)
        if data is None and rel in _NEEDED and not (src_root / rel).exists():
            rep.absent[rel] = _NEEDED[rel]
            rep.cannot_see.append(f"/{rel}: {_NEEDED[rel]}")
        if rel == "proc/iomem" and data is not None:
            addrs = re.findall(rb"^\s*([0-9a-f]+)-([0-9a-f]+) :", data, re.M)
            if addrs and all(int(a, 16) == 0 and int(b, 16) == 0 for a, b in addrs):
                rep.cannot_see.append("/proc/iomem: every address reads as zero (not root)")
    for cpu_dir in sorted((src_root / CPU_DIR).glob("cpu[0-9]*")):
        if not cpu_dir.name[3:].isdigit():
            continue
        rel_dir = f"{CPU_DIR}/{cpu_dir.name}"
        (dst / rel_dir).mkdir(parents=True, exist_ok=True)  # the folder says the CPU is present
        for name in ("online", "crash_notes", "crash_notes_size"):
            rel = f"{rel_dir}/{name}"
            if _copy(src_root, dst, rel, rep) is None and name != "online" and not (src_root / rel).exists():
                why = "kernel without CONFIG_CRASH_DUMP (no per-CPU crash notes)"
                rep.absent[rel] = why
                rep.cannot_see.append(f"/{rel}: {why}")
    for mem_dir in sorted((src_root / MEM_DIR).glob("memory[0-9]*")):
        for name in ("state", "phys_index", "valid_zones"):
            _copy(src_root, dst, f"{MEM_DIR}/{mem_dir.name}/{name}", rep)
    _write_kallsyms(src_root, dst, rep)
    _write_kcore(src_root, dst, rep)
    log = _dmesg(src_root)
    if log is None:
        rep.cannot_see.append("kernel log: dmesg not readable (per-CPU layout of absent CPUs unknown)")
    else:
        (dst / DMESG).parent.mkdir(parents=True, exist_ok=True)
        (dst / DMESG).write_text(log)
        rep.files_written += 1
    for d in RULE_DIRS:
        for rule in sorted((src_root / d).glob("*.rules")) if (src_root / d).is_dir() else []:
            try:
                text = rule.read_text(errors="replace")
            except OSError:
                continue
            if "kdump" in text or "kexec" in text or "crash_hotplug" in text:
                _copy(src_root, dst, f"{d}/{rule.name}", rep)
    (dst / SNAPSHOT_MANIFEST).write_text(json.dumps(
        {"source": str(src_root), "unreadable_files": rep.unreadable_files, "absent": rep.absent,
         "cannot_see": rep.cannot_see}, indent=1) + "\n")
    return rep


def _write_kallsyms(src_root: Path, dst: Path, rep: SnapshotReport) -> None:
    src = src_root / "proc/kallsyms"
    if not src.exists():
        rep.cannot_see.append("/proc/kallsyms: missing")
        return
    lines: list[str] = []
    try:
        with src.open(errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] in _KALLSYMS and len(parts) == 3:
                    lines.append(line if line.endswith("\n") else line + "\n")
    except OSError as e:
        rep.cannot_see.append(f"/proc/kallsyms: {e.strerror}")
        return
    if lines and all(int(x.split()[0], 16) == 0 for x in lines):
        rep.cannot_see.append("/proc/kallsyms: addresses read as zero (kptr_restrict, not root)")
    (dst / "proc").mkdir(parents=True, exist_ok=True)
    (dst / "proc/kallsyms").write_text("".join(lines))
    rep.files_written += 1


def _write_kcore(src_root: Path, dst: Path, rep: SnapshotReport) -> None:
    src = src_root / "proc/kcore"
    if not src.exists():
        rep.cannot_see.append("/proc/kcore: missing (direct-map base unknown under KASLR)")
        return
    try:
        with src.open("rb") as f:
            head = f.read(_KCORE_HEAD)
    except OSError as e:
        rep.unreadable_files.append("proc/kcore")
        rep.cannot_see.append(f"/proc/kcore: {e.strerror} (direct-map base unknown under KASLR)")
        return
    try:
        core = ElfCore.parse(head, str(src))
        keep = head[: core.used_size]
    except ElfFormatError as e:
        rep.cannot_see.append(f"/proc/kcore: {e.what}")
        return
    (dst / "proc/kcore").write_bytes(keep)
    rep.files_written += 1
