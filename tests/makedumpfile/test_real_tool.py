"""Debian's makedumpfile is the oracle: the files it makes from model vmcores (a complete run, 6.1
without crash hotplug, upstream right after a DIMM removal) get the same audit verdict as the ELF
they came from, in every output format, from a file and from a pipe."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crash_hotplug.audit import audit
from crash_hotplug.crash.vmcore import read_vmcore_file
from crash_hotplug.lab.errors import LabError
from tests.makedumpfile_cases import Makedumpfile, trixie_makedumpfile

pytestmark = pytest.mark.skipif(shutil.which("makedumpfile") is None,
                                reason="makedumpfile is not installed (bash tasks test installs it)")

#: ``tests/conftest.py``'s ``model_dumps`` fixture: a model dump (tests/makedumpfile_cases.py) by case name
ModelDumps = Callable[[str], Any]


@pytest.fixture
def dumps(request: pytest.FixtureRequest) -> ModelDumps:
    """The session's model dumps; the tests skip in a tree without tests/makedumpfile_cases.py."""
    if importlib.util.find_spec("tests.makedumpfile_cases") is None:
        pytest.skip("tests/makedumpfile_cases.py (the model dump fixtures) is not in this tree")
    got: ModelDumps = request.getfixturevalue("model_dumps")
    return got

PAGE = 4096
CASES = ["complete", "no-hotplug-6.1", "dimm-removed"]
MODES = [("-c",), ("-l",), ("-E",), ("-F", "-l"), ("-F", "-E")]


def _findings(path: Path | list[Path], root: Path) -> tuple[int, list[tuple[str, str]], Any]:
    r = audit(path, root, samples=64)
    return r.exit_status, [(f.kind, f.message) for f in r.findings], r


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", MODES, ids=["".join(m) for m in MODES])
def test_makedumpfile_output_gets_the_elf_verdict(dumps: ModelDumps, case: str, mode: tuple[str, ...]) -> None:
    dump = dumps(case)
    code0, elf, elf_report = _findings(dump.vmcore, dump.root)
    assert code0 == dump.case.audit_exit
    made = dump.convert(*mode, level=1)
    code, got, report = _findings(made, dump.root)
    assert (code, got) == (code0, elf)
    assert report.memory.missing == elf_report.memory.missing and report.memory.extra == elf_report.memory.extra
    assert [c.status for c in report.cpus] == [c.status for c in elf_report.cpus]
    assert report.bytes.done and report.bytes.mismatches == ()
    assert report.dump_format == {"-c": "kdump-compressed", "-l": "kdump-compressed", "-E": "ELF",
                                  "-F-l": "flattened kdump-compressed", "-F-E": "flattened ELF"}["".join(mode)]


@pytest.mark.parametrize("case", CASES)
def test_dump_level_0(dumps: ModelDumps, case: str) -> None:
    dump = dumps(case)
    _, elf, _ = _findings(dump.vmcore, dump.root)
    for mode in (("-c",), ("-E",)):
        code, got, report = _findings(dump.convert(*mode, level=0), dump.root)
        assert (code, got) == (dump.case.audit_exit, elf)
        assert report.memory.filtered_bytes == 0


def test_dump_level_1_zero_pages_are_filtered_not_missing(dumps: ModelDumps) -> None:
    dump = dumps("complete")
    # -E leaves zero pages out of each PT_LOAD's file data (p_filesz < p_memsz, or a split PT_LOAD)
    elf = read_vmcore_file(dump.convert("-E", level=1))
    assert elf.core is not None and any(s.filesz < s.size for s in elf.ram_loads)
    report = audit(dump.convert("-E", level=1), dump.root)
    assert report.complete and report.memory.missing == []
    assert report.memory.filtered_bytes > 0 and report.memory.filtered
    assert any("filtered by the dump level" in n and "not missing" in n for n in report.notes)
    # the kdump-compressed format keeps them in the 2nd bitmap, every one pointing at one zero page
    kd = read_vmcore_file(dump.convert("-l", level=1))
    assert kd.kdump is not None and kd.kdump.dump_level == 1 and kd.kdump.filtered_pages() == 0
    s, e = report.memory.filtered[0]
    assert kd.read_phys(s, e - s + 1) == bytes(e - s + 1)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt", ["-l", "-E"])
def test_from_a_pipe(dumps: ModelDumps, case: str, fmt: str) -> None:
    """``makedumpfile -F | crash-hotplug audit -``: a real pipe, read once, front to back."""
    dump = dumps(case)
    cmd = (f"makedumpfile -F {fmt} -d 1 --message-level 1 {dump.vmcore} | "
           f"{sys.executable} -m crash_hotplug audit - --root {dump.root} --json --samples 64")
    res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=600)
    assert res.returncode == dump.case.audit_exit, res.stderr
    data = json.loads(res.stdout)
    _, elf, _ = _findings(dump.vmcore, dump.root)
    assert [(f["kind"], f["message"]) for f in data["findings"]] == elf
    assert data["format"] == f"flattened {'kdump-compressed' if fmt == '-l' else 'ELF'}"


def test_show_agrees_with_crash_and_makedumpfile(dumps: ModelDumps, tmp_path: Path) -> None:
    dump = dumps("complete")
    lzo = dump.convert("-l", level=1)
    res = subprocess.run([sys.executable, "-m", "crash_hotplug", "elfcorehdr", "show", str(lzo), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    if shutil.which("crash"):
        osrelease = subprocess.run(["crash", "--osrelease", str(lzo)], capture_output=True, text=True, timeout=60)
        assert set(osrelease.stdout.split()) == {shown["utsname"]["release"]} == {shown["vmcoreinfo"]["OSRELEASE"]}
    vf = read_vmcore_file(dump.vmcore)
    assert shown["nr_cpus"] == len(vf.prstatus) and shown["compression"] == "lzo" and shown["dump_level"] == 1
    assert [(r["start"], r["end"]) for r in shown["ranges"]] == vf.present_ranges()
    # makedumpfile -R rebuilds the flattened stream into the file show reads the same way
    rearranged = tmp_path / "rearranged"
    with dump.convert("-F", "-l", level=1).open("rb") as f:
        r = subprocess.run(["makedumpfile", "-R", str(rearranged)], stdin=f, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a = json.loads(subprocess.run([sys.executable, "-m", "crash_hotplug", "elfcorehdr", "show", str(rearranged),
                                   "--json"], capture_output=True, text=True, timeout=120).stdout)
    b = json.loads(subprocess.run([sys.executable, "-m", "crash_hotplug", "elfcorehdr", "show",
                                   str(dump.convert("-F", "-l", level=1)), "--json"],
                                  capture_output=True, text=True, timeout=120).stdout)
    for d in (a, b, shown):
        d.pop("file")
        d.pop("format")
    assert a == b == shown


def test_split_parts_read_together(dumps: ModelDumps, tmp_path: Path) -> None:
    dump = dumps("dimm-removed")
    parts = [tmp_path / f"part{i}" for i in range(3)]
    res = subprocess.run(["makedumpfile", "--split", "-l", "-d", "1", "--message-level", "1", str(dump.vmcore),
                          *map(str, parts)], capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr
    _, elf, _ = _findings(dump.vmcore, dump.root)
    code, got, report = _findings(list(reversed(parts)), dump.root)
    assert (code, got) == (dump.case.audit_exit, elf)
    assert report.dump_format == "kdump-compressed, 3 --split parts" and report.bytes.done
    one = audit(parts[0], dump.root)
    assert "dump-part" in [f.kind for f in one.findings]
    cli = subprocess.run([sys.executable, "-m", "crash_hotplug", "audit", str(parts[0]), str(parts[2]),
                          "--root", str(dump.root)], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "in no part" in cli.stderr and cli.stderr.count("\n") == 1, cli.stderr


@pytest.fixture(scope="session")
def zstd_makedumpfile() -> Makedumpfile:
    """Debian trixie's makedumpfile, built with zstd (``-z``), which bookworm's is not."""
    try:
        return trixie_makedumpfile()
    except LabError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"trixie's makedumpfile could not be fetched: {exc}")
        pytest.skip(f"trixie's makedumpfile could not be fetched: {exc}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", [("-z",), ("-F", "-z")], ids=["-z", "-F-z"])
def test_zstd_pages_from_a_real_makedumpfile(dumps: ModelDumps, zstd_makedumpfile: Makedumpfile, case: str,
                                              mode: tuple[str, ...]) -> None:
    """Pages compressed with zstd by a real makedumpfile (trixie's 1.7.6, as RHEL's default
    ``-z`` collectors write them) get the ELF's verdict."""
    dump = dumps(case)
    code0, elf, elf_report = _findings(dump.vmcore, dump.root)
    made = dump.convert(*mode, level=1, tool=zstd_makedumpfile)
    code, got, report = _findings(made, dump.root)
    assert (code, got) == (code0, elf)
    assert report.memory.missing == elf_report.memory.missing and report.memory.extra == elf_report.memory.extra
    assert report.bytes.done and report.bytes.mismatches == ()
    assert report.dump_format == ("flattened " if "-F" in mode else "") + "kdump-compressed"


def test_every_zstd_page_is_the_elf_page(dumps: ModelDumps, zstd_makedumpfile: Makedumpfile) -> None:
    dump = dumps("complete")
    zstd = dump.convert("-z", level=1, tool=zstd_makedumpfile)
    kd = read_vmcore_file(zstd)
    elf = read_vmcore_file(dump.vmcore)
    assert kd.kdump is not None
    assert json.loads(subprocess.run([sys.executable, "-m", "crash_hotplug", "elfcorehdr", "show",
                                      str(zstd), "--json"], capture_output=True, text=True,
                                     timeout=120).stdout)["compression"] == "zstd"
    pages = 0
    for start, end in elf.present_ranges():
        for pfn in range(start // PAGE, end // PAGE + 1):
            got = kd.read_phys(pfn * PAGE, PAGE)
            assert got == elf.read_phys(pfn * PAGE, PAGE), f"pfn {pfn:#x}"
            pages += 1
    assert pages > 60_000
