"""A real sosreport, collected here by Debian's ``sos`` with the plugins kdump engineers ask for,
extracted, and read as a root: the release from ``uname -a``, every fact sos did not collect said
as unknown, exit codes as documented (status 0/1, build 2 with one line naming the file)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from crash_hotplug.cli import cli
from crash_hotplug.snapshot.sos import SOS_UNAME, is_sosreport

PLUGINS = "kernel,kdump,udev,memory,processor"


@pytest.fixture(scope="module")
def sosreport(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sos = shutil.which("sos")
    if sos is None:
        pytest.skip("sos is not installed (bash tasks test installs Debian's sosreport)")
    if os.geteuid() != 0:
        pytest.skip("sos report runs as root only")
    tmp = tmp_path_factory.mktemp("sos")
    res = subprocess.run([sos, "report", "--batch", "--quiet", "--tmp-dir", str(tmp), "-o", PLUGINS,
                          "--compression-type", "gzip"], capture_output=True, text=True, timeout=600, check=False)
    archives = sorted(tmp.glob("sosreport-*.tar.gz"))
    assert res.returncode == 0 and archives, res.stdout + res.stderr
    (tmp / "x").mkdir()
    subprocess.run(["tar", "-xzf", str(archives[0]), "-C", str(tmp / "x")], check=True, timeout=120)
    (top,) = (tmp / "x").iterdir()
    return top


def test_real_sosreport_is_a_root(sosreport: Path) -> None:
    assert is_sosreport(sosreport)
    release = (sosreport / SOS_UNAME).read_text().split()[2]
    res = CliRunner().invoke(cli, ["status", "--root", str(sosreport), "--json"], catch_exceptions=False)
    st = json.loads(res.output)
    assert st["root_kind"] == "sosreport" and st["kernel_release"] == release == os.uname().release
    collected = {rel: (sosreport / rel).exists() for rel in (
        "sys/kernel/kexec_crash_loaded", "sys/devices/system/cpu/crash_hotplug",
        "sys/devices/system/memory/crash_hotplug")}
    if not collected["sys/kernel/kexec_crash_loaded"]:
        assert st["crash_loaded"] is None
        assert any("kexec_crash_loaded was not collected by this sosreport" in u for u in st["unknown"])
    if not collected["sys/devices/system/memory/crash_hotplug"]:
        assert st["memory_crash_hotplug"] is None, "not collected is unknown, never 'absent'"
    if not collected["sys/devices/system/cpu/crash_hotplug"]:
        assert st["cpu_crash_hotplug"] is None
    assert all(v["reloads"] is not None for v in st["udev"]), "the collected rules give a verdict per event"
    assert res.exit_code == st["exit_status"] == (0 if st["verdict"] == "safe" else 1)
    text = CliRunner().invoke(cli, ["status", "--root", str(sosreport)], catch_exceptions=False).output
    assert f"kernel {release} (sosreport" in text


def test_build_on_a_sosreport_names_what_is_missing(sosreport: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["elfcorehdr", "build", "--root", str(sosreport), "-o", str(tmp_path / "h")],
                             catch_exceptions=False)
    if res.exit_code == 0:
        return  # this sos collected everything the builder needs
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(sosreport) in lines[0], res.stderr
