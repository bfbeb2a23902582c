"""ELF constants used by kdump core files (``include/uapi/linux/elf.h``)."""

from __future__ import annotations

from typing import Final

ELFMAG: Final = b"\x7fELF"
EI_NIDENT: Final = 16
ELFCLASS64: Final = 2
ELFDATA2LSB: Final = 1
EV_CURRENT: Final = 1
ELFOSABI_NONE: Final = 0

ET_CORE: Final = 4
EM_X86_64: Final = 62
EM_PPC64: Final = 21
EM_AARCH64: Final = 183

PT_NULL: Final = 0
PT_LOAD: Final = 1
PT_NOTE: Final = 4

PF_X: Final = 1
PF_W: Final = 2
PF_R: Final = 4

NT_PRSTATUS: Final = 1
NT_PRPSINFO: Final = 3

#: program-header count that means "real count is elsewhere" (never produced by kdump)
PN_XNUM: Final = 0xFFFF

PT_NAMES: Final = {PT_NULL: "NULL", PT_LOAD: "LOAD", PT_NOTE: "NOTE"}
