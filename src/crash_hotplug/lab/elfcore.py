"""Just enough ELF64 reading for the lab's own bookkeeping (step.json, capture.json).

Reads what ``include/uapi/linux/elf.h`` declares: ``Elf64_Ehdr``, ``Elf64_Phdr``, ``Elf64_Nhdr``
and the x86_64 ``elf_prstatus`` fields the lab reports (``pr_pid``, ``rip``). The byte-exact
model lives in ``crash_hotplug.elf``; this module only summarises captured bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "NT_PRSTATUS",
    "PT_LOAD",
    "PT_NOTE",
    "Phdr",
    "iter_notes",
    "phdrs",
    "prstatus_pid_rip",
    "used_size",
]

PT_LOAD = 1
PT_NOTE = 4
NT_PRSTATUS = 1
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
# elf_prstatus (x86_64): pr_info(12) pr_cursig(2) pad(2) pr_sigpend(8) pr_sighold(8) -> pr_pid at 32;
# then pid, ppid, pgrp, sid (16) and four timevals (64) -> pr_reg at 112; rip is pr_reg[16].
_PR_PID_OFF = 32
_PR_RIP_OFF = 112 + 16 * 8


@dataclass(frozen=True)
class Phdr:
    """One ``Elf64_Phdr``."""

    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_align: int


def _ehdr(buf: bytes) -> tuple[int, int, int]:
    if len(buf) < _EHDR.size or buf[:4] != b"\x7fELF":
        raise ValueError("not an ELF header")
    f = _EHDR.unpack_from(buf)
    return f[5], f[9], f[10]  # e_phoff, e_phentsize, e_phnum


def used_size(buf: bytes) -> int:
    """``e_phoff + e_phnum * e_phentsize``: the bytes the ELF header and program headers occupy."""
    phoff, phentsize, phnum = _ehdr(buf)
    return phoff + phnum * phentsize


def phdrs(buf: bytes) -> list[Phdr]:
    """The program headers of an ELF64 image held in ``buf``."""
    phoff, phentsize, phnum = _ehdr(buf)
    return [Phdr(*_PHDR.unpack_from(buf, phoff + i * phentsize)) for i in range(phnum)]


def iter_notes(data: bytes) -> Iterator[tuple[bytes, int, bytes]]:
    """``(name, type, desc)`` of each ``Elf64_Nhdr`` note in ``data``; stops at an empty note."""
    off = 0
    while off + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from("<III", data, off)
        if namesz == 0 and descsz == 0 and ntype == 0:
            return
        off += 12
        name = data[off : off + namesz].rstrip(b"\0")
        off += (namesz + 3) & ~3
        desc = data[off : off + descsz]
        off += (descsz + 3) & ~3
        yield name, ntype, desc


def prstatus_pid_rip(desc: bytes) -> tuple[int, int]:
    """``pr_pid`` and ``pr_reg.rip`` of an x86_64 ``NT_PRSTATUS`` descriptor."""
    (pid,) = struct.unpack_from("<i", desc, _PR_PID_OFF)
    (rip,) = struct.unpack_from("<Q", desc, _PR_RIP_OFF)
    return pid, rip
