"""Issue class "silently accepted impossible states": each example is one error naming the file
(and the line where there is one), exit 2, instead of a header or a verdict."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from crash_hotplug.cli import cli
from tests.cli_results import one_line_exit_2
from tests.conftest import needs_vectors
from tests.hostile.common import copy_root

pytestmark = needs_vectors

CPU = "sys/devices/system/cpu"


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_root(tmp_path)


def build(root: Path) -> Result:
    return run("elfcorehdr", "build", "--root", root, "-o", root.parent / "h.bin")


def edit_iomem(root: Path, lines: list[str]) -> Path:
    p = root / "proc/iomem"
    p.write_text("".join(ln + "\n" for ln in lines))
    return p


def iomem_lines(root: Path) -> list[str]:
    return (root / "proc/iomem").read_text().splitlines()


def test_the_unmodified_root_builds(root: Path) -> None:
    assert build(root).exit_code == 0


def test_iomem_ram_ranges_overlap(root: Path) -> None:
    lines = iomem_lines(root)
    i = lines.index("7ffdf000-7fffffff : Reserved")
    lines.insert(i + 1, "7ff00000-80ffffff : System RAM")
    edit_iomem(root, lines)
    one_line_exit_2(build(root), "proc/iomem", f"line {i + 2}:", "System RAM", "Reserved [0x7ffdf000-0x7fffffff]")


def test_iomem_unsorted(root: Path) -> None:
    lines = iomem_lines(root)
    lines[0], lines[1] = lines[1], lines[0]
    edit_iomem(root, lines)
    one_line_exit_2(build(root), "proc/iomem", "line 2:", "out of order")


def test_iomem_repeats_a_line(root: Path) -> None:
    lines = iomem_lines(root)
    lines.insert(2, lines[1])
    edit_iomem(root, lines)
    one_line_exit_2(build(root), "proc/iomem", "line 3:", "repeats")


def test_iomem_beyond_52_bit_physical_addresses(root: Path) -> None:
    edit_iomem(root, [*iomem_lines(root), "10000000000000-10000fffffffff : System RAM"])
    one_line_exit_2(build(root), "proc/iomem", "52-bit physical address space")


def test_iomem_covering_the_whole_address_space(root: Path) -> None:
    edit_iomem(root, ["0000000000000000-ffffffffffffffff : System RAM", "  6f000000-7effffff : Crash kernel"])
    one_line_exit_2(build(root), "proc/iomem", "line 1:", "52-bit")


def test_iomem_uppercase_or_fullwidth_hex(root: Path) -> None:
    lines = iomem_lines(root)
    edit_iomem(root, [lines[0].upper(), *lines[1:]])
    one_line_exit_2(build(root), "proc/iomem", "line 1:")
    edit_iomem(root, ["０0000000-00000fff : Reserved", *lines[1:]])
    one_line_exit_2(build(root), "proc/iomem", "line 1:")


@pytest.mark.parametrize("value, why", [
    ("0", "not inside System RAM"),
    ("1", "not aligned"),
    ("fffffffffffff000", "not inside System RAM"),
    ("\uff16ccbd800", "lowercase hex"),   # full-width 6
    ("0x6ccbd800", "lowercase hex"),
    ("6CCBD800", "lowercase hex"),
    (" 6ccbd800", "lowercase hex"),
])
def test_crash_notes_impossible_addresses(root: Path, value: str, why: str) -> None:
    (root / f"{CPU}/cpu1/crash_notes").write_text(value + "\n")
    one_line_exit_2(build(root), f"{CPU}/cpu1/crash_notes", why)


def test_two_cpus_share_one_crash_notes(root: Path) -> None:
    (root / f"{CPU}/cpu1/crash_notes").write_text((root / f"{CPU}/cpu0/crash_notes").read_text())
    one_line_exit_2(build(root), "crash_notes", "overlaps cpu0's note buffer")


def test_crash_notes_inside_a_reserved_range(root: Path) -> None:
    (root / f"{CPU}/cpu1/crash_notes").write_text("7ffdf000\n")  # Reserved, not System RAM
    one_line_exit_2(build(root), f"{CPU}/cpu1/crash_notes", "not inside System RAM")


def test_no_crash_kernel_line_is_an_error_not_a_header(root: Path) -> None:
    edit_iomem(root, [ln for ln in iomem_lines(root) if "Crash kernel" not in ln])
    one_line_exit_2(build(root), "proc/iomem", "no 'Crash kernel' line")
    assert not (root.parent / "h.bin").exists()


def test_crash_kernel_outside_system_ram(root: Path) -> None:
    lines = [ln for ln in iomem_lines(root) if "Crash kernel" not in ln]
    lines.insert(lines.index("80000000-febfffff : PCI Bus 0000:00") + 1, "  90000000-9fffffff : Crash kernel")
    edit_iomem(root, lines)
    one_line_exit_2(build(root), "proc/iomem", "Crash kernel [0x90000000-0x9fffffff] is not inside System RAM")


def test_cpulist_beyond_kernel_max_is_refused_before_expanding(root: Path) -> None:
    (root / f"{CPU}/possible").write_text("0-99999999\n")
    one_line_exit_2(build(root), f"{CPU}/possible", "not below nr_cpu_ids 8192")
    res = run("status", "--root", root)  # status names it and does not build a 100M-element set
    assert f"{CPU}/possible" in res.output, res.output


def test_cpulist_not_as_the_kernel_prints_it(root: Path) -> None:
    for bad in ("1,0", "0-1,1", "\uff10-1", "0-1 ", "+0-1", "0--1"):
        (root / f"{CPU}/online").write_text(bad + "\n")
        one_line_exit_2(build(root), f"{CPU}/online")


def test_kernel_max_beyond_any_kernel(root: Path) -> None:
    (root / f"{CPU}/kernel_max").write_text("99999999\n")
    one_line_exit_2(build(root), f"{CPU}/kernel_max", "NR_CPUS above 8192")


def test_vmcoreinfo_not_as_pa(root: Path) -> None:
    (root / "sys/kernel/vmcoreinfo").write_text("6cce8000 1024\n")
    one_line_exit_2(build(root), "sys/kernel/vmcoreinfo", "%pa")
    (root / "sys/kernel/vmcoreinfo").write_text("0xfffffffffff00000 1024\n")
    one_line_exit_2(build(root), "sys/kernel/vmcoreinfo", "not inside System RAM")


@pytest.mark.parametrize("value", ["0x1", "1\0", "2", "yes", "", " 1"])
def test_kexec_crash_loaded_garbage_is_not_not_loaded(root: Path, value: str) -> None:
    (root / "sys/kernel/kexec_crash_loaded").write_text(value + "\n")
    one_line_exit_2(run("status", "--root", root), "sys/kernel/kexec_crash_loaded", "expected 0 or 1")


def test_garbage_crash_hotplug_is_not_a_kernel_without_it(root: Path) -> None:
    (root / f"{CPU}/crash_hotplug").write_text("garbage\n")
    one_line_exit_2(run("status", "--root", root), f"{CPU}/crash_hotplug", "expected 0 or 1")


def test_kexec_crash_size_minus_one(root: Path) -> None:
    (root / "sys/kernel/kexec_crash_size").write_text("-1\n")
    res = run("status", "--root", root)
    one_line_exit_2(res, "sys/kernel/kexec_crash_size", "unsigned decimal")
    assert "-1 B" not in res.output


def test_crash_notes_inside_the_crash_kernel_reservation(root: Path) -> None:
    (root / f"{CPU}/cpu1/crash_notes").write_text("6f000000\n")
    one_line_exit_2(build(root), f"{CPU}/cpu1/crash_notes", "Crash kernel reservation")
