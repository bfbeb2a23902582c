"""Machine quirks chosen from what a kernel says, and the matrix table on the vectors (no VM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crash_hotplug.cli.lab import _variadic
from crash_hotplug.lab.check import check_run
from crash_hotplug.lab.matrix import MatrixRun, matrix_rows
from crash_hotplug.lab.qemu import MachineConfig, qemu_argv
from crash_hotplug.lab.quirks import HYPERVISOR_DETECT, QuirkVerdicts, hotplug_cpus, needs_quirk

REFUSES = "[    0.000000] CPU topo: Allowing 2 present CPUs plus 0 hotplug CPUs\n"
ALLOWS = (
    "[    0.000000] smpboot: Allowing 8 CPUs, 6 hotplug CPUs\n"
    "[    0.0] CPU topo: Allowing 2 present CPUs plus 6 hotplug CPUs\n"
)


def test_quirk_only_where_the_kernel_refuses_hot_add() -> None:
    asked = needs_quirk(REFUSES, maxcpus=8, cpus=2, accel="tcg")
    assert asked is not None and asked[0] is HYPERVISOR_DETECT and "plus 0 hotplug CPUs" in asked[1]
    assert needs_quirk(ALLOWS, maxcpus=8, cpus=2, accel="tcg") is None
    assert needs_quirk(REFUSES, maxcpus=2, cpus=2, accel="tcg") is None  # no free slot: nothing to fix
    assert needs_quirk(REFUSES, maxcpus=8, cpus=2, accel="kvm") is None  # KVM is a detected hypervisor
    lapic = "[   41.2] ACPI: Unable to map lapic to logical cpu number\n"
    assert needs_quirk(lapic, maxcpus=8, cpus=2, accel="tcg") is not None
    assert hotplug_cpus(ALLOWS) == (2, 6, "[    0.0] CPU topo: Allowing 2 present CPUs plus 6 hotplug CPUs")
    old = "[    0.01] smpboot: Allowing 2 CPUs, 0 hotplug CPUs\n"  # before 6.9
    assert hotplug_cpus(old) == (2, 0, old.strip())
    assert needs_quirk(old, maxcpus=8, cpus=2, accel="tcg") is not None
    assert needs_quirk("[    0.01] smpboot: Allowing 8 CPUs, 6 hotplug CPUs\n", 8, 2, "tcg") is None


def test_quirk_on_the_command_line() -> None:
    plain = qemu_argv(MachineConfig(), "tcg", "k", "i", "s", "q")
    argv = qemu_argv(MachineConfig(), "tcg", "k", "i", "s", "q", [HYPERVISOR_DETECT])
    assert plain[plain.index("-cpu") + 1] == "max,la57=off"
    assert argv[argv.index("-cpu") + 1] == "max,la57=off,hypervisor=off"
    assert argv[argv.index("-machine") + 1] == "pc,vmport=on"
    assert argv[-2:] == ["-smbios", "type=1,serial=VMware-lab-tcg"]
    assert HYPERVISOR_DETECT.to_json("ev")["reason"].startswith("the kernel allows no hotplug CPUs")


def test_quirk_verdicts_are_per_release_and_accel(tmp_path: Path) -> None:
    v = QuirkVerdicts(tmp_path / "q.json")
    assert v.get("7.3.4+deb13-amd64", "tcg") == []
    v.put("7.3.4+deb13-amd64", "tcg", [(HYPERVISOR_DETECT, "plus 0 hotplug CPUs")])
    assert v.get("7.3.4+deb13-amd64", "tcg") == [(HYPERVISOR_DETECT, "plus 0 hotplug CPUs")]
    assert v.get("7.3.4+deb13-amd64", "kvm") == [] and v.get("6.18.15+deb13-amd64", "tcg") == []
    (tmp_path / "q.json").write_text("{not json")
    assert v.get("7.3.4+deb13-amd64", "tcg") == []


def test_matrix_rows_on_the_vectors(vectors: Path) -> None:
    run = vectors / "6.12.43" / "base"
    rows = matrix_rows(MatrixRun("6.12.43", "base", run, check_run(run), None))
    assert [r.step for r in rows] == ["S0", "S1", "S2", "S3", "S4", "S5", "capture"]
    assert all(r.result == "same bytes" for r in rows[:-1])
    assert all(r.real_bytes == r.model_bytes and r.real_bytes for r in rows[:-1])
    s3, s4 = rows[3], rows[4]
    assert s3.offline_kept == "cpu1 note kept"  # the header keeps the offline CPU's note
    assert s4.stale_after_remove == "stale"  # 6.12.43 leaves the removed DIMM in the header
    assert rows[0].stale_after_remove == "-"
    assert rows[-1].result == "PT_LOADs = last header"
    failed = matrix_rows(MatrixRun("9.9", "base", run, None, "kernel 9.9: no such release"))
    assert failed[0].result == "kernel 9.9: no such release"


def test_matrix_arguments() -> None:
    got = _variadic(("--kernels", "6.1", "6.12.43", "7.3.4", "--scenarios", "base,short", "--out=/x"))
    assert got == {"--kernels": ["6.1", "6.12.43", "7.3.4"], "--scenarios": ["base", "short"], "--out": ["/x"]}
    import click

    with pytest.raises(click.UsageError):
        _variadic(("6.1",))
    with pytest.raises(click.UsageError):
        _variadic(("--kernels", "6.1", "--bogus"))


@pytest.mark.parametrize(("kernel", "quirk"), [("6.1", False), ("6.12.43", False), ("6.12", True)])
def test_quirk_from_the_vectors_boot_logs(vectors: Path, kernel: str, quirk: bool) -> None:
    """The vectors' own dmesg: 6.12.117 (the ``6.12`` vector) allowed 0 hotplug CPUs under TCG."""
    dmesg = (vectors / kernel / "base" / "S0" / "root" / "var/log/dmesg").read_text()
    assert (needs_quirk(dmesg, maxcpus=8, cpus=2, accel="tcg") is not None) is quirk
