"""The mechanism end to end: scripted runs, panics, vmcores and their audits; replays of the
real-kernel vectors on the model."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from crash_hotplug.crash.arch import Outcome
from crash_hotplug.crash.panic import DumpLost, crash_kexec
from crash_hotplug.crash.x86_64 import prepare_elf_headers
from crash_hotplug.elf.compare import first_difference
from crash_hotplug.kexec.kexec_core import kimage_verify_digest
from crash_hotplug.machine.machine import GIB
from crash_hotplug.scenario import BASE_STEPS, SCRIPTED_STEPS, ScenarioRun, run_scenario
from crash_hotplug.snapshot.model import machine_from_snapshot
from tests.conftest import VECTORS, last_rebuild_step, needs_vectors, vector_steps

BEFORE_PANIC = SCRIPTED_STEPS[:-1]
PANIC = {"op": "panic", "cpu": "last_online"}


def _findings(rep: object) -> list[tuple[str, str]]:
    return [(f.kind, f.message) for f in rep.findings]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("design", "syscall"), [("upstream", "kexec_file_load"), ("upstream", "kexec_load"), ("rfc", "kexec_file_load")]
)
def test_scripted_run_audits_clean(design: str, syscall: str, tmp_path: Path) -> None:
    run = run_scenario(SCRIPTED_STEPS, design=design, syscall=syscall)
    assert run.panic is not None and run.panic.dumped, run.panic
    rep = run.audit(tmp_path)
    assert rep is not None
    assert _findings(rep) == []
    assert rep.exit_status == 0
    assert rep.bytes.done and rep.bytes.samples > 0
    assert run.hotplug is not None
    # 1 GiB + 1 GiB + (remove 1 GiB) + 2 GiB of 128 MiB blocks, each rebuilding
    expected = 8 + 8 + 8 + 16 + (3 if design == "rfc" else 0)
    assert run.hotplug.regenerations == expected


def test_panic_right_after_removal_shows_removed_dimm_as_extra(tmp_path: Path) -> None:
    run = run_scenario([*SCRIPTED_STEPS[:6], PANIC], design="upstream")
    rep = run.audit(tmp_path)
    assert rep is not None and rep.exit_status == 1
    dimm1 = (0x140000000, 0x17FFFFFFF)
    assert [k for k, _ in _findings(rep)] == ["memory-extra"]
    assert f"{dimm1[0]:#x}-{dimm1[1]:#x}" in _findings(rep)[0][1]


def test_kernel_without_the_feature_misses_exactly_the_hotplugged_cpus_and_memory(tmp_path: Path) -> None:
    run = run_scenario(SCRIPTED_STEPS, design="none", kernel="6.1")
    rep = run.audit(tmp_path)
    assert rep is not None and rep.exit_status == 1
    kinds = sorted(_findings(rep))
    assert [k for k, _ in kinds] == ["cpu-missing", "cpu-missing", "memory-missing"]
    assert "CPU 2" in kinds[0][1] and "CPU 3 (the panic CPU)" in kinds[1][1]
    assert "0x180000000-0x23fffffff" in kinds[2][1]


def test_cpu_added_after_load_without_the_feature_names_the_panicking_cpu(tmp_path: Path) -> None:
    run = run_scenario([{"op": "load"}, {"op": "add_cpus", "n": 1}, PANIC], design="none", kernel="6.1")
    rep = run.audit(tmp_path)
    assert rep is not None
    assert _findings(rep) == [("cpu-missing", pytest.approx(_findings(rep)[0][1]))]
    assert "CPU 2 (the panic CPU)" in _findings(rep)[0][1]


def test_removed_dimm_stays_until_next_memory_event_and_offline_blocks_stay() -> None:
    run = run_scenario(SCRIPTED_STEPS[:6], design="upstream")
    m = run.machine
    stale = run.header()
    assert stale != prepare_elf_headers(m.kernel_state())[0], "header still lists the removed DIMM"
    blocks = m.memory.dimm_blocks(run.dimms[2])
    m.memory_block_offline(blocks[0])
    after = run.header()
    assert after == prepare_elf_headers(m.kernel_state())[0], "the next memory event catches up"
    assert after != stale
    # the offlined block is still System RAM in iomem, so it is still in the header
    start = m.memory.block_range(blocks[0])[0]
    from crash_hotplug.elf.core import ElfCore

    assert any(p.p_paddr <= start <= p.p_paddr + p.p_memsz - 1 for p in ElfCore.parse(after).load_phdrs)


def test_events_while_a_load_holds_the_lock_are_dropped() -> None:
    run = run_scenario([{"op": "load"}], design="upstream")
    assert run.hotplug is not None
    assert run.kexec.kexec_trylock()  # a concurrent kexec_file_load holds the lock
    run.machine.add_dimm(GIB)
    run.kexec.kexec_unlock()
    assert run.hotplug.count(Outcome.LOCK_BUSY) == 8
    assert run.hotplug.regenerations == 0
    assert run.header() != prepare_elf_headers(run.machine.kernel_state())[0]
    assert "kexec_trylock() failed, kdump image may be inaccurate" in run.machine.dmesg()


def test_panic_while_the_lock_is_held_is_lost() -> None:
    run = run_scenario([{"op": "load"}], design="upstream")
    assert run.kexec.kexec_trylock()
    assert crash_kexec(run.kexec, 0).lost is DumpLost.LOCK_HELD


# --- purgatory -----------------------------------------------------------------------------


@pytest.mark.parametrize("segment", ["kernel", "initrd", "boot_params"])
def test_tampering_with_a_digested_segment_makes_the_panic_refuse(segment: str) -> None:
    run = run_scenario([{"op": "load"}], design="upstream")
    assert run.image is not None
    seg = run.image.segment_named(segment)
    run.kexec.arch_kexec_unprotect_crashkres()
    byte = run.machine.mem.read(seg.mem + seg.bufsz // 2, 1)
    run.machine.mem.write(seg.mem + seg.bufsz // 2, bytes([byte[0] ^ 0xFF]))
    assert crash_kexec(run.kexec, 0).lost is DumpLost.DIGEST_MISMATCH


def test_upstream_rewrites_never_change_the_digest_and_rfc_repatches() -> None:
    up = run_scenario(BEFORE_PANIC, design="upstream")
    assert up.image is not None and up.image.purgatory is not None
    rfc = run_scenario(BEFORE_PANIC, design="rfc")
    assert rfc.image is not None
    for run in (up, rfc):
        assert kimage_verify_digest(run.image, run.machine)  # type: ignore[arg-type]
    loaded = run_scenario([{"op": "load"}], design="upstream")
    sym = loaded.image.purgatory.symbol_addr("purgatory_sha256_digest")  # type: ignore[union-attr]
    assert up.machine.mem.read(sym, 32) == loaded.machine.mem.read(sym, 32), "upstream digest never changes"
    rsym = rfc.image.purgatory.symbol_addr("purgatory_sha256_digest")  # type: ignore[union-attr]
    first = run_scenario([{"op": "load"}], design="rfc")
    assert rfc.machine.mem.read(rsym, 32) != first.machine.mem.read(rsym, 32), "rfc re-patched the digest"


def test_rfc_header_in_digest_without_repatch_breaks_the_dump() -> None:
    """Why the RFC had to re-patch purgatory: with the header digested, a rewrite alone is fatal."""
    run = run_scenario([{"op": "load"}], design="rfc")
    assert run.hotplug is not None and run.image is not None
    run.hotplug.design = type(run.hotplug.design)(**{**run.hotplug.design.__dict__, "elfcorehdr_in_digest": False})
    run.machine.add_dimm(GIB)
    assert crash_kexec(run.kexec, 0).lost is DumpLost.DIGEST_MISMATCH


# --- the vectors, replayed -----------------------------------------------------------------


def _vector_run(kernel: str) -> ScenarioRun:
    assert VECTORS is not None
    machine = machine_from_snapshot(VECTORS / kernel / "base/S0/root")
    design = "upstream" if machine.config.crash_hotplug else "none"
    return ScenarioRun.start(machine, design)


@needs_vectors
@pytest.mark.parametrize("kernel", ["6.12.43", "6.12", "6.1"])
def test_replaying_the_vectors_gives_the_kernels_bytes_at_every_step(kernel: str) -> None:
    steps = [s for s in vector_steps() if s.kernel == kernel]
    run = _vector_run(kernel)
    for vstep, op in zip(steps, BASE_STEPS, strict=False):
        try:
            run.apply(op)
        except Exception as e:  # 6.12.117 refuses vCPU hot-add under TCG (2 possible CPUs)
            if kernel == "6.12" and op["op"] == "add_cpus":
                assert "possible" in str(e)
            else:
                raise
        diff = first_difference(vstep.header, run.header())
        assert diff is None, f"{vstep.id} (kernel rebuilt at {last_rebuild_step(vstep).name}): {diff}"
        assert run.image is not None and run.image.elf_load_addr == int(vstep.meta["elfcorehdr_addr"], 16)


@needs_vectors
def test_replay_panics_like_the_vectors() -> None:
    """6.1: the hot-added CPUs have no PT_NOTE (the panicking cpu3 among them); 6.12.43: three notes."""
    for kernel, notes in (("6.1", 1), ("6.12.43", 3)):
        run = _vector_run(kernel).run(BASE_STEPS)
        assert run.panic is not None and run.panic.vmcore is not None
        from crash_hotplug.elf.core import ElfCore

        core = ElfCore.parse(run.panic.vmcore.headers_and_notes())
        assert sum(1 for _, n in core.notes() if n.name == "CORE") == notes
        assert run.panic.panic_cpu == 3


# --- readers ---------------------------------------------------------------------------------


def test_vmcore_opens_in_readelf_pyelftools_and_gdb(tmp_path: Path) -> None:
    run = run_scenario([*BEFORE_PANIC, {**PANIC, "busy": True}], design="upstream", mem_gib=1)
    rep = run.audit(tmp_path, write_vmcore=True)
    assert rep is not None and rep.exit_status == 0
    vmcore = tmp_path / "vmcore"
    with vmcore.open("rb") as f:
        elf = ELFFile(f)
        notes = [n for seg in elf.iter_segments() if seg["p_type"] == "PT_NOTE" for n in seg.iter_notes()]
        assert sum(1 for n in notes if n["n_type"] == "NT_PRSTATUS") == len(run.machine.cpus.online)
    if shutil.which("readelf"):
        out = subprocess.run(["readelf", "-lnW", str(vmcore)], capture_output=True, text=True, check=True).stdout
        assert out.count("NT_PRSTATUS") == len(run.machine.cpus.online)
        assert "VMCOREINFO" in out
    if shutil.which("gdb"):
        out = subprocess.run(
            ["gdb", "-nx", "-batch", "-ex", "info threads", "-ex", "thread apply all info registers rip",
             "-c", str(vmcore)], capture_output=True, text=True, check=False, timeout=120,
        ).stdout
        rips = {int(x, 16) for x in re.findall(r"^rip\s+(0x[0-9a-f]+)", out, re.M)}
        expected = {run.machine.cpus.cpu(c).prstatus().ip for c in run.machine.cpus.online}
        assert rips == expected, out


def test_scenario_command(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from crash_hotplug.cli import cli

    res = CliRunner().invoke(cli, ["scenario", "run", "-o", str(tmp_path / "a"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["regenerations"] == 40 and data["audit"]["exit_status"] == 0
    res = CliRunner().invoke(cli, ["scenario", "run", "-o", str(tmp_path / "b"), "--design", "none",
                                   "--kernel", "6.1", "--json"])
    assert res.exit_code == 1
    bad = tmp_path / "steps.json"
    bad.write_text('[{"op": "add_dimm", "size_mib": 1000}]')
    res = CliRunner().invoke(cli, ["scenario", "run", "-o", str(tmp_path / "c"), "--steps", str(bad)])
    assert res.exit_code == 2 and "Traceback" not in res.output
