"""The pseries lab's parts that need no VM: kernel keys, ``kexec -d`` parsing, the iomem rule,
the plan checks, and ``lab check`` of the ppc64 vectors (read in place) as a pseries run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crash_hotplug.elf.core import ElfCore
from crash_hotplug.lab.check import check_run
from crash_hotplug.lab.debian_ppc64 import is_ppc64_key
from crash_hotplug.lab.errors import QemuError, ScenarioError
from crash_hotplug.lab.plan import Plan
from crash_hotplug.lab.scenario_ppc64 import Ppc64Runner, kexec_debug_segments, ppc64_ram_check
from tests.conftest import VECTORS_PPC64, needs_ppc64_vectors

RUN = VECTORS_PPC64 / "6.12" / "base" if VECTORS_PPC64 is not None else None


def test_ppc64_kernel_keys() -> None:
    assert is_ppc64_key("ppc64le-6.12") and is_ppc64_key("ppc64le-6.12.117") and is_ppc64_key("ppc64le-7.2")
    assert is_ppc64_key("6.12.117+deb13-powerpc64le") and is_ppc64_key("6.12.115+deb13.1-powerpc64le")
    assert not is_ppc64_key("6.12") and not is_ppc64_key("7.3.4+deb13-amd64") and not is_ppc64_key(None)


@needs_ppc64_vectors
def test_kexec_debug_output_gives_the_segments() -> None:
    assert RUN is not None
    scen = json.loads((RUN / "scenario.json").read_text())
    got = kexec_debug_segments(scen["kexec_load_output"])
    want = json.loads((RUN / "S0/step.json").read_text())["kexec_segments"]
    assert [(s["mem"], s["memsz"], s["bufsz"]) for s in got["kexec_segments"]] == [
        (s["mem"], s["memsz"], s["bufsz"]) for s in want]
    assert got["kexec_flags"] == "0x150009" and got["dt_offset"] == 0x3FFF9000
    assert got["kdump_fdt_extra_size"] == 4146 and got["backup_start"] == 0x2289F000


@needs_ppc64_vectors
@pytest.mark.parametrize("step", ["S0", "S1", "S2", "S3", "S4"])
def test_iomem_rule_agrees_with_the_vectors(step: str) -> None:
    assert RUN is not None
    loads = ElfCore.parse((RUN / step / "elfcorehdr.bin").read_bytes()).load_phdrs
    got = ppc64_ram_check(RUN / step / "root", loads)
    meta = json.loads((RUN / step / "step.json").read_text())
    assert got["header_matches_iomem_system_ram"] is meta["header_matches_iomem_system_ram"] is True
    assert got["crashkernel_region"] == meta["crashkernel_region"]
    assert got["rtas_range"] == meta["rtas_range"]


@needs_ppc64_vectors
def test_lab_check_of_the_ppc64_vectors() -> None:
    """The vectors have the lab's layout and say ``arch: ppc64le``: every header equals the model; the
    FDTs that need the whole /proc/device-tree are shown as not modelled (the capture kept part of it)."""
    assert RUN is not None
    report = check_run(RUN)
    assert report.ok
    assert [r.difference for r in report.steps] == [None] * 5
    assert [r.source for r in report.steps] == ["S0", "S1", "S1", "S3", "S4"]
    assert [ok for _n, ok, _d in report.fdt] == [None, True, None, True, True]
    against = check_run(RUN, against=RUN)
    assert [r.vs_reference for r in against.steps] == ["same bytes"] * 5


def test_plans_the_pseries_lab_cannot_run_are_refused() -> None:
    with pytest.raises(ScenarioError, match="storm"):
        Ppc64Runner(Plan("x", None, {}, ({"op": "load"}, {"op": "storm"})), "ppc64le-6.12", Path("/nonexistent"))
    with pytest.raises(ScenarioError, match="kexec_file_load"):
        Ppc64Runner(Plan("x", None, {}, ({"op": "load", "syscall": "kexec_file_load"},)), "ppc64le-6.12",
                    Path("/nonexistent"))
    with pytest.raises(QemuError, match="do not apply to the pseries guest"):
        Ppc64Runner(Plan("x", None, {"extra_args": []}, ({"op": "load"},)), "ppc64le-6.12",
                    Path("/nonexistent"))
    runner = Ppc64Runner(Plan("x", None, {}, ({"op": "load"}, {"op": "panic", "dump": "-l"})), "ppc64le-6.12",
                         Path("/nonexistent"))
    assert runner.plan.steps[0] == {"op": "load", "syscall": "kexec_load", "hotplug": True}
    assert "dump" not in runner.plan.steps[1] and runner.dumps_not_taken == ["-l"]


def test_vmlinux_in_either_packaging_layout(tmp_path: Path) -> None:
    """6.x: /boot/vmlinux-<rel> + /boot/config-<rel>; 7.x split: /usr/lib/modules/<rel>/vmlinuz (an
    ELF vmlinux on ppc64el) + config."""
    from crash_hotplug.lab.debian_ppc64 import _find_vmlinux

    old = tmp_path / "old"
    (old / "boot").mkdir(parents=True)
    (old / "boot/vmlinux-6.12.113+deb13-powerpc64le").write_bytes(b"\x7fELF")
    (old / "boot/config-6.12.113+deb13-powerpc64le").write_text("CONFIG_KEXEC=y\n")
    image, config, release = _find_vmlinux(old)
    assert release == "6.12.113+deb13-powerpc64le" and image is not None and config is not None
    new = tmp_path / "new" / "usr/lib/modules/7.2.13+deb14-powerpc64le"
    new.mkdir(parents=True)
    (new / "vmlinuz").write_bytes(b"\x7fELF")
    (new / "config").write_text("CONFIG_KEXEC=y\n")
    assert _find_vmlinux(tmp_path / "new") == (new / "vmlinuz", new / "config", "7.2.13+deb14-powerpc64le")
    assert _find_vmlinux(tmp_path / "empty") == (None, None, None)
