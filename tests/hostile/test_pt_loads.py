"""Overlapping or unsorted PT_LOADs: no kernel writes them. ``show`` and ``diff`` say so in a warning
line (exit 0, the header is still shown), ``audit`` reports a finding (exit 1)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from click.testing import CliRunner, Result

from crash_hotplug.cli import cli
from crash_hotplug.elf.core import pt_load_problems
from tests.conftest import VECTORS, needs_vectors

pytestmark = needs_vectors

PHDR = 56


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _phdr_off(i: int) -> int:
    return 64 + i * PHDR


def _set(buf: bytearray, i: int, field: str, value: int) -> None:
    off = {"p_offset": 8, "p_vaddr": 16, "p_paddr": 24, "p_filesz": 32, "p_memsz": 40}[field]
    struct.pack_into("<Q", buf, _phdr_off(i) + off, value)


def _raw_overlapping(tmp_path: Path) -> Path:
    assert VECTORS is not None
    buf = bytearray((VECTORS / "6.12.43/base/S0/elfcorehdr.bin").read_bytes())
    for f in ("p_offset", "p_paddr"):  # a raw header's p_offset is its p_paddr
        _set(buf, 11, f, 0x6E000000)
    p = tmp_path / "overlap.bin"
    p.write_bytes(buf)
    return p


def _raw_unsorted(tmp_path: Path) -> Path:
    assert VECTORS is not None
    buf = bytearray((VECTORS / "6.12.43/base/S0/elfcorehdr.bin").read_bytes())
    a, b = _phdr_off(10), _phdr_off(11)
    buf[a : a + PHDR], buf[b : b + PHDR] = buf[b : b + PHDR], buf[a : a + PHDR]
    p = tmp_path / "unsorted.bin"
    p.write_bytes(buf)
    return p


def test_the_rule() -> None:
    assert pt_load_problems([(1, 0x1000, 0x1000), (2, 0x2000, 0x1000)]) == []
    [overlap] = pt_load_problems([(1, 0x1000, 0x1000), (2, 0x1800, 0x1000)])
    assert "PT_LOAD 2 [0x1800-0x27ff] overlaps PT_LOAD 1 [0x1000-0x1fff]" in overlap
    [order] = pt_load_problems([(1, 0x3000, 0x1000), (2, 0x1000, 0x1000)])
    assert "PT_LOAD 2 at 0x1000 comes after PT_LOAD 1 at 0x3000" in order
    assert "p_memsz 0" in pt_load_problems([(1, 0x1000, 0)])[0]
    # one range inside a large one that an earlier, shorter one does not reach
    assert len(pt_load_problems([(1, 0, 0x10000), (2, 0x1000, 0x10), (3, 0x8000, 0x10)])) == 2
    many = pt_load_problems([(i, 0, 0x1000) for i in range(100)])
    assert len(many) == 9 and many[-1].startswith("and ")


def test_show_warns_on_overlapping_pt_loads(tmp_path: Path) -> None:
    p = _raw_overlapping(tmp_path)
    res = run("elfcorehdr", "show", p)
    assert res.exit_code == 0, res.output
    warn = [ln for ln in res.stdout.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "PT_LOAD 11 [0x6e000000-" in warn[0] and "overlaps PT_LOAD 10" in warn[0]
    data = json.loads(run("elfcorehdr", "show", p, "--json").stdout)
    assert len(data["warnings"]) == 1


def test_show_warns_on_unsorted_pt_loads(tmp_path: Path) -> None:
    res = run("elfcorehdr", "show", _raw_unsorted(tmp_path))
    assert res.exit_code == 0
    assert "not in ascending address order" in res.stdout


def test_show_of_a_kernel_header_has_no_warning() -> None:
    assert VECTORS is not None
    for f in ("6.12.43/base/S0/elfcorehdr.bin", "6.12.43/base/vmcore-headers.bin"):
        res = run("elfcorehdr", "show", VECTORS / f)
        assert res.exit_code == 0 and "warning:" not in res.stdout


def test_diff_warns(tmp_path: Path) -> None:
    assert VECTORS is not None
    res = run("elfcorehdr", "diff", VECTORS / "6.12.43/base/S0/elfcorehdr.bin", _raw_overlapping(tmp_path))
    assert res.exit_code == 1  # they differ
    warn = [ln for ln in res.stdout.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "overlap.bin: PT_LOAD 11" in warn[0]


def test_audit_reports_overlapping_pt_loads_as_a_finding(tmp_path: Path) -> None:
    """The issue's "audit calls a vmcore with overlapping PT_LOADs complete"."""
    assert VECTORS is not None
    s = VECTORS / "6.12.43/base"
    buf = bytearray((s / "vmcore-headers.bin").read_bytes())
    _set(buf, 4, "p_paddr", 0x7F800000)  # PT_LOAD 4 now starts inside PT_LOAD 3
    p = tmp_path / "vmcore"
    p.write_bytes(buf)
    res = run("audit", p, "--root", s / "S5/root", "--json")
    assert res.exit_code == 1, res.output
    data = json.loads(res.stdout)
    assert not data["complete"]
    kinds = [f["kind"] for f in data["findings"]]
    assert "pt-load-layout" in kinds
    res = run("audit", s / "vmcore-headers.bin", "--root", s / "S5/root", "--json")
    assert res.exit_code == 0
