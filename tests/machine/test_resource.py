"""The iomem tree, cpulists and the per-CPU layout, against what the real kernels printed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crash_hotplug.machine.cpumask import cpulist_format, cpulist_parse
from crash_hotplug.machine.percpu import parse_pcpu_alloc, place_per_cpu
from crash_hotplug.machine.resource import Resource, iomem_render, parse_iomem, walk_system_ram_res
from tests.conftest import needs_vectors, vector_steps


@needs_vectors
@pytest.mark.parametrize("step", vector_steps(), ids=[s.id for s in vector_steps()])
def test_iomem_round_trip(step: object) -> None:
    text = (step.root / "proc/iomem").read_text()  # type: ignore[attr-defined]
    assert iomem_render(parse_iomem(text)) == text


def test_walk_system_ram_clips_window_and_skips_nested() -> None:
    tree = parse_iomem(
        "00001000-0009fbff : System RAM\n"
        "00100000-7ffdefff : System RAM\n"
        "  01000000-01ffffff : Kernel code\n"
        "80000000-8fffffff : Persistent Memory\n"
        "  80000000-87ffffff : System RAM (kmem)\n"
    )
    assert walk_system_ram_res(tree) == [(0x1000, 0x9FBFF), (0x100000, 0x7FFDEFFF), (0x80000000, 0x87FFFFFF)]
    assert walk_system_ram_res(tree, 0x50000, 0x200000) == [(0x50000, 0x9FBFF), (0x100000, 0x200000)]


def test_insert_and_remove_follow_the_tree() -> None:
    tree = parse_iomem("00100000-7ffdefff : System RAM\n")
    tree.insert(Resource(0x6F000000, 0x7EFFFFFF, "Crash kernel"))
    tree.insert(Resource(0x100000000, 0x13FFFFFFF, "System RAM"))
    assert iomem_render(tree) == (
        "00100000-7ffdefff : System RAM\n  6f000000-7effffff : Crash kernel\n100000000-13fffffff : System RAM\n"
    )
    tree.remove(0x100000000, 0x13FFFFFFF, "System RAM")
    assert walk_system_ram_res(tree) == [(0x100000, 0x7FFDEFFF)]
    with pytest.raises(ValueError, match="partially overlaps"):
        tree.insert(Resource(0x7F000000, 0x80FFFFFF, "System RAM"))


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 12)), min_size=1, max_size=40),
       st.integers(1, 16))
def test_insert_by_bisection_places_like_the_walk(spans: list[tuple[int, int]], width: int) -> None:
    """Over ordered siblings the bisecting insert builds the same tree, and refuses the same
    partial overlaps naming the same sibling, as the walk over siblings in any order (with
    siblings released in between)."""
    fast = Resource(0, (1 << 64) - 1, "root")
    for k in range(0, 400, 10):
        fast.children.append(Resource(k * 16, k * 16 + width * 16 - 1, f"r{k}"))
    walk = fast.copy()
    for n, (start, size) in enumerate(spans):
        res = (start * 40, start * 40 + size * 24 + 7, f"new{n}")
        outcome: list[str] = []
        for tree, insert in ((fast, fast.insert), (walk, walk._insert_any)):
            try:
                insert(Resource(*res))
                outcome.append(iomem_render(tree))
            except ValueError as e:
                outcome.append(str(e))
        assert outcome[0] == outcome[1]
        assert iomem_render(fast) == iomem_render(walk)
        if n % 4 == 3:
            # release_resource of a top-level sibling, in both trees
            gone = fast.children[n % len(fast.children)]
            for tree in (fast, walk):
                tree.remove(gone.start, gone.end, gone.name)


@pytest.mark.parametrize(
    "bad", ["00000000-0000zzzz : x", "   00000000-00000fff : odd indent", "00002000-00001000 : backwards"]
)
def test_iomem_garbage_names_the_line(bad: str) -> None:
    with pytest.raises(ValueError, match="line 1"):
        parse_iomem(bad + "\n")


@given(st.sets(st.integers(0, 300), max_size=60))
def test_cpulist_round_trip(cpus: set[int]) -> None:
    assert cpulist_parse(cpulist_format(cpus) + "\n") == tuple(sorted(cpus))


def test_cpulist_forms() -> None:
    assert cpulist_parse("0,2-3\n") == (0, 2, 3)
    assert cpulist_parse("\n") == ()
    with pytest.raises(ValueError):
        cpulist_parse("3-1")


@needs_vectors
def test_percpu_layout_places_absent_cpus_where_the_kernel_put_them() -> None:
    """6.12.43 S0 has 2 present of 8 possible CPUs; the header the kernel built lists all 8 notes."""
    from crash_hotplug.elf.core import ElfCore

    step = next(s for s in vector_steps() if s.id == "6.12.43/base/S0")
    info = parse_pcpu_alloc((step.root / "var/log/dmesg").read_text())
    assert info is not None and info.unit_size == 524288 and len(info.units) == 8
    known = {c: int((step.root / f"sys/devices/system/cpu/cpu{c}/crash_notes").read_text(), 16) for c in (0, 1)}
    placed = place_per_cpu(info, known, list(range(8)))
    real = [p.p_paddr for p in ElfCore.parse(step.header).notes_phdrs[:-1]]
    assert [placed[c] for c in range(8)] == real


def test_percpu_zero_padded_and_empty_units() -> None:
    log = "pcpu-alloc: s1 r2 d3 u4096 alloc=1*8192\npcpu-alloc: [0] 00 01 [1] 02 -- \n"
    info = parse_pcpu_alloc(log)
    assert info is not None and info.units == ((0, 0), (0, 1), (1, 2), (1, None))
    assert place_per_cpu(info, {0: 0x1000}, [0, 1]) == {0: 0x1000, 1: 0x2000}
    with pytest.raises(ValueError, match="group 1"):
        place_per_cpu(info, {0: 0x1000}, [2])
