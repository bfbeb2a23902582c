"""ppc64le crash hotplug against the real kernel's bytes in ../shared/vectors-ppc64 (read in place):
kexec-tools' first header, the kernel's rewrites, the crash FDT after CPU hot-add, and the whole
scenario replayed on the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crash_hotplug.crash.panic_ppc64 import Ppc64DumpLost, capture_kernel_boot_cpu
from crash_hotplug.crash.ppc64 import (
    arch_crash_get_elfcorehdr_size,
    prepare_elf_headers_ppc64,
    update_cpus_node,
)
from crash_hotplug.elf.compare import first_difference
from crash_hotplug.fdt.blob import FdtBlob
from crash_hotplug.fdt.tree import fdt_parse, fdt_write
from crash_hotplug.kexec.kexec_load_ppc64 import (
    Ppc64Payload,
    crash_create_elf64_headers_ppc64,
    fixup_dt,
    kdump_fdt_extra_size,
)
from crash_hotplug.machine.pseries import OfNode
from crash_hotplug.scenario_ppc64 import Ppc64Run
from crash_hotplug.snapshot.model_ppc64 import pseries_from_snapshot
from crash_hotplug.snapshot.reader_ppc64 import read_kernel_state_ppc64
from tests.conftest import VECTORS_PPC64, Ppc64Step, needs_ppc64_vectors, ppc64_steps

pytestmark = needs_ppc64_vectors
STEPS = ppc64_steps()
SCEN = VECTORS_PPC64 / "6.12" / "base" if VECTORS_PPC64 is not None else Path("/nonexistent")


def _step(name: str) -> Ppc64Step:
    return next(s for s in STEPS if s.name == name and s.kernel == "6.12")


def _padded(buf: bytes) -> bytes:
    return buf + bytes(-len(buf) % 4096)


def live_cpus_nodes() -> dict[int, OfNode]:
    """The kernel's live ``/cpus`` nodes, by unit address, with their properties in the kernel's list
    order. The capture records that order only through the FDT the kernel rewrote (``fdt_setprop``
    puts each new property first, so the rewritten node lists them in reverse); the order of the
    *nodes* is not taken from there: the model's ``of_attach_node`` decides it."""
    s2 = fdt_parse(_step("S2").fdt)
    cpus = s2.root.find("/cpus")
    assert cpus is not None
    return {int(c.name.split("@")[1], 16): OfNode(c.name, [(p.name, p.value) for p in reversed(c.props)])
            for c in cpus.children}


def payload_from(step: Ppc64Step) -> Ppc64Payload:
    segs = step.meta["kexec_segments"]
    return Ppc64Payload(kernel=b"", kernel_memsz=segs[0]["memsz"], initrd=bytes(segs[4]["bufsz"]), fdt=step.fdt)


def _run() -> Ppc64Run:
    live = live_cpus_nodes()
    s0 = _step("S0")
    return Ppc64Run.from_snapshot(s0.root, payload_from(s0), cpus_nodes=[live[0], live[1]],
                                  cpu_node_templates={2: live[2], 3: live[3]})


def _plan() -> list[dict[str, Any]]:
    plan: list[dict[str, Any]] = json.loads((SCEN / "scenario.json").read_text())["plan"]
    return plan


def test_first_header_is_kexec_tools_bytes() -> None:
    """S0: kexec-tools' header from S0's snapshot (RTAS last, page-rounded; [0, 64K) at the backup)."""
    s0 = _step("S0")
    p = pseries_from_snapshot(s0.root)
    backup = s0.meta["kexec_segments"][1]["mem"]
    built = crash_create_elf64_headers_ppc64(p, backup)
    assert len(built) == s0.meta["kexec_segments"][2]["bufsz"]
    diff = first_difference(s0.header, _padded(built))
    assert diff is None, f"S0 (kexec-tools): {diff}"


@pytest.mark.parametrize("name", ["S1", "S2", "S3", "S4"])
def test_kernel_rewrites_are_kernel_bytes(name: str) -> None:
    """Each header the kernel rewrote, built from the snapshot of that step (S2's header was not
    rewritten: it must also be what S1's snapshot gives)."""
    step = _step(name)
    source = step if step.meta["header_changed_vs_previous_step"] else _step(f"S{int(name[1:]) - 1}")
    state, dt = read_kernel_state_ppc64(source.root)
    built, _n = prepare_elf_headers_ppc64(state, dt.rtas, step.meta["kexec_segments"][1]["mem"])
    diff = first_difference(step.header, built)
    assert diff is None, f"{step.id} (built from {source.name}): {diff}"


def test_first_memory_event_changes_the_rtas_phdr() -> None:
    diff = first_difference(_step("S0").header, _step("S1").header)
    assert diff is not None and diff.startswith("program header 11 (PT_LOAD) p_offset")


def test_mismatch_names_first_program_header() -> None:
    s1 = _step("S1")
    tampered = bytearray(s1.header)
    tampered[64 + 56 * 12 + 40] ^= 1  # p_memsz of the last PT_LOAD
    diff = first_difference(s1.header, bytes(tampered))
    assert diff is not None and "program header 12 (PT_LOAD) p_filesz" not in diff
    assert "program header 12 (PT_LOAD) p_memsz" in diff


def test_elfcorehdr_size_is_the_powerpc_formula() -> None:
    for step in STEPS:
        state, _dt = read_kernel_state_ppc64(step.root)
        want = int((step.root / "sys/kernel/crash_elfcorehdr_size").read_text())
        assert arch_crash_get_elfcorehdr_size(len(state.possible), state.config.crash_max_memory_ranges,
                                              state.config.memory_hotplug) == want == 459320


def test_fdt_after_cpu_hot_add_is_the_kernels() -> None:
    """S1's crash FDT with ``update_cpus_node`` run for the two core adds (of_attach_node order)
    is S2's FDT byte for byte; the other steps leave it alone."""
    live = live_cpus_nodes()
    blob = FdtBlob(_step("S1").fdt)
    update_cpus_node(blob, [live[2], live[0], live[1]])
    update_cpus_node(blob, [live[3], live[2], live[0], live[1]])
    assert blob.data() == _step("S2").fdt
    assert _step("S3").fdt == _step("S2").fdt == _step("S4").fdt
    assert _step("S0").fdt == _step("S1").fdt


def test_fixup_dt_gives_kexec_tools_fdt() -> None:
    """S0's FDT is fs2dt's blob grown by 4 KiB + the hotplug room and given linux,booted-from-kexec;
    the room is 6 absent cores x the size of /cpus/PowerPC,POWER9@0 as /proc/device-tree shows it."""
    s0 = _step("S0")
    live = live_cpus_nodes()
    extra = kdump_fdt_extra_size(8, 2, 2, [live[0], live[1]])
    assert extra == 4146
    # undo fixup_dt by hand: drop the property and its name, shrink to fs2dt's 4-byte aligned size
    tree = fdt_parse(s0.fdt)
    chosen = tree.root.find("/chosen")
    assert chosen is not None and chosen.props[0].name == "linux,booted-from-kexec"
    del chosen.props[0]
    name = b"linux,booted-from-kexec\0"
    assert tree.strings.endswith(name)
    tree.strings = tree.strings[: -len(name)]
    assert tree.layout is not None
    blob = fdt_write(tree)
    h = FdtBlob(blob).header
    fs2dt_size = -(-(h.off_dt_strings + h.size_dt_strings) // 4) * 4
    fs2dt = bytearray(blob[:fs2dt_size])
    fs2dt[4:8] = fs2dt_size.to_bytes(4, "big")
    assert fs2dt_size + 4096 + extra == len(s0.fdt)
    assert fixup_dt(bytes(fs2dt), extra) == s0.fdt


def test_segments_are_where_kexec_tools_put_them() -> None:
    run = _run()
    run.apply({"op": "load"})
    assert run.image is not None
    want = _step("S0").meta["kexec_segments"]
    got = [(s.mem, s.memsz) for s in run.image.segments]
    assert got == [(w["mem"], w["memsz"]) for w in want]
    for i in (1, 2, 4, 5):  # backup, elfcorehdr, initrd, FDT
        assert run.image.segments[i].bufsz == want[i]["bufsz"]
    assert hex(run.image.flags) == _step("S0").meta["kexec_flags"]
    assert f"elfcorehdr={run.image.segments[2].mem // 1024}K" in (SCEN / "capture-cmdline").read_text()


def test_model_replay_has_the_real_bytes_at_every_step() -> None:
    """Machine from S0's snapshot, the plan's actions through the generic handler and the powerpc
    handler: the header and the FDT in memory equal the captured ones after every step."""
    run = _run()
    for op, step in zip(_plan(), STEPS, strict=False):
        run.apply(op)
        diff = first_difference(step.header, run.header())
        assert diff is None, f"{step.id} after {op}: {diff}"
        assert run.fdt() == step.fdt, f"{step.id} after {op}: crash FDT differs"
    kinds = [(r.action_name, r.outcome.value) for r in run.hp.records]
    assert kinds.count(("add cpu", "updated")) == 2
    assert kinds.count(("remove memory", "updated")) == 4  # one per 256 MiB LMB of dimm1
    # the panic from the plan: the last online CPU (3, hot-added) boots the capture kernel
    run.apply(_plan()[-1])
    res = run.panics[-1]
    cap = json.loads((SCEN / "capture.json").read_text())
    assert res.dumped and res.cpu == cap["panic_cpu"] == 3
    assert res.boot_node == "/cpus/PowerPC,POWER9@3"


def test_hot_added_cpu_without_fdt_update_loses_the_dump() -> None:
    """Loaded without --hotplug (no KEXEC_CRASH_HOTPLUG_SUPPORT) the kernel leaves the crash FDT
    as loaded: a panic on the hot-added CPU 3 finds no /cpus node for it and the dump is lost; on
    CPU 0 it boots."""
    live = live_cpus_nodes()
    s0 = _step("S0")
    run = Ppc64Run.from_snapshot(s0.root, payload_from(s0), hotplug=False, cpus_nodes=[live[0], live[1]],
                                 cpu_node_templates={2: live[2], 3: live[3]})
    run.run([{"op": "load"}, {"op": "add_cpus", "n": 2}])
    assert run.fdt() == s0.fdt
    assert [r.outcome.value for r in run.hp.records] == ["image without hotplug support"] * 2
    run.apply({"op": "panic", "cpu": 3})
    assert run.panics[-1].lost is Ppc64DumpLost.BOOT_CPU_NOT_IN_FDT
    run.apply({"op": "panic", "cpu": 0})
    assert run.panics[-1].dumped
    assert capture_kernel_boot_cpu(_step("S2").fdt, 3) == "/cpus/PowerPC,POWER9@3"
    assert capture_kernel_boot_cpu(s0.fdt, 3) is None
