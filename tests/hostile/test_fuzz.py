"""Fuzzing each reader with mutations of the real files in ../shared/vectors (read in place; the
mutated copy goes to a temporary root). The contract: an error that is one line naming the input,
or a result equal to the unmutated one, or (where the mutation made another valid input) a result
an independent check agrees with: pyelftools for ELF files, the kernel's rules for iomem and sysfs.
Anything else (another exception, a hang) fails the test."""

from __future__ import annotations

import io
import itertools
import re
import shutil
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crash_hotplug.crash.x86_64 import prepare_elf_headers
from crash_hotplug.elf.core import ElfCore, read_core_file
from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.inspect import HeaderSummary, summarize
from crash_hotplug.machine.kernel import START_KERNEL_MAP
from crash_hotplug.snapshot.reader import read_kernel_state
from crash_hotplug.status import kdump_status
from tests.conftest import VECTORS, needs_vectors

pytestmark = needs_vectors

T = TypeVar("T")
STEP = "6.12.43/base/S0"
CPU = "sys/devices/system/cpu"
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
FUZZ_ELF = settings(FUZZ, max_examples=1000)


def attempt(fn: Callable[[], T], names: str) -> T | None:
    """``fn()``, or None when it raised the package's error as one line naming ``names``."""
    try:
        return fn()
    except CrashHotplugError as e:
        msg = str(e)
        assert "\n" not in msg and "\r" not in msg, msg
        assert names in msg, msg
        return None


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert VECTORS is not None
    dst = tmp_path_factory.mktemp("fuzz") / "root"
    shutil.copytree(VECTORS / STEP / "root", dst)
    return dst


@contextmanager
def mutated(root: Path, rel: str, data: bytes) -> Iterator[Path]:
    p = root / rel
    original = p.read_bytes()
    p.write_bytes(data)
    try:
        yield p
    finally:
        p.write_bytes(original)


def original(rel: str) -> bytes:
    assert VECTORS is not None
    return (VECTORS / STEP / "root" / rel).read_bytes()


def build(root: Path) -> bytes:
    return prepare_elf_headers(read_kernel_state(root))[0]


# -- /proc/iomem ----------------------------------------------------------------------------------

_ODD = "0123456789abcdefABCDEFxg -:\uff16\x00\t"
line_edit = st.one_of(
    st.tuples(st.just("dup"), st.integers(0, 40)),
    st.tuples(st.just("del"), st.integers(0, 40)),
    st.tuples(st.just("swap"), st.integers(0, 40)),
    st.tuples(st.just("indent"), st.integers(0, 40), st.sampled_from(["", " ", "  ", "    ", "\t"])),
    st.tuples(st.just("char"), st.integers(0, 40), st.integers(0, 30), st.sampled_from(list(_ODD))),
    st.tuples(st.just("insert"), st.integers(0, 40), st.integers(0, (1 << 64) - 1), st.integers(0, 1 << 40),
              st.sampled_from(["System RAM", "Crash kernel", "Reserved", "Kernel code", "System RAM (kmem)"]),
              st.sampled_from(["", "  ", "    "])),
)


def _edit(lines: list[str], e: tuple[Any, ...]) -> None:
    if not lines:
        return
    i = e[1] % len(lines)
    if e[0] == "dup":
        lines.insert(i, lines[i])
    elif e[0] == "del":
        del lines[i]
    elif e[0] == "swap" and i + 1 < len(lines):
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    elif e[0] == "indent":
        lines[i] = e[2] + lines[i].lstrip(" ")
    elif e[0] == "char":
        j = e[2] % max(1, len(lines[i]))
        lines[i] = lines[i][:j] + e[3] + lines[i][j + 1 :]
    elif e[0] == "insert":
        start, size, name, indent = e[2], e[3], e[4], e[5]
        end = min(start + size, (1 << 64) - 1)
        lines.insert(i, f"{indent}{start:08x}-{end:08x} : {name}")


def _key_lines(text: str) -> list[tuple[int, int, str]]:
    """The lines the header depends on: System RAM, the crash kernel, the kernel code."""
    out = []
    for ln in text.splitlines():
        m = re.fullmatch(r" *([0-9a-f]+)-([0-9a-f]+) : (.*)", ln)
        if m and m.group(3).startswith(("System RAM", "Crash kernel", "Kernel code")):
            out.append((int(m.group(1), 16), int(m.group(2), 16), m.group(3)))
    return out


def _check_tree_rules(text: str) -> None:
    """The kernel's rules, checked independently of the reader, on an iomem the reader accepted."""
    stack: list[tuple[int, int, int]] = []  # (depth, start, end) of the open ancestors
    last_at: dict[int, int] = {}
    for ln in text.splitlines():
        if not ln.strip():
            continue
        m = re.fullmatch(r"( *)([0-9a-f]{4,16})-([0-9a-f]{4,16}) : .*", ln)
        assert m, ln
        depth, s, e = len(m.group(1)) // 2, int(m.group(2), 16), int(m.group(3), 16)
        assert s <= e < 1 << 52, ln
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            assert stack[-1][1] <= s and e <= stack[-1][2], ln
        for d in [d for d in last_at if d > depth]:
            del last_at[d]
        assert s > last_at.get(depth, -1), ln
        last_at[depth] = e
        stack.append((depth, s, e))


@FUZZ
@given(edits=st.lists(line_edit, min_size=1, max_size=4))
def test_fuzz_iomem(root: Path, edits: list[tuple[Any, ...]]) -> None:
    rel = "proc/iomem"
    base = original(rel).decode()
    lines = base.splitlines()
    for e in edits:
        _edit(lines, e)
    text = "".join(ln + "\n" for ln in lines)
    with mutated(root, rel, text.encode("utf-8", "surrogatepass")):
        got = attempt(lambda: build(root), str(root))
    if got is None:
        return
    _check_tree_rules(text)
    if _key_lines(text) == _key_lines(base):
        assert got == build_original()


_ORIGINAL_HEADER: list[bytes] = []


def build_original() -> bytes:
    if not _ORIGINAL_HEADER:
        assert VECTORS is not None
        _ORIGINAL_HEADER.append(build(VECTORS / STEP / "root"))
    return _ORIGINAL_HEADER[0]


# -- crash_notes ----------------------------------------------------------------------------------

note_text = st.one_of(
    st.text(alphabet=_ODD + "\n", max_size=20),
    st.integers(0, (1 << 64) - 1).map(lambda n: f"{n:x}\n"),
    st.integers(0x6CC00000 // 512, 0x6CD00000 // 512).map(lambda n: f"{n * 512:x}\n"),
    st.sampled_from(["0\n", "1\n", "fffffffffffff000\n", "\uff16ccbd800\n", "6cc3d800\n", "6ccbd800\n",
                     "0x6ccbd800\n", "6ccbd800", "6ccbd800\n\n", " 6ccbd800\n", "6ccbd800\x00"]),
)


@FUZZ
@given(text=note_text)
def test_fuzz_crash_notes(root: Path, text: str) -> None:
    rel = f"{CPU}/cpu1/crash_notes"
    with mutated(root, rel, text.encode()):
        got = attempt(lambda: build(root), str(root / rel))
    if got is None:
        return
    assert re.fullmatch(r"[0-9a-f]{1,16}\n?", text), text
    addr = int(text, 16)
    cpu0 = int(original(f"{CPU}/cpu0/crash_notes"), 16)
    assert addr % 512 == 0 and abs(addr - cpu0) >= 368
    # inside System RAM (proc/iomem of the vector), outside the Crash kernel reservation
    assert 0x1000 <= addr <= 0x9FBFF - 367 or 0x100000 <= addr <= 0x7FFDEFFF - 367
    assert not 0x6F000000 - 368 < addr <= 0x7EFFFFFF
    core = ElfCore.parse(got)
    assert core.notes_phdrs[1].p_paddr == addr
    if addr == int(original(rel), 16):
        assert got == build_original()


# -- sysfs flags and sizes (status) ---------------------------------------------------------------

flag_text = st.one_of(
    st.binary(max_size=6),
    st.sampled_from([b"0\n", b"1\n", b"0", b"1", b"0x1\n", b"1\x00", b" 1\n", b"01\n", b"\xef\xbc\x91\n", b"-1\n",
                     b"2\n", b"1\n\n", b"true\n"]),
)


@FUZZ
@given(rel=st.sampled_from(["sys/kernel/kexec_crash_loaded", f"{CPU}/crash_hotplug",
                            "sys/devices/system/memory/crash_hotplug"]), raw=flag_text)
def test_fuzz_sysfs_flags(root: Path, rel: str, raw: bytes) -> None:
    with mutated(root, rel, raw):
        got = attempt(lambda: kdump_status(root), str(root / rel))
    if got is None:
        return
    assert raw in (b"0", b"1", b"0\n", b"1\n"), raw
    value = {"sys/kernel/kexec_crash_loaded": got.crash_loaded, f"{CPU}/crash_hotplug": got.cpu_crash_hotplug,
             "sys/devices/system/memory/crash_hotplug": got.memory_crash_hotplug}[rel]
    assert int(value) == int(raw.strip())  # type: ignore[arg-type]


@FUZZ
@given(raw=st.one_of(st.binary(max_size=24), st.integers(-(1 << 70), 1 << 70).map(lambda n: f"{n}\n".encode())))
def test_fuzz_kexec_crash_size(root: Path, raw: bytes) -> None:
    rel = "sys/kernel/kexec_crash_size"
    with mutated(root, rel, raw):
        got = attempt(lambda: kdump_status(root), str(root / rel))
    if got is None:
        return
    assert re.fullmatch(rb"(0|[1-9][0-9]*)\n?", raw), raw
    assert got.crash_size == int(raw) and 0 <= int(raw) < 1 << 64


# -- raw headers and vmcores ----------------------------------------------------------------------

def _u64_fields(n_phdrs: int) -> list[int]:
    """Offsets of every 8-byte field of the ELF header and program headers."""
    out = [24, 32, 40]  # e_entry, e_phoff, e_shoff
    for i in range(n_phdrs):
        out += [64 + i * 56 + k for k in (8, 16, 24, 32, 40, 48)]
    return out


_INTERESTING = [0, 1, 2, 0x38, 0x40, 0x1000, 0x100000, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 52, 1 << 63,
                (1 << 64) - 1, (1 << 64) - 0x1000, 0x6E000000, 0x7F000000, 0x100000000]

mutation = st.one_of(
    st.tuples(st.just("byte"), st.integers(0, 1 << 16), st.integers(0, 255)),
    st.tuples(st.just("u64"), st.integers(0, 200), st.sampled_from(_INTERESTING)),
    st.tuples(st.just("u16"), st.sampled_from([16, 18, 52, 54, 56, 58, 60, 62]),
              st.sampled_from([0, 1, 4, 56, 64, 0xFFFF, 0x8000, 12, 13])),
    st.tuples(st.just("cut"), st.integers(0, 1 << 16)),
)


def _mutate(data: bytes, muts: list[tuple[Any, ...]]) -> bytes:
    buf = bytearray(data)
    fields = _u64_fields(struct.unpack_from("<H", data, 56)[0])
    for m in muts:
        if not buf:
            break
        if m[0] == "byte":
            buf[m[1] % len(buf)] = m[2]
        elif m[0] == "u64":
            off = fields[m[1] % len(fields)]
            if off + 8 <= len(buf):
                struct.pack_into("<Q", buf, off, m[2])
        elif m[0] == "u16" and m[1] + 2 <= len(buf):
            struct.pack_into("<H", buf, m[1], m[2])
        elif m[0] == "cut":
            del buf[m[1] % (len(buf) + 1) :]
    return bytes(buf)


def _pyelftools_loads(data: bytes) -> list[tuple[int, int]] | None:
    """(p_paddr, p_memsz) of each PT_LOAD as pyelftools reads them, or None when it cannot."""
    try:
        elf = ELFFile(io.BytesIO(data))
        return [(s["p_paddr"], s["p_memsz"]) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
    except (ELFError, struct.error, ValueError, OverflowError, KeyError, AssertionError):
        return None


def _overlap_or_unsorted(loads: list[tuple[int, int, int]]) -> bool:
    ram = [(s, z) for s, z, v in loads if v < START_KERNEL_MAP]
    if any(z == 0 or s + z > 1 << 64 for s, z in ram):
        return True
    if any(b[0] < a[0] for a, b in itertools.pairwise(ram)):
        return True
    return any(a[0] < b[0] + b[1] and b[0] < a[0] + a[1]
               for i, a in enumerate(ram) for b in ram[i + 1 :])


def _fuzz_core(tmp_path: Path, data: bytes, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(data)
    s: HeaderSummary | None = attempt(lambda: summarize(read_core_file(p)), str(p))
    if s is None:
        return
    core = read_core_file(p)
    ours = [(ph.p_paddr, ph.p_memsz) for ph in core.load_phdrs]
    theirs = _pyelftools_loads(data)
    if theirs is not None:
        assert ours == theirs
    assert s.e_phnum == core.ehdr.e_phnum
    loads = [(ph.p_paddr, ph.p_memsz, ph.p_vaddr) for ph in core.load_phdrs]
    assert bool(s.warnings) == _overlap_or_unsorted(loads), (s.warnings, loads)


@pytest.fixture(scope="module")
def elf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("elf")


@FUZZ_ELF
@given(muts=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_raw_elfcorehdr(elf_dir: Path, muts: list[tuple[Any, ...]]) -> None:
    assert VECTORS is not None
    _fuzz_core(elf_dir, _mutate((VECTORS / STEP / "elfcorehdr.bin").read_bytes(), muts), "elfcorehdr.bin")


@FUZZ_ELF
@given(muts=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_vmcore_headers(elf_dir: Path, muts: list[tuple[Any, ...]]) -> None:
    assert VECTORS is not None
    _fuzz_core(elf_dir, _mutate((VECTORS / "6.12.43/base/vmcore-headers.bin").read_bytes(), muts), "vmcore")


def test_unmutated_files_pass_the_same_checks(root: Path, elf_dir: Path) -> None:
    """The contract's baseline: the real files give results and no warning."""
    assert VECTORS is not None
    assert build(root) == build_original()
    for f in (VECTORS / STEP / "elfcorehdr.bin", VECTORS / "6.12.43/base/vmcore-headers.bin"):
        _fuzz_core(elf_dir, f.read_bytes(), f.name)
        assert not summarize(read_core_file(f)).warnings
