"""The command line on the ppc64le vectors: build, show, diff (headers and FDTs), scenario, audit."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from crash_hotplug.cli import cli
from tests.conftest import VECTORS_PPC64, needs_ppc64_vectors

pytestmark = needs_ppc64_vectors
V = VECTORS_PPC64 / "6.12" / "base" if VECTORS_PPC64 is not None else Path("/nonexistent")
BACKUP = "0x2289f000"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_build_takes_the_arch_from_the_snapshot(tmp_path: Path) -> None:
    out = tmp_path / "h.bin"
    res = run("elfcorehdr", "build", "--root", str(V / "S4/root"), "-o", str(out), "--backup-start", BACKUP)
    assert res.exit_code == 0, res.output
    assert "ppc64le" in res.output and "crash_elfcorehdr_size 459320" in res.output
    assert out.read_bytes() == (V / "S4/elfcorehdr.bin").read_bytes()


def test_build_kexec_tools_header(tmp_path: Path) -> None:
    out = tmp_path / "h.bin"
    res = run("elfcorehdr", "build", "--arch", "ppc64le", "--kexec-tools", "--backup-start", BACKUP,
              "--root", str(V / "S0/root"), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == (V / "S0/elfcorehdr.bin").read_bytes()[:1024]
    res = run("elfcorehdr", "build", "--kexec-tools", "--root", str(V / "S0/root"), "-o", str(out))
    assert res.exit_code == 2 and "--backup-start" in res.output


def test_x86_build_of_a_ppc64_root_is_a_clean_error(tmp_path: Path) -> None:
    res = run("elfcorehdr", "build", "--arch", "x86_64", "--root", str(V / "S0/root"), "-o", str(tmp_path / "x"))
    assert res.exit_code == 2 and "crash_elfcorehdr_size" in res.stderr and "Traceback" not in res.output


def test_show_header_and_fdt() -> None:
    res = run("elfcorehdr", "show", str(V / "S1/elfcorehdr.bin"), "--root", str(V / "S1/root"), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["e_phnum"] == 13 and data["reserved_size"] == 0x71000
    res = run("elfcorehdr", "show", str(V / "S2/crash-fdt.dtb"), "--json")
    assert res.exit_code == 0, res.output
    fdt = json.loads(res.output)
    assert [c["path"] for c in fdt["cpus"]] == [f"/cpus/PowerPC,POWER9@{n}" for n in (1, 0, 2, 3)]
    assert fdt["totalsize"] == 28050 and fdt["free"] > 0
    res = run("elfcorehdr", "show", str(V / "vmcore-headers.bin"), "--json")
    assert res.exit_code == 0, res.output
    assert [c["pid"] for c in json.loads(res.output)["cpu_notes"]] == [0, 0, 0, 1243]


def test_diff_headers_and_fdts() -> None:
    res = run("elfcorehdr", "diff", str(V / "S1/elfcorehdr.bin"), str(V / "S3/elfcorehdr.bin"))
    assert res.exit_code == 1 and "1 GiB (now ends 0x7fffffff)" in res.output
    res = run("elfcorehdr", "diff", str(V / "S1/crash-fdt.dtb"), str(V / "S2/crash-fdt.dtb"))
    assert res.exit_code == 1
    assert "+ node /cpus/PowerPC,POWER9@3" in res.output and "~ child order of /cpus" in res.output
    res = run("elfcorehdr", "diff", str(V / "S2/crash-fdt.dtb"), str(V / "S4/crash-fdt.dtb"))
    assert res.exit_code == 0
    res = run("elfcorehdr", "diff", str(V / "S2/crash-fdt.dtb"), str(V / "S2/elfcorehdr.bin"))
    assert res.exit_code == 2 and "not a device tree blob" in res.stderr


def test_scenario_run_ppc64(tmp_path: Path) -> None:
    res = run("scenario", "run", "--arch", "ppc64le", "--root", str(V / "S0/root"), "--fdt",
              str(V / "S0/crash-fdt.dtb"), "-o", str(tmp_path / "o"), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["capture_boot_cpu_node"] == "/cpus/PowerPC,POWER9@3"
    for n in range(5):
        assert (tmp_path / f"o/S{n}/elfcorehdr.bin").read_bytes() == (V / f"S{n}/elfcorehdr.bin").read_bytes()
    assert (tmp_path / "o/S2/crash-fdt.dtb").read_bytes() != (V / "S1/crash-fdt.dtb").read_bytes()
    res = run("scenario", "run", "--arch", "ppc64le", "--no-hotplug", "--root", str(V / "S0/root"), "--fdt",
              str(V / "S0/crash-fdt.dtb"), "-o", str(tmp_path / "p"))
    assert res.exit_code == 1 and "dump lost" in res.output
    res = run("scenario", "run", "--arch", "ppc64le", "--root", str(V / "S0/root"), "-o", str(tmp_path / "q"))
    assert res.exit_code == 2 and "--fdt" in res.output


def test_audit_ppc64_vmcore_headers() -> None:
    res = run("audit", str(V / "vmcore-headers.bin"), "--root", str(V / "S4/root"), "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert not rep["findings"]
    res = run("audit", str(V / "vmcore-headers.bin"), "--root", str(V / "S3/root"))
    assert res.exit_code == 1 and "0x80000000-0xffffffff" in res.output
