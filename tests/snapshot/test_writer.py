"""Writing a snapshot from a root keeps every byte the header depends on."""

from __future__ import annotations

from pathlib import Path

from crash_hotplug.crash.x86_64 import elfcorehdr_from_root
from crash_hotplug.snapshot.writer import write_snapshot
from tests.conftest import needs_vectors, vector_steps


@needs_vectors
def test_snapshot_of_a_snapshot_builds_the_same_header(tmp_path: Path) -> None:
    for step in vector_steps()[:6]:
        out = tmp_path / step.id.replace("/", "_")
        rep = write_snapshot(step.root, out)
        assert rep.files_written > 50
        assert not rep.unreadable_files
        assert elfcorehdr_from_root(out) == elfcorehdr_from_root(step.root)
        kcore = (out / "proc/kcore").read_bytes()
        assert kcore == (step.root / "proc/kcore").read_bytes()[: len(kcore)]


@needs_vectors
def test_snapshot_reports_what_it_cannot_see(tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "src"
    shutil.copytree(vector_steps()[0].root, src)
    (src / "proc/kcore").unlink()
    text = (src / "proc/iomem").read_text()
    import re

    (src / "proc/iomem").write_text(re.sub(r"[0-9a-f]+-[0-9a-f]+", "00000000-00000000", text))
    rep = write_snapshot(src, tmp_path / "out")
    joined = "\n".join(rep.cannot_see)
    assert "/proc/iomem: every address reads as zero" in joined
    assert "/proc/kcore: missing" in joined


@needs_vectors
def test_a_root_without_crash_notes_keeps_its_cpu_folders(tmp_path: Path) -> None:
    """A kernel without CONFIG_CRASH_DUMP/CONFIG_KEXEC_CORE: the CPU folders stay, and every file the
    builder needs is in the "could not see" list with why; the command exits 1."""
    import json
    import shutil

    from click.testing import CliRunner

    from crash_hotplug.cli import cli

    src = tmp_path / "src"
    shutil.copytree(vector_steps()[0].root, src)
    for p in src.glob("sys/devices/system/cpu/cpu*/crash_notes*"):
        p.unlink()
    for name in ("kexec_crash_loaded", "kexec_crash_size", "crash_elfcorehdr_size"):
        (src / "sys/kernel" / name).unlink(missing_ok=True)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["snapshot", "--root", str(src), "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 1, res.output
    assert (out / "sys/devices/system/cpu/cpu0").is_dir()
    assert (out / "sys/devices/system/cpu/cpu1/online").exists()
    manifest = json.loads((out / "crash-hotplug-snapshot.json").read_text())
    absent = manifest["absent"]
    assert "sys/devices/system/cpu/cpu0/crash_notes" in absent and "CONFIG_CRASH_DUMP" in absent[
        "sys/devices/system/cpu/cpu0/crash_notes"]
    assert "CONFIG_KEXEC_CORE" in absent["sys/kernel/kexec_crash_loaded"]
    assert "sys/kernel/crash_elfcorehdr_size" in absent
    assert "/sys/devices/system/cpu/cpu0/crash_notes" in res.output
    complete = tmp_path / "complete"
    from tests.conftest import VECTORS

    assert VECTORS is not None
    res = CliRunner().invoke(cli, ["snapshot", "--root", str(VECTORS / "6.12.43/base/S0/root"), "-o",
                                   str(complete)], catch_exceptions=False)
    assert res.exit_code == 0, res.output


def test_snapshot_of_this_host_round_trips(tmp_path: Path) -> None:
    """On the test machine itself: every file the snapshot copied holds the bytes the host shows, and
    build gives the same answer (bytes, or one-line error) on the host and on its snapshot."""
    import os

    import pytest
    from click.testing import CliRunner

    from crash_hotplug.cli import cli

    if os.geteuid() != 0:
        pytest.skip("a host snapshot as non-root cannot see crash_notes, iomem addresses or kcore")
    out = tmp_path / "snap"
    rep = write_snapshot(Path("/"), out)
    copied = [p for p in out.rglob("*") if p.is_file()]
    assert rep.files_written > 10
    for p in copied:
        rel = p.relative_to(out)
        if str(rel) in ("proc/kallsyms", "proc/kcore", "var/log/dmesg", "crash-hotplug-snapshot.json"):
            continue  # filtered (kallsyms lines, kcore headers) or taken from dmesg(1)
        try:
            live = (Path("/") / rel).read_bytes()
        except OSError:
            continue
        if str(rel).startswith(("sys/devices/system/cpu/cpu", "sys/devices/system/memory")) and live != p.read_bytes():
            continue  # CPU and memory state files can change between two reads on a live host
        assert live == p.read_bytes() or str(rel).endswith(("/online", "/state")), rel
    a = CliRunner().invoke(cli, ["elfcorehdr", "build", "--root", "/", "-o", str(tmp_path / "a")])
    b = CliRunner().invoke(cli, ["elfcorehdr", "build", "--root", str(out), "-o", str(tmp_path / "b")])
    assert a.exit_code == b.exit_code, (a.output, b.output)
    if a.exit_code == 0:
        assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    else:
        assert a.exit_code == 2
