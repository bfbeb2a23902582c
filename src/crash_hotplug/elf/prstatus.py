"""x86_64 ``struct elf_prstatus`` and ``user_regs_struct`` (``include/linux/elfcore.h``,
``arch/x86/include/asm/user_64.h``), the descriptor of an NT_PRSTATUS note.

336 bytes: ``elf_prstatus_common`` (112, with ``pr_pid`` at 32), ``pr_reg`` (27 x u64 from 112),
``pr_fpvalid`` (int at 328) and 4 bytes of padding. The kernel's ``crash_save_cpu`` fills only
``pr_pid`` and ``pr_reg``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final, Self

from crash_hotplug.elf.constants import NT_PRSTATUS
from crash_hotplug.elf.notes import append_elf_note, final_note, note_size
from crash_hotplug.errors import ElfFormatError

__all__ = [
    "CRASH_CORE_NOTE_BYTES",
    "ELF_PRSTATUS",
    "USER_REGS",
    "ElfPrstatus",
]

#: pr_info (3 x int), pr_cursig (short, 2 pad), pr_sigpend, pr_sighold (ulong), pr_pid, pr_ppid,
#: pr_pgrp, pr_sid (int), pr_utime, pr_stime, pr_cutime, pr_cstime (timeval = 2 x long),
#: pr_reg (27 x ulong), pr_fpvalid (int) + 4 pad.
ELF_PRSTATUS: Final = struct.Struct("<3ih2xQQ4i8q27Qi4x")

#: ``user_regs_struct`` field order (``ELF_CORE_COPY_REGS`` fills them in this order).
USER_REGS: Final = (
    "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si",
    "di", "orig_ax", "ip", "cs", "flags", "sp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)

#: sizeof(note_buf_t) on x86_64: two note headers, "CORE" padded, one elf_prstatus (368).
CRASH_CORE_NOTE_BYTES: Final = note_size("CORE", ELF_PRSTATUS.size) + 12


@dataclass(frozen=True, slots=True)
class ElfPrstatus:
    """The fields of ``struct elf_prstatus`` a kdump tool reads."""

    pr_pid: int = 0
    regs: tuple[int, ...] = field(default=(0,) * len(USER_REGS))
    pr_ppid: int = 0
    pr_cursig: int = 0

    def __post_init__(self) -> None:
        if len(self.regs) != len(USER_REGS):
            raise ValueError(f"user_regs_struct has {len(USER_REGS)} registers, got {len(self.regs)}")

    def reg(self, name: str) -> int:
        return self.regs[USER_REGS.index(name)]

    @property
    def ip(self) -> int:
        return self.reg("ip")

    def pack(self) -> bytes:
        return ELF_PRSTATUS.pack(
            0, 0, 0, self.pr_cursig, 0, 0, self.pr_pid, self.pr_ppid, 0, 0, *([0] * 8), *self.regs, 0
        )

    @classmethod
    def unpack(cls, desc: bytes) -> Self:
        if len(desc) < ELF_PRSTATUS.size:
            raise ElfFormatError(
                f"NT_PRSTATUS descriptor is {len(desc)} bytes, x86_64 elf_prstatus needs {ELF_PRSTATUS.size}",
                offset=0,
            )
        v = ELF_PRSTATUS.unpack_from(desc)
        return cls(pr_pid=v[6], regs=tuple(v[18:45]), pr_ppid=v[7], pr_cursig=v[3])

    def note_buf(self) -> bytes:
        """The contents of a CPU's ``crash_notes`` buffer after ``crash_save_cpu`` (368 bytes)."""
        return append_elf_note("CORE", NT_PRSTATUS, self.pack()) + final_note()
