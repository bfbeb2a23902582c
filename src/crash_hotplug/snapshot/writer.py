"""Write a snapshot: the machine-state files under a root (``/`` on a live host), copied to a
directory at their Linux paths, exactly as read (the layout of ../shared/vectors).

What cannot be seen is listed, not guessed: as non-root ``/proc/iomem`` and ``/proc/kallsyms``
read as zeros, ``crash_notes`` and ``/proc/kcore`` are not readable.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from crash_hotplug.elf.core import ElfCore
from crash_hotplug.errors import ElfFormatError, SnapshotError
from crash_hotplug.snapshot.reader import CPU_DIR, DMESG, MEM_DIR, RULE_DIRS

__all__ = ["SNAPSHOT_MANIFEST", "SnapshotReport", "write_snapshot"]

SNAPSHOT_MANIFEST = "crash-hotplug-snapshot.json"
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
    files_written: int = 0
    cannot_see: list[str] = field(default_factory=list)
    unreadable_files: list[str] = field(default_factory=list)


def _copy(src_root: Path, dst_root: Path, rel: str, rep: SnapshotReport) -> bytes | None:
    src = src_root / rel
    if not src.exists():
        return None
    try:
        data = src.read_bytes()
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


def write_snapshot(src_root: Path, dst: Path) -> SnapshotReport:
    """Copy the machine-state files under ``src_root`` to ``dst``; report what could not be seen."""
    if not src_root.is_dir():
        raise SnapshotError(str(src_root), "not a directory")
    if dst.exists() and any(dst.iterdir()):
        raise SnapshotError(str(dst), "exists and is not empty")
    dst.mkdir(parents=True, exist_ok=True)
    rep = SnapshotReport()
    for rel in _PLAIN:
        data = _copy(src_root, dst, rel, rep)
        if rel == "proc/iomem" and data is not None:
            addrs = re.findall(rb"^\s*([0-9a-f]+)-([0-9a-f]+) :", data, re.M)
            if addrs and all(int(a, 16) == 0 and int(b, 16) == 0 for a, b in addrs):
                rep.cannot_see.append("/proc/iomem: every address reads as zero (not root)")
    for cpu_dir in sorted((src_root / CPU_DIR).glob("cpu[0-9]*")):
        for name in ("online", "crash_notes", "crash_notes_size"):
            _copy(src_root, dst, f"{CPU_DIR}/{cpu_dir.name}/{name}", rep)
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
        {"source": str(src_root), "unreadable_files": rep.unreadable_files, "cannot_see": rep.cannot_see},
        indent=1) + "\n")
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
