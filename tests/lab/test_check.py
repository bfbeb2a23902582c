"""``lab check`` on the real-kernel vectors read as run directories, and on tampered copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from crash_hotplug.cli.lab import lab
from crash_hotplug.lab.check import check_run, rebuild_sources
from crash_hotplug.lab.errors import RunDirError
from crash_hotplug.lab.rundir import RunDir


def test_rebuild_sources_follow_the_kernel(vectors: Path) -> None:
    want = {
        "6.1": ["S0"] * 6,  # no crash hotplug: the load-time header stays
        "6.12.43": ["S0", "S1", "S1", "S1", "S1", "S5"],
        "6.12": ["S0", "S1", "S1", "S1", "S1", "S5"],
    }
    for kernel, sources in want.items():
        steps = RunDir(vectors / kernel / "base").steps()
        got = rebuild_sources(steps)
        assert [got[s.name].name for s in steps] == sources
        # the real kernel's header at each step is the one it built at its source step
        for s in steps:
            assert s.elfcorehdr == got[s.name].elfcorehdr


def test_check_vectors_all_same(vector_run: Path) -> None:
    report = check_run(vector_run)
    assert report.ok, [r.difference for r in report.steps]
    assert len(report.steps) == 6


def test_check_finds_6_1_misses_hot_added_memory(vectors: Path) -> None:
    report = check_run(vectors / "6.1" / "base")
    details = " ".join(d for _n, _ok, d in report.vmcore)
    assert "0x100000000-0x17fffffff" in details


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("dmesg", "kcore"))
    for st in src.glob("S*/root"):
        for name in ("var/log/dmesg", "proc/kcore"):
            target = dst / st.relative_to(src) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(st / name, target)
    return dst


def test_check_flags_a_changed_byte(vectors: Path, tmp_path: Path) -> None:
    run = _copy(vectors / "6.12.43" / "base", tmp_path / "run")
    hdr = run / "S2" / "elfcorehdr.bin"
    data = bytearray(hdr.read_bytes())
    data[64 + 56 + 8] ^= 1  # p_offset of the second program header
    hdr.write_bytes(bytes(data))
    report = check_run(run)
    assert not report.ok
    bad = [r for r in report.steps if not r.ok]
    assert [r.step for r in bad] == ["S2"]
    assert "p_offset" in (bad[0].difference or "")
    result = CliRunner().invoke(lab, ["check", str(run)])
    assert result.exit_code == 1


def test_check_cli_ok_and_bad_input(vectors: Path, tmp_path: Path) -> None:
    ok = CliRunner().invoke(lab, ["check", str(vectors / "6.12" / "base")])
    assert ok.exit_code == 0, ok.output
    assert "same bytes" in ok.output
    bad = CliRunner().invoke(lab, ["check", str(tmp_path)])
    assert bad.exit_code == 2
    assert "no scenario.json" in bad.output
    assert "Traceback" not in bad.output
    with pytest.raises(RunDirError):
        check_run(tmp_path)


def test_against_a_reference_run_is_information_only(vectors: Path) -> None:
    run = vectors / "6.12.43" / "base"
    same = check_run(run, against=run)
    assert [r.vs_reference for r in same.steps] == ["same bytes"] * 6
    other = check_run(run, against=vectors / "6.12" / "base")
    assert other.ok  # the model check is unaffected
    assert all(r.vs_reference and r.vs_reference != "same bytes" for r in other.steps)
