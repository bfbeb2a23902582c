"""A sosreport-shaped tree made from a vector step: files moved where sos keeps them. ``build``
gives the vector's bytes; ``status`` says unknown for what sos did not collect, never "no"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from crash_hotplug.cli import cli
from crash_hotplug.snapshot.sos import SOS_DMESG, SOS_UNAME, is_sosreport, open_root
from tests.conftest import VECTORS, needs_vectors

pytestmark = needs_vectors


def sos_tree(tmp_path: Path, step: str = "6.12.43/base/S3") -> Path:
    assert VECTORS is not None
    root = tmp_path / "sosreport-host-2026-12-02-abcdef"
    shutil.copytree(VECTORS / step / "root", root)
    release = (root / "proc/sys/kernel/osrelease").read_text().strip()
    (root / "proc/sys/kernel/osrelease").unlink()
    (root / SOS_UNAME).parent.mkdir(parents=True)
    (root / SOS_UNAME).write_text(f"Linux host {release} #1 SMP PREEMPT_DYNAMIC Debian x86_64 GNU/Linux\n")
    shutil.move(root / "var/log/dmesg", root / SOS_DMESG)
    (root / "sos_reports").mkdir()
    (root / "sos_reports/manifest.json").write_text("{}\n")
    return root


def test_build_equals_the_vector(tmp_path: Path) -> None:
    assert VECTORS is not None
    root = sos_tree(tmp_path)
    assert is_sosreport(root) and open_root(root).kind == "sosreport"
    out = tmp_path / "h.bin"
    res = CliRunner().invoke(cli, ["elfcorehdr", "build", "--root", str(root), "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    want = (VECTORS / "6.12.43/base/S3/elfcorehdr.bin").read_bytes()
    assert out.read_bytes() == want


def test_status_says_unknown_for_what_sos_did_not_collect(tmp_path: Path) -> None:
    root = sos_tree(tmp_path)
    for rel in ("sys/kernel/kexec_crash_loaded", "sys/devices/system/memory/crash_hotplug",
                "sys/devices/system/cpu/crash_hotplug", "sys/kernel/crash_elfcorehdr_size"):
        (root / rel).unlink()
    res = CliRunner().invoke(cli, ["status", "--root", str(root), "--json"], catch_exceptions=False)
    st = json.loads(res.output)
    assert st["root_kind"] == "sosreport" and st["kernel_release"] == "6.12.43+deb12-amd64"
    assert st["crash_loaded"] is None and st["memory_crash_hotplug"] is None
    assert st["kernel_has_crash_hotplug"] is None, "absent from a sosreport is unknown, not 'no'"
    assert any("kexec_crash_loaded was not collected" in u for u in st["unknown"])
    assert any("udev" in u for u in st["unknown"]), "no rule directory collected: udev's part is unknown"
    assert not any(r["code"].startswith("stale") for r in st["risks"])
    assert res.exit_code == 1 and st["verdict"] == "unknown"
    text = CliRunner().invoke(cli, ["status", "--root", str(root)], catch_exceptions=False).output
    assert "kernel 6.12.43+deb12-amd64 (sosreport" in text and "CONFIG_CRASH_HOTPLUG" not in text
