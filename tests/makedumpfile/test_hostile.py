"""Truncated, corrupted and inconsistent kdump-compressed and flattened files: one line on stderr
naming the file and the format, exit 2; never a traceback, a hang, or a verdict from a broken file."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from crash_hotplug.cli.audit import audit as audit_command
from crash_hotplug.cli.elfcorehdr import elfcorehdr
from crash_hotplug.crash.vmcore import parse_crash_elf64_headers, read_vmcore_file, write_vmcore
from crash_hotplug.makedumpfile import codecs
from crash_hotplug.makedumpfile.diskdump import PageDesc
from crash_hotplug.makedumpfile.flattened import MDF_DATA_HEADER, MDF_HEADER_SIZE
from tests.dumpfiles import flatten, kdump_from_elf
from tests.vmcore_cases import small_machine

BS = 4096
SUB = BS  # the sub header sits in block 1


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    m = small_machine()
    elf = d / "vmcore"
    write_vmcore(parse_crash_elf64_headers(m.mem, m.elfcorehdr_addr), m.mem, elf)
    kd = kdump_from_elf(elf, d / "vmcore.kd", compression="zlib")
    return {"kd": kd, "lzo": kdump_from_elf(elf, d / "vmcore.lzo", compression="lzo"),
            "flat": flatten(kd, d / "vmcore.flat"), "root": m.write_root(d / "root")}


def show(path: Path) -> Result:
    return CliRunner().invoke(elfcorehdr, ["show", str(path)])


def audit(path: Path | str, root: Path, *extra: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(audit_command, [str(path), "--root", str(root), *extra], input=stdin)


def assert_bad(res: Result, *words: str) -> None:
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def patched(src: Path, dst: Path, offset: int, fmt: str, value: int | bytes) -> Path:
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    dst.write_bytes(bytes(data))
    return dst


#: (name, offset, struct format, value, words the error must hold)
HEADER_CASES = [
    ("header_version", 8, "<i", 0, "header_version is 0"),
    ("machine", 8 + 4 + 4 * 65, "65s", b"ppc64le", "only x86_64"),
    ("status-unknown", 424, "<I", 0x41, "status 0x41"),
    ("status-two-codecs", 424, "<I", 0x3, "more than one compression"),
    ("block_size-0", 428, "<i", 0, "block_size is 0"),
    ("block_size-odd", 428, "<i", 5000, "block_size is 5000"),
    ("sub_hdr_size-0", 432, "<i", 0, "sub_hdr_size 0"),
    ("sub_hdr_size-huge", 432, "<i", 1 << 20, "past the end of the file"),
    ("bitmap_blocks-0", 436, "<I", 0, "bitmap_blocks is 0"),
    ("bitmap_blocks-odd", 436, "<I", 3, "bitmap_blocks is 3"),
    ("bitmap_blocks-huge", 436, "<I", 1 << 30, "past the end of the file"),
    ("max_mapnr", 440, "<I", 0x1234, "disagrees with kdump_sub_header.max_mapnr_64"),
    ("nr_cpus", 460, "<i", -1, "nr_cpus is -1"),
    ("dump_level", SUB + 8, "<i", 99, "dump_level is 99"),
    ("split", SUB + 12, "<i", 7, "split is 7"),
    ("offset_vmcoreinfo", SUB + 32, "<q", 1 << 40, "offset_vmcoreinfo"),
    ("size_vmcoreinfo", SUB + 40, "<Q", 1 << 40, "size_vmcoreinfo"),
    ("offset_note", SUB + 48, "<q", -5, "offset_note"),
    ("size_note", SUB + 56, "<Q", 1 << 33, "size_note"),
    ("size_eraseinfo", SUB + 72, "<Q", 1 << 41, "size_eraseinfo"),
    ("max_mapnr_64", SUB + 96, "<Q", 1 << 40, "fewer than max_mapnr"),
]


@pytest.mark.parametrize(("name", "offset", "fmt", "value", "words"), HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_every_header_field(tmp_path: Path, made: dict[str, Path], name: str, offset: int, fmt: str,
                            value: int | bytes, words: str) -> None:
    bad = patched(made["kd"], tmp_path / f"{name}.kd", offset, fmt, value)
    if name == "max_mapnr_64":  # keep the 32-bit copy consistent: the bitmaps are what is short
        bad = patched(bad, bad, 440, "<I", 0xFFFFFFFF)
    assert_bad(show(bad), f"{name}.kd", "kdump-compressed", words)
    assert_bad(audit(bad, made["root"]), f"{name}.kd", words)


def test_split_range_outside_max_mapnr(tmp_path: Path, made: dict[str, Path]) -> None:
    bad = patched(made["kd"], tmp_path / "split.kd", SUB + 12, "<i", 1)
    bad = patched(bad, bad, SUB + 88, "<Q", 1 << 30)  # end_pfn_64
    assert_bad(show(bad), "split.kd", "end_pfn", "max_mapnr")


def test_notes_that_overflow(tmp_path: Path, made: dict[str, Path]) -> None:
    kd = read_vmcore_file(made["kd"]).kdump
    assert kd is not None
    bad = patched(made["kd"], tmp_path / "note.kd", kd.sub.offset_note + 4, "<I", 0xFFFFFFF0)
    assert_bad(show(bad), "note.kd", "kdump-compressed", "ELF notes", "overflows")


@pytest.mark.parametrize("cut", [0, 7, 100, 463, 464 + 10, BS + 50, 3 * BS, 3 * BS + 100])
def test_truncated(tmp_path: Path, made: dict[str, Path], cut: int) -> None:
    short = tmp_path / "short.kd"
    short.write_bytes(made["kd"].read_bytes()[:cut])
    res = show(short)
    assert_bad(res, "short.kd")
    if cut >= 8:
        assert "kdump-compressed" in res.stderr
    assert_bad(audit(short, made["root"]), "short.kd")


def test_descriptors_past_the_end(tmp_path: Path, made: dict[str, Path]) -> None:
    kd = read_vmcore_file(made["kd"]).kdump
    assert kd is not None
    cut = tmp_path / "cut.kd"
    cut.write_bytes(made["kd"].read_bytes()[: kd.pd_offset + 10 * PageDesc.SIZE])
    assert_bad(show(cut), "cut.kd", "page descriptors", "past the end")
    last = kd.pd_offset + (kd.dumped_pages - 1) * PageDesc.SIZE
    bad = patched(made["kd"], tmp_path / "pd.kd", last, "<q", 1 << 45)
    assert_bad(show(bad), "pd.kd", "page descriptor of pfn", "not inside")


def test_stray_bit_in_the_2nd_bitmap(tmp_path: Path, made: dict[str, Path]) -> None:
    kd = read_vmcore_file(made["kd"]).kdump
    assert kd is not None
    data = bytearray(made["kd"].read_bytes())
    data[kd.second.offset] |= 1  # pfn 0: not in the 1st bitmap (RAM starts at 1 MiB)
    bad = tmp_path / "stray.kd"
    bad.write_bytes(bytes(data))
    assert_bad(show(bad), "stray.kd", "2nd bitmap has pfn 0x0", "1st bitmap")


@pytest.mark.parametrize("which", ["kd", "lzo"])
def test_a_page_that_does_not_decompress(tmp_path: Path, made: dict[str, Path], which: str) -> None:
    vf = read_vmcore_file(made[which])
    kd = vf.kdump
    assert kd is not None
    pfn = 0x2F00
    index = kd.rank.rank(pfn)
    pd = PageDesc.unpack(made[which].read_bytes()[kd.pd_offset + index * 24 :][:24], 0)
    assert pd.flags
    data = bytearray(made[which].read_bytes())
    data[pd.offset : pd.offset + pd.size] = bytes(range(256)) * (pd.size // 256) + bytes(pd.size % 256)
    bad = tmp_path / "page.kd"
    bad.write_bytes(bytes(data))
    assert show(bad).exit_code == 0  # headers and bitmaps are fine
    assert_bad(audit(bad, made["root"], "--samples", "100000"), "page.kd", "pfn 0x2f00", "does not decompress")


def test_a_missing_codec_is_named(made: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lzo", None)  # an import of it fails
    monkeypatch.setattr(codecs, "_loaded", {})
    res = audit(made["lzo"], made["root"])
    assert_bad(res, "vmcore.lzo", "lzo-compressed", "python-lzo is not installed", "pip install python-lzo")
    # without page reads (no sampled bytes, no crash_notes through memory) the file needs no codec
    assert show(made["lzo"]).exit_code == 0


# ---------------------------------------------------------------------------------------------
# Flattened


def _flat_bytes(made: dict[str, Path]) -> bytes:
    return made["flat"].read_bytes()


@pytest.mark.parametrize(
    ("name", "edit", "words"),
    [
        ("type", lambda b: b[:16] + struct.pack(">q", 2) + b[24:], "type is 2"),
        ("version", lambda b: b[:24] + struct.pack(">q", 9) + b[32:], "version is 9"),
        ("short-header", lambda b: b[:1000], "inside the 4096-byte header"),
        ("no-end", lambda b: b[:-16], "without the end marker"),
        ("cut-piece", lambda b: b[: MDF_HEADER_SIZE + 16 + 100], "cut after 100"),
        ("negative", lambda b: b[:MDF_HEADER_SIZE] + MDF_DATA_HEADER.pack(-7, 10) + b[MDF_HEADER_SIZE + 16 :],
         "offset -0x7"),
        ("huge", lambda b: b[:MDF_HEADER_SIZE] + MDF_DATA_HEADER.pack(1 << 55, 10) + b[MDF_HEADER_SIZE + 16 :],
         "not a place in a dump file"),
    ],
)
def test_flattened_streams(tmp_path: Path, made: dict[str, Path], name: str, edit: object, words: str) -> None:
    assert callable(edit)
    bad = tmp_path / f"{name}.flat"
    bad.write_bytes(edit(_flat_bytes(made)))
    assert_bad(show(bad), f"{name}.flat", "flattened", words)
    assert_bad(audit(bad, made["root"]), f"{name}.flat", "flattened", words)
    assert_bad(audit("-", made["root"], stdin=bad.read_bytes()), "<stdin>", "flattened", words)


def test_a_broken_file_inside_a_flattened_stream(tmp_path: Path, made: dict[str, Path]) -> None:
    bad = patched(made["kd"], tmp_path / "inner.kd", 428, "<i", 3)
    flat = flatten(bad, tmp_path / "inner.flat", shuffle=4)
    assert_bad(show(flat), "inner.flat", "flattened kdump-compressed", "block_size is 3", "makedumpfile -R")


def test_not_a_vmcore_at_all(tmp_path: Path, made: dict[str, Path]) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello, world\n" * 100)
    assert_bad(audit(junk, made["root"]), "junk", "not a vmcore", "KDUMP", "makedumpfile")
    assert_bad(audit("-", made["root"], stdin=b"hello"), "<stdin>", "not a vmcore")


def test_a_dump_makedumpfile_marked_incomplete_is_a_gap(tmp_path: Path, made: dict[str, Path]) -> None:
    kd = read_vmcore_file(made["kd"]).kdump
    assert kd is not None
    data = bytearray(made["kd"].read_bytes())
    struct.pack_into("<I", data, 424, 0x1 | 0x8)  # zlib | DUMP_DH_COMPRESSED_INCOMPLETE
    cut = tmp_path / "incomplete.kd"
    cut.write_bytes(bytes(data[: kd.pd_offset + 100 * PageDesc.SIZE]))  # the disk filled up
    res = audit(cut, made["root"], "--json")
    assert res.exit_code == 1, res.output
    assert '"data-truncated"' in res.stdout and "incomplete" in res.stdout
    shown = show(cut)
    assert shown.exit_code == 0 and "incomplete" in shown.stdout
    vf = read_vmcore_file(cut)
    assert vf.read_phys(0x2F00000, 4096) is None  # its descriptor was never written
