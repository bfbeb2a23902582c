"""The vmcore audit against the real vectors (headers and notes as the capture kernels showed them)
and against whole vmcores of a small model machine."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from crash_hotplug.audit import audit, read_machine_at_panic
from crash_hotplug.cli.audit import audit as audit_command
from crash_hotplug.crash.vmcore import parse_crash_elf64_headers, write_vmcore
from crash_hotplug.machine.cpumask import cpulist_parse
from crash_hotplug.machine.physmem import MODEL_STATE_FILE, PAGE_SIZE
from tests.conftest import VECTORS, needs_vectors
from tests.vmcore_cases import SmallMachine, small_machine, vector_panic


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(audit_command, [str(a) for a in args])


def run_json(*args: str | Path) -> tuple[int, dict[str, Any]]:
    res = run(*args, "--json")
    assert res.exit_code in (0, 1), res.output + res.stderr
    data: dict[str, Any] = json.loads(res.stdout)
    return res.exit_code, data


def scen(kernel: str) -> Path:
    assert VECTORS is not None
    return VECTORS / kernel / "base"


def cpus_with(data: dict[str, Any], status: str) -> list[int]:
    return [c["cpu"] for c in data["cpus"] if c["status"] == status]


# ---------------------------------------------------------------------------------------------
# Real vectors


@needs_vectors
def test_6_1_misses_hot_added_cpus_and_dimm2() -> None:
    s = scen("6.1")
    code, data = run_json(s / "vmcore-headers.bin", "--root", s / "S5/root")
    assert code == 1 and not data["complete"]
    assert cpus_with(data, "missing") == [2, 3]
    assert cpus_with(data, "saved") == [0]
    assert cpus_with(data, "offline") == [1]
    assert data["memory"]["missing"] == [{"start": "0x100000000", "end": "0x17fffffff"}]
    assert data["memory"]["extra"] == []
    kinds = sorted(f["kind"] for f in data["findings"])
    assert kinds == ["cpu-missing", "cpu-missing", "memory-missing"]
    assert not data["bytes"]["done"] and "headers and notes only" in data["bytes"]["reason"]
    assert data["cpu_method"] == "order" and any("inferred" in n for n in data["notes"])
    text = run(s / "vmcore-headers.bin", "--root", s / "S5/root")
    assert text.exit_code == 1
    assert "CPU 2: online, but no NT_PRSTATUS" in text.stdout and "CPU 3: online" in text.stdout
    assert "0x100000000-0x17fffffff" in text.stdout and "byte check: skipped" in text.stdout


@needs_vectors
@pytest.mark.parametrize("kernel", ["6.12.43", "6.12"])
def test_6_12_is_complete(kernel: str) -> None:
    s = scen(kernel)
    code, data = run_json(s / "vmcore-headers.bin", "--root", s / "S5/root")
    assert code == 0 and data["complete"] and data["findings"] == []
    online = cpulist_parse((s / "S5/root/sys/devices/system/cpu/online").read_text())
    assert cpus_with(data, "saved") == list(online)
    assert data["memory"]["missing"] == [] and data["memory"]["extra"] == []
    assert not data["bytes"]["done"] and "skipped" in data["bytes"]["reason"]
    text = run(s / "vmcore-headers.bin", "--root", s / "S5/root")
    assert text.exit_code == 0 and "byte check: skipped: the file holds headers and notes only" in text.stdout


@needs_vectors
@pytest.mark.parametrize("step", ["S1", "S4"])
def test_stale_header_after_dimm_remove_lists_extra_memory(tmp_path: Path, step: str) -> None:
    vp = vector_panic("6.12.43", step=step, cpus_from="S4")
    vmcore = parse_crash_elf64_headers(vp.mem, vp.elfcorehdr_addr)
    path = tmp_path / "vmcore-headers.bin"
    path.write_bytes(vmcore.headers_and_notes())
    code, data = run_json(path, "--root", scen("6.12.43") / "S4/root")
    assert code == 1
    assert data["memory"]["extra"] == [{"start": "0x100000000", "end": "0x13fffffff"}]
    assert data["memory"]["missing"] == []
    assert [f["kind"] for f in data["findings"]] == ["memory-extra"]
    assert cpus_with(data, "saved") == [0, 2, 3]


@needs_vectors
def test_machine_reader_on_a_vector() -> None:
    m = read_machine_at_panic(scen("6.12.43") / "S3/root")
    assert m.online == (0, 2, 3) and m.present == (0, 1, 2, 3)
    assert m.crash_kernel == ((0x6F000000, 0x7EFFFFFF),)
    assert m.expected_ram == ((0x100000, 0x6EFFFFFF), (0x7F000000, 0x7FFDEFFF), (0x100000000, 0x13FFFFFFF))
    assert m.offline_memory == () and m.model is None
    assert m.crash_notes[3] == 0x6CDBD800


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit 2


def _assert_bad(res: Result, *words: str) -> None:
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    for w in words:
        assert w in err, err


@needs_vectors
def test_bad_vmcore_files(tmp_path: Path) -> None:
    s = scen("6.12.43")
    real = (s / "vmcore-headers.bin").read_bytes()
    root = s / "S5/root"
    short = tmp_path / "short.bin"
    short.write_bytes(real[:50])
    _assert_bad(run(short, "--root", root), "short.bin", "truncated")
    phnum = tmp_path / "phnum.bin"
    phnum.write_bytes(real[:56] + struct.pack("<H", 0x4000) + real[58:])
    _assert_bad(run(phnum, "--root", root), "phnum.bin", "e_phnum 16384", "past the end")
    over = bytearray(real)
    struct.pack_into("<I", over, PAGE_SIZE + 4, 0xFFFFFFF0)  # first note's n_descsz
    overflow = tmp_path / "overflow.bin"
    overflow.write_bytes(bytes(over))
    _assert_bad(run(overflow, "--root", root), "overflow.bin", "overflows")
    _assert_bad(run(tmp_path / "absent", "--root", root), "absent", "cannot read")


@needs_vectors
def test_missing_snapshot_file(tmp_path: Path) -> None:
    s = scen("6.12.43")
    root = tmp_path / "root"
    shutil.copytree(s / "S5/root", root)
    (root / "sys/devices/system/cpu/online").unlink()
    _assert_bad(run(s / "vmcore-headers.bin", "--root", root), "sys/devices/system/cpu/online", "missing")
    (root / MODEL_STATE_FILE).parent.mkdir(parents=True)
    (root / MODEL_STATE_FILE).write_text("{}")
    shutil.copy(s / "S5/root/sys/devices/system/cpu/online", root / "sys/devices/system/cpu/online")
    _assert_bad(run(s / "vmcore-headers.bin", "--root", root), "machine.json", "memory_pattern_seed")
    _assert_bad(run(s / "vmcore-headers.bin", "--root", tmp_path / "nowhere"), "nowhere", "not a directory")


# ---------------------------------------------------------------------------------------------
# Whole vmcores of the small model machine


def _write(m: SmallMachine, path: Path) -> Path:
    write_vmcore(parse_crash_elf64_headers(m.mem, m.elfcorehdr_addr), m.mem, path)
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[SmallMachine, Path, Path]:
    m = small_machine()
    d = tmp_path_factory.mktemp("small")
    return m, _write(m, d / "vmcore"), m.write_root(d / "root")


def test_whole_vmcore_is_complete_with_bytes_checked(small: tuple[SmallMachine, Path, Path]) -> None:
    _, vmcore, root = small
    code, data = run_json(vmcore, "--root", root, "--samples", "200", "--seed", "3")
    assert code == 0, data["findings"]
    assert data["cpu_method"] == "crash_notes"
    assert cpus_with(data, "saved") == [0, 1, 3] and cpus_with(data, "offline") == [2]
    assert all("registers checked" in c["detail"] for c in data["cpus"] if c["status"] == "saved")
    assert data["bytes"]["done"] and data["bytes"]["samples"] == 200 and data["bytes"]["mismatches"] == []


def test_corrupt_pages_are_found(tmp_path: Path, small: tuple[SmallMachine, Path, Path]) -> None:
    _, vmcore, root = small
    bad = tmp_path / "vmcore"
    shutil.copy(vmcore, bad)
    vf = audit(bad, root).memory
    assert vf.missing == []
    with bad.open("r+b") as f:
        f.seek(-16 * PAGE_SIZE, 2)
        f.write(bytes(16 * PAGE_SIZE))
    report = audit(bad, root, samples=100_000)
    assert [f.kind for f in report.findings] == ["bytes-differ"]
    assert len(report.bytes.mismatches) == 16
    assert report.bytes.mismatches[-1] == 0x2FFF000


def test_without_model_the_byte_check_is_skipped(tmp_path: Path, small: tuple[SmallMachine, Path, Path]) -> None:
    m, vmcore, _ = small
    root = m.write_root(tmp_path / "root", model=False)
    report = audit(vmcore, root)
    assert report.complete and not report.bytes.done
    assert "no var/lib/crash-hotplug/machine.json" in report.bytes.reason


def test_registers_that_differ_are_named(tmp_path: Path, small: tuple[SmallMachine, Path, Path]) -> None:
    _, vmcore, root0 = small
    root = tmp_path / "root"
    shutil.copytree(root0, root)
    state = json.loads((root / MODEL_STATE_FILE).read_text())
    state["cpus"]["3"]["regs"]["ip"] = 0xFFFFFFFF81DEAD00
    state["panic_cpu"] = 3
    (root / MODEL_STATE_FILE).write_text(json.dumps(state))
    report = audit(vmcore, root)
    assert [f.kind for f in report.findings] == ["registers-differ"]
    msg = report.findings[0].message
    assert "CPU 3 (the panic CPU)" in msg and "ip 0xffffffff81000310 != 0xffffffff81dead00" in msg


def test_cpu_online_at_panic_without_pt_note_is_identified(tmp_path: Path) -> None:
    # a 6.1-style header made when only CPUs 0-1 were present; CPU 3 was hot-added and panicked
    m = small_machine(online=(0, 1, 3), present_at_load=2)
    vmcore = _write(m, tmp_path / "vmcore")
    root = m.write_root(tmp_path / "root", model=False)
    report = audit(vmcore, root)
    assert report.cpu_method == "crash_notes"
    missing = [c for c in report.cpus if c.status == "missing"]
    assert [c.cpu for c in missing] == [3]
    assert "crash_notes buffer holds one" in missing[0].detail
    assert [f.kind for f in report.findings] == ["cpu-missing"]


def test_offline_cpu_with_a_note_and_offline_blocks(tmp_path: Path, small: tuple[SmallMachine, Path, Path]) -> None:
    m, vmcore, _ = small
    # the snapshot says CPU 1 was offline, and memory block 1 (16 MiB blocks) too
    root = m.write_root(tmp_path / "root", online=(0, 3))
    mem = root / "sys/devices/system/memory"
    (mem / "memory1").mkdir(parents=True)
    (mem / "block_size_bytes").write_text("1000000\n")
    (mem / "memory1/state").write_text("offline\n")
    (mem / "memory1/phys_index").write_text("00000001\n")
    report = audit(vmcore, root)
    assert [(f.kind, f.message.split(":")[0]) for f in report.findings] == [("cpu-extra", "CPU 1")]
    assert report.memory.offline_dumped == [(0x1000000, 0x1FFFFFF)]
    assert any("offline at the panic" in n for n in report.notes)


def test_truncated_memory_data_is_a_gap(tmp_path: Path, small: tuple[SmallMachine, Path, Path]) -> None:
    _, vmcore, root = small
    cut = tmp_path / "vmcore"
    cut.write_bytes(vmcore.read_bytes()[: 64 * PAGE_SIZE])
    report = audit(cut, root)
    assert [f.kind for f in report.findings] == ["data-truncated"]
    assert not report.bytes.done


def test_filtered_dump_with_short_filesz(tmp_path: Path, small: tuple[SmallMachine, Path, Path]) -> None:
    # a dump tool may keep only the first p_filesz bytes of a PT_LOAD (the rest reads as zero)
    _, vmcore, root = small
    data = bytearray(vmcore.read_bytes())
    phnum = struct.unpack_from("<H", data, 56)[0]
    i = max(range(phnum), key=lambda k: struct.unpack_from("<Q", data, 64 + 56 * k + 8)[0])  # last PT_LOAD
    off, _, _, filesz = struct.unpack_from("<QQQQ", data, 64 + 56 * i + 8)
    struct.pack_into("<Q", data, 64 + 56 * i + 32, filesz // 2)
    cut = tmp_path / "vmcore"
    cut.write_bytes(bytes(data[: off + filesz // 2]))
    report = audit(cut, root, samples=100_000)
    assert report.complete, report.findings
    assert report.bytes.done and report.bytes.candidates == (filesz // 2) // PAGE_SIZE


def test_compressed_dump_is_named(tmp_path: Path, small: tuple[SmallMachine, Path, Path]) -> None:
    _, _, root = small
    f = tmp_path / "vmcore.kdump"
    f.write_bytes(b"KDUMP   " + bytes(4088))
    _assert_bad(run(f, "--root", root), "vmcore.kdump", "kdump-compressed")


def _steps() -> list[tuple[str, str]]:
    if VECTORS is None:
        return []
    return [(k.name, s.name) for k in sorted(VECTORS.iterdir()) if (k / "base").is_dir()
            for s in sorted((k / "base").glob("S*"))]


@needs_vectors
@pytest.mark.parametrize(("kernel", "step"), _steps())
def test_panic_at_every_step_against_the_step_json(tmp_path: Path, kernel: str, step: str) -> None:
    """A panic at each step: the audit's verdict agrees with what step.json recorded about that
    step's header (its RAM ranges against iomem, the CPUs its PT_NOTEs belong to)."""
    meta = json.loads((scen(kernel) / step / "step.json").read_text())
    vp = vector_panic(kernel, step=step)
    path = tmp_path / "vmcore-headers.bin"
    path.write_bytes(parse_crash_elf64_headers(vp.mem, vp.elfcorehdr_addr).headers_and_notes())
    report = audit(path, scen(kernel) / step / "root")

    def ranges(key: str) -> list[tuple[int, int]]:
        return [(int(s, 16), int(e, 16)) for s, e in meta[key]]

    want, have = ranges("iomem_system_ram_expected"), ranges("elfcorehdr_ram_ranges")
    assert report.memory.expected == want
    assert report.memory.missing == [r for r in want if r not in have]
    assert report.memory.extra == [r for r in have if r not in want]
    online = set(cpulist_parse((scen(kernel) / step / "root/sys/devices/system/cpu/online").read_text()))
    owners = {int(o[3:]) for o in meta["pt_note_owners"] if o.startswith("cpu")}
    assert [c.cpu for c in report.cpus if c.status == "missing"] == sorted(online - owners)
    assert report.complete == (meta["header_matches_iomem_system_ram"] and online <= owners)
