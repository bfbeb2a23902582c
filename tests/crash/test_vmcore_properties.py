"""Properties of the capture over random machines, read back with pyelftools."""

from __future__ import annotations

import io
import struct

from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st

from crash_hotplug.crash.vmcore import parse_crash_elf64_headers
from crash_hotplug.crash.x86_64 import prepare_elf_headers
from crash_hotplug.elf.prstatus import ElfPrstatus
from crash_hotplug.elf.vmcoreinfo import build_vmcoreinfo_note
from crash_hotplug.machine.physmem import PAGE_SIZE, PhysMem
from tests.factories import make_state

Machine = tuple[list[tuple[int, int]], tuple[int, int], int, list[int]]
MiB = 1 << 20
#: where the header sits in the crashed machine's memory (clear of the notes the factory places)
HDR_ADDR = 1 << 40


@st.composite
def machines(draw: st.DrawFn) -> Machine:
    """System RAM ranges above 1 MiB (some starting mid-page), a crashkernel region in one, CPUs."""
    ram: list[tuple[int, int]] = []
    pos = MiB
    for _ in range(draw(st.integers(1, 5))):
        pos += draw(st.integers(1, 64)) * MiB
        size = draw(st.integers(3, 64)) * MiB
        ram.append((pos + draw(st.sampled_from([0, 0x10, 0x800])), pos + size - 1))
        pos += size
    host = draw(st.sampled_from(ram))
    crash = ((host[0] + MiB) & ~(MiB - 1), ((host[0] + MiB) & ~(MiB - 1)) + MiB - 1)
    possible = draw(st.integers(1, 8))
    online = sorted(draw(st.sets(st.integers(0, possible - 1), min_size=1)))
    return ram, crash, possible, online


@settings(max_examples=60, deadline=None)
@given(machines())
def test_capture_layout_read_back_by_pyelftools(m: Machine) -> None:
    ram, crash, possible, online = m
    state = make_state(ram, possible=possible, crash=[crash])
    header, _ = prepare_elf_headers(state)
    mem = PhysMem(seed=3)
    mem.write(HDR_ADDR, header)
    for cpu in state.possible:
        buf = ElfPrstatus(pr_pid=1000 + cpu).note_buf() if cpu in online else bytes(state.crash_notes_size)
        mem.write(state.crash_notes[cpu], buf)
    mem.write(state.vmcoreinfo_paddr, build_vmcoreinfo_note({"OSRELEASE": "6.12.0", "PAGESIZE": "4096"}))

    v = parse_crash_elf64_headers(mem, HDR_ADDR)
    elf = ELFFile(io.BytesIO(v.headers_and_notes()))
    segs = list(elf.iter_segments())
    loads_in = [s for s in ELFFile(io.BytesIO(header)).iter_segments() if s["p_type"] == "PT_LOAD"]
    assert [s["p_type"] for s in segs] == ["PT_NOTE"] + ["PT_LOAD"] * len(loads_in)
    # headers, then notes, each page-rounded, then the windows in header order
    hdr_end = -(-(64 + 56 * len(segs)) // PAGE_SIZE) * PAGE_SIZE
    assert segs[0]["p_offset"] == hdr_end and segs[0]["p_align"] == 4
    notes = list(segs[0].iter_notes())
    assert [n["n_type"] for n in notes] == ["NT_PRSTATUS"] * len(online) + [0]
    assert [struct.unpack_from("<i", n["n_desc"], 32)[0] for n in notes[:-1]] == [1000 + c for c in online]
    off = hdr_end + -(-segs[0]["p_filesz"] // PAGE_SIZE) * PAGE_SIZE
    for got, want in zip(segs[1:], loads_in, strict=True):
        for k in ("p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_flags"):
            assert got[k] == want[k]
        start = want["p_paddr"] // PAGE_SIZE * PAGE_SIZE
        assert got["p_offset"] == off + want["p_paddr"] - start
        off += -(-(want["p_paddr"] + want["p_memsz"]) // PAGE_SIZE) * PAGE_SIZE - start
    assert v.vmcore_size == off
