"""The command line: outputs on the real vectors, and one clear error (exit 2) per class of bad input."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from crash_hotplug.cli import cli, example_root
from tests.conftest import VECTORS, needs_vectors

pytestmark = needs_vectors


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_clean_error(res: Result, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.output + res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def snap(tmp_path: Path) -> Path:
    assert VECTORS is not None
    dst = tmp_path / "root"
    shutil.copytree(VECTORS / "6.12.43/base/S0/root", dst)
    return dst


def test_build_writes_kernel_bytes(tmp_path: Path) -> None:
    assert VECTORS is not None
    out = tmp_path / "h.bin"
    res = run("elfcorehdr", "build", "--root", str(VECTORS / "6.12.43/base/S1/root"), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == (VECTORS / "6.12.43/base/S1/elfcorehdr.bin").read_bytes()
    assert "segment memsz 921600" in res.output


def test_build_kernel_version_override_gives_pre_6_6_layout(tmp_path: Path) -> None:
    assert VECTORS is not None
    out = tmp_path / "h.bin"
    root = VECTORS / "6.12.43/base/S0/root"
    assert run("elfcorehdr", "build", "--root", str(root), "-o", str(out), "--kernel-version", "6.1").exit_code == 0
    data = json.loads(run("elfcorehdr", "show", str(out), "--json").output)
    assert len(data["cpu_notes"]) == 2  # present CPUs only, as 6.1 lists them


def test_show_json_names_cpus_and_room(tmp_path: Path) -> None:
    assert VECTORS is not None
    s1 = VECTORS / "6.12.43/base/S1"
    res = run("elfcorehdr", "show", str(s1 / "elfcorehdr.bin"), "--root", str(s1 / "root"), "--json")
    data = json.loads(res.output)
    assert [c["cpu"] for c in data["cpu_notes"]] == list(range(8))
    assert data["reserved_size"] == 921600
    assert data["free_phdrs"] == (921600 - 792) // 56
    assert data["ranges"][-1] == {"start": 0x100000000, "end": 0x13FFFFFFF, "vaddr": 0xFFFF888100000000,
                                  "size": 1 << 30}
    assert data["total_ram"] == 0x6EF00000 + 0xFDF000 + (1 << 30)


def test_show_vmcore_headers_lists_pids() -> None:
    assert VECTORS is not None
    res = run("elfcorehdr", "show", str(VECTORS / "6.12.43/base/vmcore-headers.bin"), "--json")
    data = json.loads(res.output)
    assert data["kind"] == "vmcore"
    assert [c["pid"] for c in data["cpu_notes"]] == [0, 0, 1592]
    assert data["vmcoreinfo"]["OSRELEASE"] == "6.12.43+deb12-amd64"


def test_diff_names_added_dimm() -> None:
    assert VECTORS is not None
    d = VECTORS / "6.12.43/base"
    res = run("elfcorehdr", "diff", str(d / "S0/elfcorehdr.bin"), str(d / "S1/elfcorehdr.bin"))
    assert res.exit_code == 1, "headers that differ exit 1, as diff(1) does"
    assert "+ memory 0x100000000-0x13fffffff (1 GiB)" in res.output
    res = run("elfcorehdr", "diff", str(d / "S1/elfcorehdr.bin"), str(d / "S5/elfcorehdr.bin"))
    assert "~ memory 0x100000000: 1 GiB -> 2 GiB" in res.output


def test_status_on_6_1_and_6_12() -> None:
    assert VECTORS is not None
    old = json.loads(run("status", "--root", str(VECTORS / "6.1/base/S0/root"), "--json").output)
    assert old["cpu_crash_hotplug"] == "absent" and old["crash_loaded"] is True
    new = json.loads(run("status", "--root", str(VECTORS / "6.12.43/base/S0/root"), "--json").output)
    assert new["cpu_crash_hotplug"] == 1 and new["segment_memsz"] == 921600
    assert new["sysfs_elfcorehdr_size"] == 917616


def test_status_finds_reloading_udev_rule(snap: Path) -> None:
    rules = snap / "usr/lib/udev/rules.d"
    rules.mkdir(parents=True)
    shutil.copy(example_root() / "usr/lib/udev/rules.d/98-kexec.rules", rules)
    st = json.loads(run("status", "--root", str(snap), "--json").output)
    assert not any(v["reloads"] for v in st["udev"]), "crash_hotplug=1: the rule skips the reload"
    (snap / "sys/devices/system/memory/crash_hotplug").write_text("0\n")
    st = json.loads(run("status", "--root", str(snap), "--json").output)
    mem = {v["action"]: v["reloads"] for v in st["udev"] if v["subsystem"] == "memory"}
    assert mem == {"add": False, "online": True, "offline": True, "remove": False}


def test_demo_runs() -> None:
    res = run("demo")
    assert res.exit_code == 0
    assert "room for 16443 more program headers" in res.output


# --- bad input: one test per class ---------------------------------------------------------


def test_truncated_header(tmp_path: Path) -> None:
    assert VECTORS is not None
    f = tmp_path / "t.bin"
    f.write_bytes((VECTORS / "6.12.43/base/S0/elfcorehdr.bin").read_bytes()[:40])
    assert_clean_error(run("elfcorehdr", "show", str(f)), str(f), "ELF header needs 64 bytes")


def test_phnum_past_end(tmp_path: Path) -> None:
    assert VECTORS is not None
    data = bytearray((VECTORS / "6.12.43/base/S0/elfcorehdr.bin").read_bytes()[:736])
    struct.pack_into("<H", data, 56, 200)
    f = tmp_path / "p.bin"
    f.write_bytes(bytes(data))
    assert_clean_error(run("elfcorehdr", "show", str(f)), "e_phnum 200", "past the end")


def test_note_sizes_overflow(tmp_path: Path) -> None:
    assert VECTORS is not None
    data = bytearray((VECTORS / "6.12.43/base/vmcore-headers.bin").read_bytes())
    note_off = struct.unpack_from("<Q", data, 64 + 8)[0]
    struct.pack_into("<I", data, note_off + 4, 0xFFFFFF00)  # n_descsz of the first note
    f = tmp_path / "n.bin"
    f.write_bytes(bytes(data))
    assert_clean_error(run("elfcorehdr", "show", str(f)), "overflows its region")


def test_iomem_garbage(snap: Path, tmp_path: Path) -> None:
    (snap / "proc/iomem").write_text("00000000-00000fff : Reserved\nthis is not iomem\n")
    assert_clean_error(run("elfcorehdr", "build", "--root", str(snap), "-o", str(tmp_path / "x")),
                       "proc/iomem", "line 2")


def test_missing_sysfs_file(snap: Path, tmp_path: Path) -> None:
    (snap / "sys/kernel/vmcoreinfo").unlink()
    assert_clean_error(run("elfcorehdr", "build", "--root", str(snap), "-o", str(tmp_path / "x")),
                       "sys/kernel/vmcoreinfo", "missing")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_unreadable_sysfs_file(snap: Path) -> None:
    """crash_notes is mode 0400 root: a non-root reader is told which file and why."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="crash-hotplug-"))
    try:
        work.chmod(0o777)
        root = work / "root"
        shutil.copytree(snap, root)
        notes = root / "sys/devices/system/cpu/cpu0/crash_notes"
        notes.chmod(0o400)
        cmd = [sys.executable, "-m", "crash_hotplug", "elfcorehdr", "build", "--root", str(root), "-o",
               str(work / "x")]
        _run_as_nobody(cmd, "cpu0/crash_notes")
    finally:
        shutil.rmtree(work)


def _run_as_nobody(cmd: list[str], needle: str) -> None:
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not installed")
    probe = subprocess.run([*drop, sys.executable, "-c", "import crash_hotplug"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("this checkout's virtualenv is not readable by user nobody")
    res = subprocess.run([*drop, *cmd],
                         capture_output=True, text=True, env={**os.environ, "HOME": "/tmp"}, check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert needle in res.stderr and "permission denied" in res.stderr


def test_non_root_snapshot(snap: Path, tmp_path: Path) -> None:
    """What a snapshot taken as non-root looks like: iomem and kallsyms read as zeros."""
    text = (snap / "proc/iomem").read_text()
    import re

    (snap / "proc/iomem").write_text(re.sub(r"[0-9a-f]+-[0-9a-f]+", "00000000-00000000", text))
    assert_clean_error(run("elfcorehdr", "build", "--root", str(snap), "-o", str(tmp_path / "x")),
                       "proc/iomem", "without root privileges")


def test_not_a_directory(tmp_path: Path) -> None:
    res = run("status", "--root", str(tmp_path / "nope"))
    assert res.exit_code == 2


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["audit", "/"], "'VMCORE...'"),
        (["simulate", "resize", "--panics", "-1"], "'--panics'"),
        (["simulate", "resize", "--from", "１G"], "--from"),
        (["elfcorehdr", "show"], "'FILE'"),
    ],
)
def test_usage_errors_are_one_line_naming_the_parameter(args: list[str], names: str) -> None:
    """The console entry point: click's three-line usage errors become one line, exit 2."""
    r = subprocess.run([sys.executable, "-m", "crash_hotplug", *args], capture_output=True, text=True,
                       timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("crash-hotplug: error: ") and names in lines[0]
    assert r.stdout == ""
