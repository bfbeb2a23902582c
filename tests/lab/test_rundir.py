"""Parsing what the guest printed, checked against the real-kernel vectors' own step.json."""

from __future__ import annotations

import json
from pathlib import Path

from crash_hotplug.elf.constants import NT_PRSTATUS
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.elf.prstatus import ElfPrstatus
from crash_hotplug.lab.rundir import (
    RunDir,
    hexrange,
    iomem_system_ram_expected,
    last_loaded_elf_headers,
    parse_cpulist,
)
from crash_hotplug.lab.scenario import _note_owners, action_label


def test_loaded_elf_headers_line_gives_the_segment(vector_run: Path) -> None:
    s0 = vector_run / "S0"
    info = json.loads((s0 / "step.json").read_text())
    found = last_loaded_elf_headers((s0 / "root/var/log/dmesg").read_text())
    assert found is not None
    assert hex(found.addr) == info["elfcorehdr_addr"]
    assert found.memsz == info["elfcorehdr_segment_size"]
    assert found.bufsz == info["elfcorehdr_bin_size"]


def test_loaded_elf_headers_absent_and_last_wins() -> None:
    assert last_loaded_elf_headers("[ 1.0] nothing here\n") is None
    text = (
        "[1] kexec: Loaded ELF headers at 0x6f000000 bufsz=0x1000 memsz=0xe1000\n"
        "[2] kexec_file: Loaded ELF headers at 0x70000000 bufsz=0x2000 memsz=0x1000\n"
    )
    found = last_loaded_elf_headers(text)
    assert found is not None and (found.addr, found.bufsz, found.memsz) == (0x70000000, 0x2000, 0x1000)


def test_iomem_rule_and_header_summary_match_step_json(vector_run: Path) -> None:
    run = RunDir(vector_run)
    for st in run.steps():
        expected, crash = iomem_system_ram_expected((st.root / "proc/iomem").read_text())
        assert [hexrange(r) for r in expected] == st.info["iomem_system_ram_expected"]
        assert crash is not None and hexrange(crash) == st.info["crashkernel_region"]
        core = ElfCore.parse(st.elfcorehdr)
        assert core.used_size == st.info["elfcorehdr_used_size"]
        assert len(core.load_phdrs) == st.info["n_load"]
        assert _note_owners(st.root, core.notes_phdrs) == st.info["pt_note_owners"]


def test_action_labels_are_the_vectors_wording(vector_run: Path) -> None:
    run = RunDir(vector_run)
    for st in run.steps():
        assert action_label(st.info["op"]) == st.info["action"]


def test_vmcore_notes_match_capture_json(vector_run: Path) -> None:
    run = RunDir(vector_run)
    headers, capture = run.vmcore_headers(), run.capture()
    assert headers is not None and capture is not None
    core = ElfCore.parse(headers)
    got = []
    for _i, note in core.notes():
        if note.name == "CORE" and note.n_type == NT_PRSTATUS:
            pr = ElfPrstatus.unpack(note.desc)
            got.append({"pr_pid": pr.pr_pid, "rip": hex(pr.ip)})
    assert got == capture["vmcore_nt_prstatus"]
    loads = [[hex(p.p_paddr), hex(p.p_memsz)] for p in core.load_phdrs]
    assert loads == capture["vmcore_load_ranges"]


def test_parse_cpulist() -> None:
    assert parse_cpulist("0-1\n") == [0, 1]
    assert parse_cpulist("0,2-3\n") == [0, 2, 3]
    assert parse_cpulist("\n") == []
