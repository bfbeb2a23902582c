"""Properties: build -> parse -> the same model, for random machines."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crash_hotplug.crash.core import CrashMem, crash_exclude_mem_range
from crash_hotplug.crash.x86_64 import SZ_1M, prepare_elf_headers
from crash_hotplug.elf.constants import PT_LOAD, PT_NOTE
from crash_hotplug.elf.core import ElfCore
from tests.factories import make_state, subtract

PAGE = 4096


@st.composite
def machines(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[tuple[int, int]], int, int]:
    """RAM ranges with holes (1..8192 of them), one or two crashkernel regions anywhere in RAM,
    1..8192 possible CPUs."""
    n = draw(st.one_of(st.integers(1, 40), st.integers(1, 8192)))
    sizes = draw(st.lists(st.integers(1, 1 << 18), min_size=n, max_size=n))  # in pages
    holes = draw(st.lists(st.integers(1, 1 << 10), min_size=n, max_size=n))
    start_page = draw(st.integers(0, 512))
    ram = []
    pos = start_page
    for size, hole in zip(sizes, holes, strict=True):
        ram.append((pos * PAGE, (pos + size) * PAGE - 1))
        pos += size + hole
    crash: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(0, 2))):
        s, e = ram[draw(st.integers(0, len(ram) - 1))]
        a = draw(st.integers(s // PAGE, e // PAGE))
        b = draw(st.integers(a, e // PAGE))
        region = (a * PAGE, (b + 1) * PAGE - 1)
        if all(region[1] < c[0] or region[0] > c[1] for c in crash):
            crash.append(region)
    possible = draw(st.one_of(st.integers(1, 16), st.integers(1, 8192)))
    present = draw(st.integers(1, possible))
    return ram, crash, possible, present


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(machines(), st.sampled_from(["6.1", "6.12"]))
def test_build_parse_same_model(m: tuple[list[tuple[int, int]], list[tuple[int, int]], int, int], version: str) -> None:
    ram, crash, possible, present = m
    state = make_state(ram, possible=possible, present=present, crash=crash, version=version)
    buf, nr = prepare_elf_headers(state)
    core = ElfCore.parse(buf)

    expected = subtract(ram, (0, SZ_1M - 1))
    for c in sorted(crash, reverse=True):
        expected = subtract(expected, c)
    cpus = range(possible) if version == "6.12" else range(present)

    notes = [p for p in core.phdrs if p.p_type == PT_NOTE]
    loads = [p for p in core.phdrs if p.p_type == PT_LOAD]
    assert [p.p_paddr for p in notes[:-1]] == [state.crash_notes[c] for c in cpus]
    assert (notes[-1].p_paddr, notes[-1].p_memsz) == (0x4A00000, 4132)
    assert core.phdrs[: len(notes)] == tuple(notes), "notes come first"
    assert loads[0].p_vaddr == 0xFFFFFFFF81000000
    got = [(p.p_paddr, p.p_paddr + p.p_memsz - 1) for p in loads[1:]]
    assert got == expected
    assert nr == len(expected)
    assert all(p.p_offset == p.p_paddr and p.p_vaddr == state.page_offset + p.p_paddr for p in loads[1:])
    sized = 64 + 56 * (possible + 1 + nr + 1)
    assert len(buf) == -(-sized // 4096) * 4096
    assert not any(buf[core.used_size :])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 50)), min_size=1, max_size=12),
    st.integers(0, 1100),
    st.integers(0, 200),
    st.booleans(),
)
def test_exclude_matches_interval_subtraction(
    spans: list[tuple[int, int]], cut_start: int, cut_len: int, rewritten: bool
) -> None:
    """Both forms of crash_exclude_mem_range agree with plain subtraction when the cut touches at
    most one range (the old form stops after the first partial overlap)."""
    ranges: list[tuple[int, int]] = []
    pos = 0
    for gap, size in spans:
        ranges.append((pos + gap, pos + gap + size - 1))
        pos += gap + size + 1
    cut = (cut_start, cut_start + cut_len)
    touched = [r for r in ranges if not (cut[1] < r[0] or cut[0] > r[1])]
    mem = CrashMem(len(ranges) + 2, list(ranges))
    crash_exclude_mem_range(mem, *cut, rewritten=rewritten)
    if rewritten or len(touched) <= 1:
        assert mem.ranges == subtract(ranges, cut)
