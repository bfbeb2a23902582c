"""ppc64 ``struct elf_prstatus`` (``include/linux/elfcore.h``, ``arch/powerpc/include/uapi/asm/elf.h``),
the descriptor of an NT_PRSTATUS note on powerpc64.

504 bytes: ``elf_prstatus_common`` (112, with ``pr_pid`` at 32), ``pr_reg`` (``elf_gregset_t``:
``ELF_NGREG`` = 48 x u64 from 112, of which ``ppc_elf_core_copy_regs`` fills the 44 words of
``struct pt_regs`` and zeroes the rest), ``pr_fpvalid`` (int at 496) and 4 bytes of padding. A CPU's
``crash_notes`` buffer is 536 bytes: the note (12 + 8 + 504) and the empty final note.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final, Self

from crash_hotplug.elf.constants import NT_PRSTATUS
from crash_hotplug.elf.notes import append_elf_note, final_note, note_size
from crash_hotplug.errors import ElfFormatError

__all__ = ["CRASH_CORE_NOTE_BYTES_PPC64", "ELF_NGREG", "ELF_PRSTATUS_PPC64", "PT_REGS", "ElfPrstatusPpc64"]

ELF_NGREG: Final = 48
#: the common part as on x86_64, then 48 x ulong pr_reg, pr_fpvalid (int) + 4 pad
ELF_PRSTATUS_PPC64: Final = struct.Struct(f"<3ih2xQQ4i8q{ELF_NGREG}Qi4x")

#: ``struct pt_regs`` word order (``arch/powerpc/include/uapi/asm/ptrace.h``), as copied into pr_reg
PT_REGS: Final = (
    *(f"gpr{i}" for i in range(32)),
    "nip", "msr", "orig_gpr3", "ctr", "link", "xer", "ccr", "softe", "trap", "dar", "dsisr", "result",
)

#: sizeof(note_buf_t) on ppc64 (536, what ``cpuN/crash_notes_size`` prints)
CRASH_CORE_NOTE_BYTES_PPC64: Final = note_size("CORE", ELF_PRSTATUS_PPC64.size) + 12


@dataclass(frozen=True, slots=True)
class ElfPrstatusPpc64:
    """The fields of the ppc64 ``struct elf_prstatus`` a kdump tool reads."""

    pr_pid: int = 0
    regs: tuple[int, ...] = field(default=(0,) * len(PT_REGS))
    pr_ppid: int = 0
    pr_cursig: int = 0

    def __post_init__(self) -> None:
        if len(self.regs) != len(PT_REGS):
            raise ValueError(f"struct pt_regs has {len(PT_REGS)} words, got {len(self.regs)}")

    def reg(self, name: str) -> int:
        return self.regs[PT_REGS.index(name)]

    @property
    def ip(self) -> int:
        """The next instruction address (``nip``)."""
        return self.reg("nip")

    def pack(self) -> bytes:
        greg = (*self.regs, *([0] * (ELF_NGREG - len(PT_REGS))))
        return ELF_PRSTATUS_PPC64.pack(
            0, 0, 0, self.pr_cursig, 0, 0, self.pr_pid, self.pr_ppid, 0, 0, *([0] * 8), *greg, 0
        )

    @classmethod
    def unpack(cls, desc: bytes) -> Self:
        if len(desc) < ELF_PRSTATUS_PPC64.size:
            raise ElfFormatError(
                f"NT_PRSTATUS descriptor is {len(desc)} bytes, ppc64 elf_prstatus needs {ELF_PRSTATUS_PPC64.size}",
                offset=0,
            )
        v = ELF_PRSTATUS_PPC64.unpack_from(desc)
        return cls(pr_pid=v[6], regs=tuple(v[18 : 18 + len(PT_REGS)]), pr_ppid=v[7], pr_cursig=v[3])

    def note_buf(self) -> bytes:
        """The contents of a CPU's ``crash_notes`` buffer after ``crash_save_cpu`` (536 bytes)."""
        return append_elf_note("CORE", NT_PRSTATUS, self.pack()) + final_note()
