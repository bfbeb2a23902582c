"""The ppc64 NT_PRSTATUS layout against the capture kernel's /proc/vmcore of the ppc64le vectors."""

from __future__ import annotations

import json

from crash_hotplug.elf.constants import NT_PRSTATUS, PT_NOTE
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.elf.prstatus_ppc64 import CRASH_CORE_NOTE_BYTES_PPC64, ELF_PRSTATUS_PPC64, ElfPrstatusPpc64
from crash_hotplug.elf.structs import NHDR
from tests.conftest import VECTORS_PPC64, needs_ppc64_vectors, ppc64_steps


def test_sizes_match_the_kernel() -> None:
    assert ELF_PRSTATUS_PPC64.size == 504
    assert CRASH_CORE_NOTE_BYTES_PPC64 == 536
    note = ElfPrstatusPpc64(pr_pid=7, regs=tuple(range(44))).note_buf()
    assert len(note) == 536
    back = ElfPrstatusPpc64.unpack(note[20:524])
    assert back.pr_pid == 7 and back.reg("nip") == 32 and back.ip == 32


@needs_ppc64_vectors
def test_vmcore_notes_read_as_ppc64_prstatus() -> None:
    assert VECTORS_PPC64 is not None
    scen = VECTORS_PPC64 / "6.12" / "base"
    raw = (scen / "vmcore-headers.bin").read_bytes()
    cap = json.loads((scen / "capture.json").read_text())
    core = ElfCore.parse(raw)
    note = next(p for p in core.phdrs if p.p_type == PT_NOTE)
    off, end = note.p_offset, note.p_offset + note.p_filesz
    pids = []
    while off < end:
        namesz, descsz, ntype = NHDR.unpack_from(raw, off)
        desc_at = off + 12 + (namesz + 3) // 4 * 4
        if ntype == NT_PRSTATUS:
            assert descsz == ELF_PRSTATUS_PPC64.size
            st = ElfPrstatusPpc64.unpack(raw[desc_at : desc_at + descsz])
            pids.append(st.pr_pid)
            assert st.ip >> 60 == 0xC  # kernel addresses: 0xc000...
        off = desc_at + (descsz + 3) // 4 * 4
    assert pids == [n["pr_pid"] for n in cap["vmcore_notes"] if n["type"] == NT_PRSTATUS]
    assert pids[-1] == cap["panic_pid"]
    size = ppc64_steps()[0].root / "sys/devices/system/cpu/cpu0/crash_notes_size"
    assert int(size.read_text()) == CRASH_CORE_NOTE_BYTES_PPC64
