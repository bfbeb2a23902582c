"""The capture side against what real capture kernels showed in /proc/vmcore, and a whole vmcore
read back by independent readers (pyelftools, readelf, gdb)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from crash_hotplug.crash.vmcore import (
    ElfcorehdrNotSane,
    VmcoreNotInitialized,
    note_p_align,
    parse_crash_elf64_headers,
    parse_elfcorehdr_param,
    read_vmcore_file,
    write_vmcore,
)
from crash_hotplug.elf.compare import first_difference
from crash_hotplug.elf.constants import PT_LOAD, PT_NOTE
from crash_hotplug.elf.notes import append_elf_note, final_note, iter_notes, note_size
from crash_hotplug.elf.prstatus import ElfPrstatus
from crash_hotplug.errors import ElfFormatError
from crash_hotplug.machine.kernel import KernelVersion
from crash_hotplug.machine.physmem import PAGE_SIZE, PhysMem
from tests.conftest import VECTORS, needs_vectors
from tests.vmcore_cases import SMALL_VMCOREINFO, SmallMachine, small_machine, vector_panic

KERNELS = ["6.1", "6.12.43", "6.12"]


@needs_vectors
@pytest.mark.parametrize("kernel", KERNELS)
def test_headers_and_notes_equal_the_real_proc_vmcore(kernel: str) -> None:
    vp = vector_panic(kernel)
    vmcore = parse_crash_elf64_headers(vp.mem, vp.elfcorehdr_addr, kernel_version=KernelVersion.parse(kernel))
    got = vmcore.headers_and_notes()
    assert first_difference(vp.real_headers, got) is None
    assert got == vp.real_headers
    assert vmcore.vmcore_size == vp.capture["vmcore_size"]
    loads = [(hex(m.paddr), hex(m.size)) for m in vmcore.vmcore_list]
    assert loads == [tuple(r) for r in vp.capture["vmcore_load_ranges"]]


@needs_vectors
@pytest.mark.parametrize("kernel", KERNELS)
def test_reader_on_real_headers(kernel: str) -> None:
    assert VECTORS is not None
    scen = VECTORS / kernel / "base"
    capture = vector_panic(kernel).capture
    vf = read_vmcore_file(scen / "vmcore-headers.bin")
    assert vf.headers_only and not vf.has_data
    assert vf.data_end == capture["vmcore_size"]
    assert [n.pr_pid for n in vf.prstatus] == [n["pr_pid"] for n in capture["vmcore_nt_prstatus"]]
    assert [hex(n.prstatus.ip) for n in vf.prstatus] == [n["rip"] for n in capture["vmcore_nt_prstatus"]]
    assert vf.vmcoreinfo["OSRELEASE"] == (scen / "S5/root/proc/sys/kernel/osrelease").read_text().strip()
    assert vf.vmcoreinfo["PAGESIZE"] == "4096"
    assert "CRASHTIME" in vf.key_vmcoreinfo()
    text = vf.kernel_text
    assert text is not None and text.vaddr == 0xFFFFFFFF81000000 and text.paddr == 0x1000000
    assert [(hex(s.paddr), hex(s.size)) for s in vf.loads] == [tuple(r) for r in capture["vmcore_load_ranges"]]


def test_merged_note_alignment_follows_the_kernel_version() -> None:
    assert note_p_align(KernelVersion(6, 1)) == 0
    assert note_p_align(KernelVersion(6, 5)) == 4
    assert note_p_align(None) == 4


def test_elfcorehdr_param() -> None:
    assert parse_elfcorehdr_param("elfcorehdr=0x6f000000 console=ttyS0") == 0x6F000000
    assert parse_elfcorehdr_param("ro elfcorehdr=4M@1776M") == 1776 << 20
    with pytest.raises(ValueError, match="no elfcorehdr"):
        parse_elfcorehdr_param("console=ttyS0")


# ---------------------------------------------------------------------------------------------
# Edge cases of the merge, on the small machine


NOTES_3_CPUS = 3 * note_size("CORE", 336) + note_size("VMCOREINFO", len(SMALL_VMCOREINFO))


def test_offline_cpu_note_is_dropped_and_order_kept() -> None:
    m = small_machine(online=(0, 1, 3))
    v = parse_crash_elf64_headers(m.mem, m.elfcorehdr_addr)
    notes = list(iter_notes(v.elfnotes_buf, 0, v.elfnotes_orig_sz))
    assert [ElfPrstatus.unpack(n.desc).pr_pid for n in notes[:3]] == [0, 0, 103]
    assert notes[3].name == "VMCOREINFO" and notes[3].desc == SMALL_VMCOREINFO
    assert v.warnings == ("Warning: Zero PT_NOTE entries found",)
    ph0 = v.core.phdrs[0]
    assert (ph0.p_type, ph0.p_offset, ph0.p_filesz, ph0.p_align) == (PT_NOTE, PAGE_SIZE, NOTES_3_CPUS, 4)
    assert v.core.ehdr.e_phnum == 1 + 1 + 1  # merged note, kernel text, the RAM above 1 MiB
    assert len(v.elfnotes_buf) == PAGE_SIZE and not any(v.elfnotes_buf[v.elfnotes_orig_sz :])


def test_note_past_p_memsz_is_dropped_with_a_warning() -> None:
    m = small_machine(online=(0, 1, 2, 3))
    # CPU 1's record claims a descriptor larger than the 368-byte buffer
    m.mem.write(m.state.crash_notes[1], struct.pack("<III", 5, 4000, 1))
    v = parse_crash_elf64_headers(m.mem, m.elfcorehdr_addr)
    assert any("Exceeded p_memsz" in w and "n_descsz=0xfa0" in w for w in v.warnings)
    assert v.elfnotes_orig_sz == NOTES_3_CPUS


def test_not_sane_header_is_refused() -> None:
    m = small_machine()
    m.mem.write(m.elfcorehdr_addr + 18, struct.pack("<H", 183))  # e_machine = EM_AARCH64
    with pytest.raises(ElfcorehdrNotSane, match="e_machine is 183"):
        parse_crash_elf64_headers(m.mem, m.elfcorehdr_addr)
    m.mem.write(m.elfcorehdr_addr + 18, struct.pack("<H", 62))
    m.mem.write(m.elfcorehdr_addr + 56, struct.pack("<H", 0))
    with pytest.raises(ElfcorehdrNotSane, match="e_phnum is 0"):
        parse_crash_elf64_headers(m.mem, m.elfcorehdr_addr)


def test_unaligned_load_gets_a_page_window_and_in_page_offset() -> None:
    m = small_machine()
    raw = bytearray(m.mem.read(m.elfcorehdr_addr, PAGE_SIZE))
    phnum = struct.unpack_from("<H", raw, 56)[0]
    idx = next(i for i in range(phnum) if struct.unpack_from("<IIQ", raw, 64 + 56 * i)[::2] == (PT_LOAD, 0x100000))
    off = 64 + 56 * idx
    struct.pack_into("<QQQQQ", raw, off + 8, 0x100010, 0xFFFF888000100010, 0x100010, 0x2EFFFF0, 0x2EFFFF0)
    m.mem.write(m.elfcorehdr_addr, bytes(raw))
    v = parse_crash_elf64_headers(m.mem, m.elfcorehdr_addr)
    loads = [p for p in v.core.phdrs if p.p_type == PT_LOAD]
    i = [p.p_paddr for p in loads].index(0x100010)
    window = v.vmcore_list[i]
    assert (window.paddr, window.size) == (0x100000, 0x2F00000)
    assert loads[i].p_offset == window.offset + 0x10


# ---------------------------------------------------------------------------------------------
# A whole vmcore, streamed to disk and read back


@pytest.fixture(scope="module")
def whole_vmcore(tmp_path_factory: pytest.TempPathFactory) -> tuple[SmallMachine, Path]:
    m = small_machine()
    v = parse_crash_elf64_headers(m.mem, m.elfcorehdr_addr)
    path = tmp_path_factory.mktemp("vmcore") / "vmcore"
    n = write_vmcore(v, m.mem, path, chunk_size=3 * PAGE_SIZE + 5)
    assert n == v.vmcore_size == path.stat().st_size
    return m, path


def test_whole_vmcore_holds_memory_at_each_load(whole_vmcore: tuple[SmallMachine, Path]) -> None:
    m, path = whole_vmcore
    vf = read_vmcore_file(path)
    assert vf.has_data and not vf.headers_only
    for seg in vf.loads:
        for paddr in (seg.paddr, seg.paddr + seg.size - PAGE_SIZE):
            assert vf.read_phys(paddr, PAGE_SIZE) == m.mem.read(paddr, PAGE_SIZE)
    assert [n.pr_pid for n in vf.prstatus] == [0, 0, 103]
    assert vf.prstatus[2].prstatus.regs == m.regs(3)
    assert vf.vmcoreinfo["OSRELEASE"] == "6.12.0-small"
    # the capture region is not in the dump
    assert vf.read_phys(m.elfcorehdr_addr, 64) is None


def test_pyelftools_reads_the_vmcore(whole_vmcore: tuple[SmallMachine, Path]) -> None:
    m, path = whole_vmcore
    with path.open("rb") as f:
        elf = ELFFile(f)
        assert elf["e_type"] == "ET_CORE"
        segs = list(elf.iter_segments())
        assert segs[0]["p_type"] == "PT_NOTE"
        notes = list(segs[0].iter_notes())
        assert [n["n_type"] for n in notes] == ["NT_PRSTATUS"] * 3 + [0]
        loads = [s for s in segs if s["p_type"] == "PT_LOAD"]
        text = loads[0]
        assert text["p_vaddr"] == 0xFFFFFFFF81000000
        assert text.data()[:PAGE_SIZE] == m.mem.read(0x1000000, PAGE_SIZE)


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils readelf not installed")
def test_readelf_reads_the_vmcore(whole_vmcore: tuple[SmallMachine, Path]) -> None:
    _, path = whole_vmcore
    res = subprocess.run(["readelf", "-lnW", str(path)], capture_output=True, text=True, check=True)
    assert "warning" not in res.stderr.lower()
    assert res.stdout.count("NT_PRSTATUS") == 3
    assert "VMCOREINFO" in res.stdout
    loads = re.findall(r"^\s+LOAD\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)", res.stdout, re.M)
    assert [int(v, 16) for _, v, _ in loads] == [0xFFFFFFFF81000000, 0xFFFF888000100000]


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb not installed")
def test_gdb_sees_one_thread_per_saved_cpu(tmp_path: Path) -> None:
    # gdb names a core's threads by pr_pid, so CPUs idling in pid 0 would fold into one thread;
    # here every online CPU runs its own task.
    m = small_machine(online=(0, 1, 3), idle_pid_0=False)
    path = tmp_path / "vmcore"
    write_vmcore(parse_crash_elf64_headers(m.mem, m.elfcorehdr_addr), m.mem, path)
    res = subprocess.run(
        ["gdb", "-nx", "-batch", "-ex", "info threads", "-c", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    threads = re.findall(r"^\*?\s+\d+\s+(?:LWP|process|Thread)\s+(\d+)\s+(0x[0-9a-f]+)", res.stdout, re.M)
    assert sorted(threads) == sorted((str(m.pids[c]), f"{m.regs(c)[16]:#018x}") for c in (0, 1, 3)), res.stdout


# ---------------------------------------------------------------------------------------------
# The reader on bad files


def test_reader_errors_name_the_file(tmp_path: Path, whole_vmcore: tuple[SmallMachine, Path]) -> None:
    _, path = whole_vmcore
    head = path.read_bytes()[: 2 * PAGE_SIZE]
    short = tmp_path / "short"
    short.write_bytes(head[:40])
    with pytest.raises(ElfFormatError, match=r"short: at offset 0x0: truncated: 40 bytes"):
        read_vmcore_file(short)
    phnum = tmp_path / "phnum"
    phnum.write_bytes(head[:56] + struct.pack("<H", 200) + head[58:PAGE_SIZE])
    with pytest.raises(ElfFormatError, match=r"e_phnum 200 program headers .* past the end"):
        read_vmcore_file(phnum)
    over = bytearray(head)
    struct.pack_into("<I", over, PAGE_SIZE + 4, 0xFFFFFF00)  # first note's n_descsz
    bad = tmp_path / "overflow"
    bad.write_bytes(bytes(over))
    with pytest.raises(ElfFormatError, match="overflows its region"):
        read_vmcore_file(bad)
    with pytest.raises(ElfFormatError, match="cannot read"):
        read_vmcore_file(tmp_path / "absent")


def test_prstatus_note_buffer_roundtrip() -> None:
    mem = PhysMem()
    buf = ElfPrstatus(pr_pid=42).note_buf()
    assert buf == append_elf_note("CORE", 1, ElfPrstatus(pr_pid=42).pack()) + final_note()
    mem.write(0x5000, buf)
    assert mem.read(0x5000, len(buf)) == buf


def test_partial_reads_match_the_whole_file(whole_vmcore: tuple[SmallMachine, Path]) -> None:
    m, path = whole_vmcore
    v = parse_crash_elf64_headers(m.mem, m.elfcorehdr_addr)
    data = path.read_bytes()
    for pos, count in ((0, 64 << 10), (PAGE_SIZE - 7, 3 * PAGE_SIZE), (v.vmcore_list[1].offset - 5, 10),
                       (len(data) - 100, 1000)):
        assert v.read(m.mem, pos, count) == data[pos : pos + count]


@needs_vectors
def test_a_raw_elfcorehdr_is_not_taken_for_a_vmcore() -> None:
    assert VECTORS is not None
    with pytest.raises(ElfFormatError, match="raw elfcorehdr"):
        read_vmcore_file(VECTORS / "6.12.43/base/S5/elfcorehdr.bin")


def test_no_note_data_leaves_no_proc_vmcore() -> None:
    # every PT_NOTE empty (VMCOREINFO too): the zero-sized note buffer cannot be allocated
    m = small_machine()
    m.mem.zero(m.state.vmcoreinfo_paddr, m.state.vmcoreinfo_size)
    for cpu in m.state.possible:
        m.mem.zero(m.state.crash_notes[cpu], 368)
    with pytest.raises(VmcoreNotInitialized, match="5 PT_NOTE headers hold no note"):
        parse_crash_elf64_headers(m.mem, m.elfcorehdr_addr)
