"""The one vmcore reader on every format kdump writes: the audit's verdict on a kdump-compressed
(each codec), flattened (shuffled pieces, from a file and from a pipe) or -d 1 filtered file
equals its verdict on the ELF the file was made from."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crash_hotplug.audit import audit
from crash_hotplug.cli.audit import audit as audit_command
from crash_hotplug.crash.vmcore import parse_crash_elf64_headers, read_vmcore_file, write_vmcore
from crash_hotplug.makedumpfile.bitmap import Bitmap, RankIndex, runs_of
from tests.dumpfiles import flatten, kdump_from_elf
from tests.vmcore_cases import SmallMachine, small_machine

CODECS = ["zlib", "lzo", "snappy", "zstd", None]


def _elf(m: SmallMachine, path: Path) -> Path:
    write_vmcore(parse_crash_elf64_headers(m.mem, m.elfcorehdr_addr), m.mem, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("formats")
    m = small_machine()
    elf = _elf(m, d / "vmcore")
    out = {"elf": elf, "root": m.write_root(d / "root")}
    for codec in CODECS:
        out[f"kdump-{codec}"] = kdump_from_elf(elf, d / f"vmcore.{codec}", compression=codec)
    out["flat"] = flatten(out["kdump-zlib"], d / "vmcore.flat")
    out["flat-elf"] = flatten(elf, d / "vmcore.elf.flat", piece=1 << 20, shuffle=5)
    return out


def _verdict(path: Path | str, root: Path, stdin: bytes | None = None) -> tuple[int, dict[str, Any]]:
    res = CliRunner().invoke(audit_command, [str(path), "--root", str(root), "--json", "--samples", "100"],
                             input=stdin)
    assert res.exit_code in (0, 1), res.output + res.stderr
    data: dict[str, Any] = json.loads(res.stdout)
    return res.exit_code, data


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["findings"] == b["findings"]
    assert a["cpus"] == b["cpus"] and a["cpu_method"] == b["cpu_method"]
    for key in ("missing", "extra", "expected", "dumped"):
        assert a["memory"][key] == b["memory"][key], key
    assert a["bytes"] == b["bytes"]


@pytest.mark.parametrize("name", [f"kdump-{c}" for c in CODECS] + ["flat", "flat-elf"])
def test_each_format_gets_the_elf_verdict(files: dict[str, Path], name: str) -> None:
    code0, elf = _verdict(files["elf"], files["root"])
    code, other = _verdict(files[name], files["root"])
    assert code0 == code == 0
    _same(elf, other)
    assert other["bytes"]["done"] and other["bytes"]["samples"] == 100
    want = {"flat": "flattened kdump-compressed", "flat-elf": "flattened ELF"}.get(name, "kdump-compressed")
    assert other["format"] == want


@pytest.mark.parametrize("name", ["flat", "kdump-lzo", "elf", "flat-elf"])
def test_from_a_pipe(files: dict[str, Path], name: str) -> None:
    _, on_file = _verdict(files[name], files["root"])
    _, piped = _verdict("-", files["root"], stdin=files[name].read_bytes())
    assert piped["vmcore"] == "-"
    _same(on_file, piped)


def _edit_iomem(root: Path, text: str) -> None:
    (root / "proc/iomem").write_text(text)


@pytest.mark.parametrize("codec", ["zlib", "lzo"])
def test_gaps_are_the_same_on_every_format(tmp_path: Path, codec: str) -> None:
    # a 6.1 kernel whose header predates CPU 3's hot-add; RAM added after the load; RAM removed
    m = small_machine(online=(0, 1, 3), present_at_load=2)
    elf = _elf(m, tmp_path / "vmcore")
    kd = kdump_from_elf(elf, tmp_path / "vmcore.kd", compression=codec)
    flat = flatten(kd, tmp_path / "vmcore.flat", shuffle=2)
    root = m.write_root(tmp_path / "root", model=False)
    iomem = (root / "proc/iomem").read_text()
    cases = {
        "cpu": iomem,
        "missing": iomem + "04000000-07ffffff : System RAM\n",
        "extra": iomem.replace("00100000-03ffffff : System RAM", "00100000-01ffffff : System RAM\n"
                               "03000000-03ffffff : System RAM"),
    }
    for case, text in cases.items():
        _edit_iomem(root, text)
        code0, on_elf = _verdict(elf, root)
        assert code0 == 1
        kinds = sorted(f["kind"] for f in on_elf["findings"])
        want = {"cpu": ["cpu-missing"], "missing": ["cpu-missing", "memory-missing"],
                "extra": ["cpu-missing", "memory-extra"]}[case]
        assert kinds == want, (case, on_elf["findings"])
        for path in (kd, flat):
            code, got = _verdict(path, root)
            assert code == code0
            _same(on_elf, got)


def test_pages_out_of_the_2nd_bitmap_are_filtered_not_missing(tmp_path: Path) -> None:
    m = small_machine()
    elf = _elf(m, tmp_path / "vmcore")
    # what -d 31 leaves out of the 2nd bitmap (free, cache and user pages, found through struct page)
    kd = kdump_from_elf(elf, tmp_path / "vmcore.d31", dump_level=31, exclude=((0x2000, 0x203F), (0x2100, 0x2100)))
    root = m.write_root(tmp_path / "root")
    report = audit(kd, root, samples=100_000)
    assert report.complete, report.findings
    assert report.memory.missing == [] and report.memory.dump_level == 31
    assert report.memory.filtered == [(0x2000000, 0x203FFFF), (0x2100000, 0x2100FFF)]
    note = next(n for n in report.notes if "filtered by" in n)
    assert "65 pages" in note and "-d 31 (zero pages, cache pages" in note and "not missing" in note
    # the byte check reads only pages the file holds: every dumped candidate, none filtered
    on_elf = audit(elf, root, samples=100_000)
    assert report.bytes.candidates == on_elf.bytes.candidates - 65
    assert report.bytes.mismatches == ()


def test_dump_level_1_zero_pages_share_one_page(tmp_path: Path) -> None:
    # makedumpfile -d 1 keeps zero pages in the 2nd bitmap, their descriptors pointing at one zero page
    m = small_machine()
    m.mem.zero(0x2000000, 0x40000)
    elf = _elf(m, tmp_path / "vmcore")
    kd = kdump_from_elf(elf, tmp_path / "vmcore.d1", dump_level=1)
    vf = read_vmcore_file(kd)
    assert vf.read_phys(0x2000000, 0x40000) == bytes(0x40000)
    assert vf.kdump is not None and vf.kdump.filtered_pages() == 0
    report = audit(kd, m.write_root(tmp_path / "root", model=False))  # zeroed pages are not the pattern
    assert report.complete and report.memory.filtered == []
    assert any("-d 1 (zero pages), which left out no page" in n for n in report.notes)


@pytest.mark.parametrize("version", [1, 3, 4, 5, 6])
def test_header_versions(tmp_path: Path, files: dict[str, Path], version: int) -> None:
    kd = kdump_from_elf(files["elf"], tmp_path / "vmcore.kd", header_version=version)
    vf = read_vmcore_file(kd)
    assert vf.kdump is not None and vf.kdump.header.header_version == version
    # notes (and so CPUs) from header_version 4, VMCOREINFO text from 3
    assert len(vf.prstatus) == (3 if version >= 4 else 0)
    assert ("OSRELEASE" in vf.vmcoreinfo) == (version >= 3)
    assert vf.present_ranges() == read_vmcore_file(files["elf"]).present_ranges() == [(0x100000, 0x2FFFFFF)]


def test_corrupt_pages_are_found_in_a_compressed_dump(tmp_path: Path, files: dict[str, Path]) -> None:
    m = small_machine()
    m.mem.write(0x2F00000, b"\x01" * 4096)  # one page that no longer holds the machine's pattern
    elf = _elf(m, tmp_path / "vmcore")
    kd = kdump_from_elf(elf, tmp_path / "vmcore.kd", compression="zstd")
    report = audit(kd, files["root"], samples=100_000)
    assert [f.kind for f in report.findings] == ["bytes-differ"]
    assert report.bytes.mismatches == (0x2F00000,)


def test_bitmap_runs_and_rank() -> None:
    bits = bytearray(3 * 4096 + 3)
    set_pfns = {0, 1, 2, 7, 8, 15, 16, 17, 100, 8 * 4096, 8 * 4096 + 1, *range(200, 9000), 8 * len(bits) - 1}
    for p in set_pfns:
        bits[p // 8] |= 1 << (p % 8)
    data = bytes(bits)
    bm = Bitmap(lambda off, n: data[off : off + n], 0, 8 * len(data), what="test", fmt="test")
    runs = list(bm.runs())
    assert sum(e - s + 1 for s, e in runs) == len(set_pfns) == bm.count()
    assert {p for s, e in runs for p in range(s, e + 1)} == set_pfns
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(runs))
    rank = RankIndex(bm)
    for pfn in (0, 3, 17, 18, 150, 5000, 8 * 4096 + 1, 8 * len(data) - 1, 8 * len(data)):
        assert rank.rank(pfn) == sum(1 for p in set_pfns if p < pfn)
    assert list(runs_of(b"\x00\xff\x81", 8)) == [(16, 23), (24, 24), (31, 31)]
    # bits past nbits are ignored
    short = Bitmap(lambda off, n: b"\xff"[off : off + n], 0, 3, what="test", fmt="test")
    assert list(short.runs()) == [(0, 2)] and short.count() == 3
