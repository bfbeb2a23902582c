"""Crashed machines' memory for the capture tests: the real vectors' elfcorehdr with the note
contents the real kernel had, and a small machine whose whole vmcore fits in a test."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crash_hotplug.crash.vmcore import parse_elfcorehdr_param
from crash_hotplug.crash.x86_64 import prepare_elf_headers
from crash_hotplug.elf.constants import NT_PRSTATUS, PT_NOTE
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.elf.notes import Note, append_elf_note, final_note
from crash_hotplug.elf.prstatus import USER_REGS, ElfPrstatus
from crash_hotplug.elf.vmcoreinfo import VMCOREINFO_NOTE_NAME
from crash_hotplug.machine.cpumask import cpulist_format, cpulist_parse
from crash_hotplug.machine.kernel import KernelState
from crash_hotplug.machine.physmem import MODEL_STATE_FILE, PhysMem
from crash_hotplug.machine.resource import iomem_render
from tests.conftest import VECTORS
from tests.factories import make_state

__all__ = ["SMALL_VMCOREINFO", "SmallMachine", "VectorPanic", "small_machine", "vector_panic"]


@dataclass
class VectorPanic:
    """One vector scenario at its panic: the memory the capture kernel read, and what it showed."""

    scenario: Path
    mem: PhysMem
    elfcorehdr_addr: int
    capture: dict[str, Any]
    real_headers: bytes


def _real_notes(real_headers: bytes) -> tuple[list[Note], Note]:
    core = ElfCore.parse(real_headers, "vmcore-headers.bin")
    notes = [n for _, n in core.notes()]
    prstatus = [n for n in notes if n.name == "CORE" and n.n_type == NT_PRSTATUS]
    vmcoreinfo = next(n for n in notes if n.name == VMCOREINFO_NOTE_NAME)
    return prstatus, vmcoreinfo


def vector_panic(kernel: str, step: str = "S5", scenario: str = "base", *, cpus_from: str | None = None) -> VectorPanic:
    """Memory of the vector machine at its panic, with the elfcorehdr of ``step`` in place.

    Each CPU's ``crash_notes`` holds what ``capture.json`` says it held: for a CPU whose note reached
    the real ``/proc/vmcore``, that note's bytes (its ``pr_pid`` checked against ``capture.json``);
    for a CPU that saved its registers but had no PT_NOTE, a note with its ``pr_pid``; zeros for
    the others. VMCOREINFO holds the real note. With a ``step`` other than the last, the CPUs
    online at step ``cpus_from`` (default: ``step``) get a note each (the real notes first, then
    made-up ones).
    """
    assert VECTORS is not None
    scen = VECTORS / kernel / scenario
    capture = json.loads((scen / "capture.json").read_text())
    real = (scen / "vmcore-headers.bin").read_bytes()
    addr = parse_elfcorehdr_param((scen / "capture-cmdline").read_text())
    header = (scen / step / "elfcorehdr.bin").read_bytes()
    mem = PhysMem(seed=1)
    mem.write(addr, header)
    core = ElfCore.parse(header, step)
    for ph in core.phdrs:
        if ph.p_type == PT_NOTE:
            mem.zero(ph.p_paddr, ph.p_memsz)
    prstatus, vmcoreinfo = _real_notes(real)
    root = scen / step / "root"
    vmci_addr = int((root / "sys/kernel/vmcoreinfo").read_text().split()[0], 16)
    mem.write(vmci_addr, append_elf_note(VMCOREINFO_NOTE_NAME, 0, vmcoreinfo.desc) + final_note())
    per_cpu = capture["per_cpu_crash_notes_in_vmcore"]
    pending = list(prstatus)
    if step == sorted(p.name for p in scen.glob("S*"))[-1]:
        for ph in core.notes_phdrs:
            entry = next((e for e in per_cpu.values() if int(e["crash_notes_paddr"], 16) == ph.p_paddr), None)
            if entry is None or not entry["prstatus_saved"]:
                continue
            note = pending.pop(0)
            assert ElfPrstatus.unpack(note.desc).pr_pid == entry["pr_pid"]
            mem.write(ph.p_paddr, append_elf_note("CORE", NT_PRSTATUS, note.desc) + final_note())
        for entry in per_cpu.values():
            if entry["prstatus_saved"] and not entry["pt_note_in_final_elfcorehdr"]:
                mem.write(int(entry["crash_notes_paddr"], 16), ElfPrstatus(pr_pid=entry["pr_pid"]).note_buf())
        assert not pending, "more NT_PRSTATUS notes in the real vmcore than CPUs that saved one"
    else:
        cpu_root = scen / (cpus_from or step) / "root"
        online = cpulist_parse((cpu_root / "sys/devices/system/cpu/online").read_text())
        for cpu in online:
            paddr = int((cpu_root / f"sys/devices/system/cpu/cpu{cpu}/crash_notes").read_text(), 16)
            desc = pending.pop(0).desc if pending else ElfPrstatus(pr_pid=cpu).pack()
            mem.write(paddr, append_elf_note("CORE", NT_PRSTATUS, desc) + final_note())
    return VectorPanic(scen, mem, addr, capture, real)


# ---------------------------------------------------------------------------------------------

MiB = 1 << 20
#: System RAM of the small machine (inclusive), its crashkernel region and the elfcorehdr in it
SMALL_RAM = [(0x1000, 0x9FBFF), (0x100000, 0x3FFFFFF)]
SMALL_CRASH = (0x3000000, 0x3FFFFFF)
SMALL_SEED = 7
SMALL_VMCOREINFO = b"OSRELEASE=6.12.0-small\nPAGESIZE=4096\nCRASHTIME=1\n"


@dataclass
class SmallMachine:
    """A 64 MiB, 4-CPU machine that panicked, with a whole vmcore small enough to write."""

    state: KernelState
    mem: PhysMem
    elfcorehdr_addr: int
    online: tuple[int, ...]
    written: list[tuple[int, int]]
    pids: dict[int, int]

    def regs(self, cpu: int) -> tuple[int, ...]:
        return tuple(0xFFFFFFFF81000000 + cpu * 0x100 + i for i in range(len(USER_REGS)))

    def write_root(self, root: Path, *, online: tuple[int, ...] | None = None, model: bool = True) -> Path:
        """A snapshot root of this machine at its panic (``machine.json`` too when ``model``)."""
        online = self.online if online is None else online
        files = {
            "proc/iomem": iomem_render(self.state.iomem),
            "sys/devices/system/cpu/online": cpulist_format(online) + "\n",
            "sys/devices/system/cpu/present": cpulist_format(self.state.possible) + "\n",
            "sys/devices/system/cpu/possible": cpulist_format(self.state.possible) + "\n",
        }
        for cpu in self.state.possible:
            files[f"sys/devices/system/cpu/cpu{cpu}/crash_notes"] = f"{self.state.crash_notes[cpu]:x}\n"
        if model:
            files[MODEL_STATE_FILE] = json.dumps({
                "memory_pattern_seed": SMALL_SEED,
                "written_ranges": [[s, e] for s, e in self.written],
                "cpus": {str(c): {"pr_pid": self.pids[c], "regs": dict(zip(USER_REGS, self.regs(c), strict=True))}
                         for c in online},
            })
        for rel, text in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        return root


def small_machine(
    *, online: tuple[int, ...] = (0, 1, 3), idle_pid_0: bool = True, present_at_load: int | None = None
) -> SmallMachine:
    """The small machine after ``crash_save_cpu`` on each online CPU (CPU 2 offline: zero buffer).

    The last online CPU panicked in task ``100 + cpu``; the others sit in their idle task (pid 0),
    or, without ``idle_pid_0``, run task ``100 + cpu`` too. With ``present_at_load`` the kernel is a
    6.1 one whose header lists only the CPUs present when kdump was loaded (the rest were hot-added).
    """
    version = "6.12" if present_at_load is None else "6.1"
    state = replace(
        make_state(SMALL_RAM, possible=4, present=present_at_load, crash=[SMALL_CRASH], version=version),
        crash_notes={c: 0x2800000 + c * 0x1000 for c in range(4)},
        vmcoreinfo_paddr=0x2900000,
        text_size=0x800000,
    )
    header, _ = prepare_elf_headers(state)
    mem = PhysMem(seed=SMALL_SEED)
    addr = SMALL_CRASH[0]
    written = [(addr, addr + len(header) - 1)]
    mem.write(addr, header)
    pids = {c: (100 + c if c == online[-1] or not idle_pid_0 else 0) for c in online}
    machine = SmallMachine(state, mem, addr, online, written, pids)
    for cpu in state.possible:
        paddr = state.crash_notes[cpu]
        buf = ElfPrstatus(pr_pid=pids[cpu], regs=machine.regs(cpu)).note_buf() if cpu in online else bytes(368)
        mem.write(paddr, buf)
        written.append((paddr, paddr + 367))
    vmci = append_elf_note(VMCOREINFO_NOTE_NAME, 0, SMALL_VMCOREINFO) + final_note()
    mem.zero(state.vmcoreinfo_paddr, state.vmcoreinfo_size)
    mem.write(state.vmcoreinfo_paddr, vmci)
    written.append((state.vmcoreinfo_paddr, state.vmcoreinfo_paddr + state.vmcoreinfo_size - 1))
    return machine
