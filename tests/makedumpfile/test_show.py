"""``elfcorehdr show`` on kdump-compressed and flattened files, checked against the real tools:
``crash --osrelease`` reads the same release, ``makedumpfile -R`` rebuilds the file show read
from the stream."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from crash_hotplug.cli.elfcorehdr import elfcorehdr
from crash_hotplug.crash.vmcore import parse_crash_elf64_headers, write_vmcore
from tests.dumpfiles import flatten, kdump_from_elf
from tests.vmcore_cases import small_machine

needs_crash = pytest.mark.skipif(shutil.which("crash") is None, reason="crash is not installed (bash tasks test does)")
needs_makedumpfile = pytest.mark.skipif(shutil.which("makedumpfile") is None,
                                        reason="makedumpfile is not installed (bash tasks test does)")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("show")
    m = small_machine()
    elf = d / "vmcore"
    write_vmcore(parse_crash_elf64_headers(m.mem, m.elfcorehdr_addr), m.mem, elf)
    kd = kdump_from_elf(elf, d / "vmcore.kd", compression="lzo", dump_level=31, exclude=((0x2000, 0x2007),))
    return {"elf": elf, "kd": kd, "flat": flatten(kd, d / "vmcore.flat", shuffle=9)}


def show_json(path: Path) -> dict[str, Any]:
    res = CliRunner().invoke(elfcorehdr, ["show", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def test_show_a_kdump_compressed_file(made: dict[str, Path]) -> None:
    s = show_json(made["kd"])
    assert s["format"] == "kdump-compressed" and s["header_version"] == 6
    assert s["utsname"]["release"] == "6.12.0-small" and s["utsname"]["machine"] == "x86_64"
    assert (s["block_size"], s["nr_cpus"], s["compression"], s["dump_level"]) == (4096, 3, "lzo", 31)
    assert s["pages_present"] == 0x3000 - 0x100 and s["pages_filtered"] == 8
    assert s["pages_dumped"] == s["pages_present"] - 8
    assert [(r["start"], r["end"]) for r in s["ranges"]] == [(0x100000, 0x2FFFFFF)]
    assert [c["pid"] for c in s["cpu_notes"]] == [0, 0, 103]
    elf = show_json(made["elf"])
    assert [(c["pid"], c["rip"]) for c in s["cpu_notes"]] == [(c["pid"], c["rip"]) for c in elf["cpu_notes"]]
    assert s["vmcoreinfo"] == elf["vmcoreinfo"]
    text = CliRunner().invoke(elfcorehdr, ["show", str(made["kd"])])
    assert text.exit_code == 0
    for words in ("kdump-compressed, header_version 6", "compression lzo", "-d 31 (zero pages, cache pages",
                  "8 filtered by the dump level", "0x100000", "0x2ffffff"):
        assert words in text.stdout, words


def test_show_a_flattened_file_equals_the_rearranged_one(made: dict[str, Path]) -> None:
    flat, kd = show_json(made["flat"]), show_json(made["kd"])
    assert flat.pop("format") == "flattened kdump-compressed"
    kd.pop("format")
    flat.pop("file")
    kd.pop("file")
    assert flat == kd


@needs_crash
@pytest.mark.parametrize("name", ["kd", "flat", "elf"])
def test_crash_reads_the_release_show_reads(made: dict[str, Path], name: str) -> None:
    got = subprocess.run(["crash", "--osrelease", str(made[name])], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    s = show_json(made[name])
    release = s["utsname"]["release"] if "utsname" in s else s["vmcoreinfo"]["OSRELEASE"]
    # crash prints the release once per pass over a flattened file
    assert set(got.stdout.split()) == {release} == {"6.12.0-small"}


@needs_makedumpfile
def test_makedumpfile_rearranges_what_show_read(tmp_path: Path, made: dict[str, Path]) -> None:
    out = tmp_path / "rearranged"
    with made["flat"].open("rb") as f:
        got = subprocess.run(["makedumpfile", "-R", str(out)], stdin=f, capture_output=True, text=True,
                             timeout=120)
    assert got.returncode == 0, got.stdout + got.stderr
    assert out.read_bytes() == made["kd"].read_bytes()
    a, b = show_json(out), show_json(made["flat"])
    for s in (a, b):
        s.pop("file")
        s.pop("format")
    assert a == b
