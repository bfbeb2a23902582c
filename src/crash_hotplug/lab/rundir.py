"""Run directories (the layout of ``shared/vectors/<kernel>/<scenario>``) and the text the lab parses.

A run directory holds ``scenario.json``, ``S<n>/{root/,elfcorehdr.bin,step.json}``,
``vmcore-headers.bin``, ``capture.json``, ``capture-cmdline`` and optionally ``timing.json``;
``lab run`` writes it and ``lab check`` reads it, and both work on the real-kernel vectors too.
The parsers mirror what the kernel prints: ``kernel/kexec_file.c``/``arch/x86/kernel/crash.c``
("Loaded ELF headers at ..."), ``kernel/resource.c`` (``/proc/iomem``), ``lib/bitmap.c`` (CPU lists).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crash_hotplug.lab.errors import RunDirError

__all__ = [
    "IomemLine",
    "LoadedElfHeaders",
    "RunDir",
    "Step",
    "hexrange",
    "iomem_lines",
    "iomem_system_ram_expected",
    "last_loaded_elf_headers",
    "parse_cpulist",
]

KERNEL_TEXT_VADDR = 0xFFFFFFFF80000000

_LOADED_RE = re.compile(
    r"Loaded ELF headers at (?:0x)?(?P<addr>[0-9a-f]+) bufsz=(?:0x)?(?P<bufsz>[0-9a-f]+) "
    r"memsz=(?:0x)?(?P<memsz>[0-9a-f]+)"
)


@dataclass(frozen=True)
class LoadedElfHeaders:
    """The kernel's debug line ``Loaded ELF headers at ADDR bufsz=B memsz=M``."""

    addr: int
    bufsz: int
    memsz: int


def last_loaded_elf_headers(dmesg: str) -> LoadedElfHeaders | None:
    """The last ``Loaded ELF headers at`` line of a kernel log, or None."""
    found = None
    for m in _LOADED_RE.finditer(dmesg):
        found = m
    if found is None:
        return None
    return LoadedElfHeaders(int(found["addr"], 16), int(found["bufsz"], 16), int(found["memsz"], 16))


def parse_cpulist(text: str) -> list[int]:
    """A CPU list as sysfs prints it (``0,2-3``; empty for none)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


@dataclass(frozen=True)
class IomemLine:
    """One ``/proc/iomem`` line: nesting depth, inclusive range, name."""

    depth: int
    start: int
    end: int
    name: str


def iomem_lines(text: str) -> list[IomemLine]:
    out = []
    for raw in text.splitlines():
        m = re.match(r"^( *)([0-9a-f]+)-([0-9a-f]+) : (.*)$", raw)
        if m:
            out.append(IomemLine(len(m[1]) // 2, int(m[2], 16), int(m[3], 16), m[4]))
    return out


def iomem_system_ram_expected(text: str) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """Top-level ``System RAM`` of ``/proc/iomem`` minus ``[0, 1 MiB)`` and the ``Crash kernel`` range.

    Returns the inclusive ranges and the crash kernel range; the rule of the vectors' step.json.
    """
    lines = iomem_lines(text)
    crash = next(((ln.start, ln.end) for ln in lines if ln.name == "Crash kernel"), None)
    ranges: list[tuple[int, int]] = []
    for ln in lines:
        if ln.depth != 0 or ln.name != "System RAM":
            continue
        pieces = [(max(ln.start, 0x100000), ln.end)]
        if crash is not None:
            cut: list[tuple[int, int]] = []
            for s, e in pieces:
                if crash[1] < s or crash[0] > e:
                    cut.append((s, e))
                    continue
                if s < crash[0]:
                    cut.append((s, crash[0] - 1))
                if e > crash[1]:
                    cut.append((crash[1] + 1, e))
            pieces = cut
        ranges.extend((s, e) for s, e in pieces if s <= e)
    return ranges, crash


def hexrange(r: tuple[int, int]) -> list[str]:
    return [hex(r[0]), hex(r[1])]


@dataclass(frozen=True)
class Step:
    """One snapshot step ``S<n>`` of a run directory."""

    name: str
    path: Path
    info: dict[str, Any]

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def elfcorehdr(self) -> bytes:
        return (self.path / "elfcorehdr.bin").read_bytes()

    @property
    def changed(self) -> bool | None:
        v = self.info.get("header_changed_vs_previous_step")
        return None if v is None else bool(v)


class RunDir:
    """A run directory written by ``lab run`` (or one of the real-kernel vectors)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        sj = path / "scenario.json"
        if not sj.is_file():
            raise RunDirError(f"{path} is not a run directory: it has no scenario.json")
        try:
            self.scenario: dict[str, Any] = json.loads(sj.read_text())
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{sj}: {exc}") from exc

    @property
    def kernel_version(self) -> str | None:
        v = self.scenario.get("kernel_version")
        return str(v) if v else None

    @property
    def kernel(self) -> str:
        return str(self.scenario.get("kernel", "?"))

    def steps(self) -> list[Step]:
        out = []
        dirs = [d for d in self.path.glob("S*") if d.is_dir() and d.name[1:].isdigit()]
        for d in sorted(dirs, key=lambda d: int(d.name[1:])):
            sj = d / "step.json"
            if not sj.is_file() or not (d / "elfcorehdr.bin").is_file():
                raise RunDirError(f"{d} lacks step.json or elfcorehdr.bin")
            out.append(Step(d.name, d, json.loads(sj.read_text())))
        if not out:
            raise RunDirError(f"{self.path} has no S<n> step directories")
        return out

    def capture(self) -> dict[str, Any] | None:
        cj = self.path / "capture.json"
        return json.loads(cj.read_text()) if cj.is_file() else None

    def vmcore_headers(self) -> bytes | None:
        vh = self.path / "vmcore-headers.bin"
        return vh.read_bytes() if vh.is_file() else None
