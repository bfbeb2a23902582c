"""The ``ours`` design against ``upstream``: one update per burst, no dump lost mid-update, no
update dropped, a true header after memory leaves -- each switch on its own, then all together."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crash_hotplug.crash.arch import Outcome
from crash_hotplug.crash.ours import OursCrashHotplug, OursOptions
from crash_hotplug.crash.panic import crash_kexec
from crash_hotplug.crash.vmcore import VmcoreFile
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.machine.machine import GIB
from crash_hotplug.scenario import SCRIPTED_STEPS, ScenarioRun, inject_panics, run_scenario

LOAD = {"op": "load"}
ADD_1G = {"op": "add_dimm", "size_mib": 1024, "idx": 1}
PANIC = {"op": "panic", "cpu": "last_online"}


def _ram(run: ScenarioRun) -> list[tuple[int, int]]:
    assert run.panic is not None and run.panic.vmcore is not None
    vf = VmcoreFile.from_vmcore(run.panic.vmcore, run.machine.mem)
    return [(s.paddr, s.end) for s in vf.ram_loads]


def _online_ram(run: ScenarioRun) -> list[tuple[int, int]]:
    from crash_hotplug.crash.x86_64 import prepare_elf_headers

    m = run.machine
    offline = [m.memory.block_range(i) for i, b in m.memory.blocks.items() if not b.online]
    core = ElfCore.parse(prepare_elf_headers(m.kernel_state(), offline)[0])
    return [(p.p_paddr, p.p_paddr + p.p_memsz - 1) for p in core.load_phdrs[1:]]


def test_one_dimm_is_one_regeneration() -> None:
    up = run_scenario([LOAD, ADD_1G], design="upstream")
    ours = run_scenario([LOAD, ADD_1G], design="ours")
    assert up.hotplug is not None and ours.hotplug is not None
    assert up.hotplug.regenerations == 8
    assert ours.hotplug.regenerations == 1
    assert ours.hotplug.count(Outcome.QUEUED) == 8
    no_coalesce = run_scenario([LOAD, ADD_1G], design="ours", options=OursOptions(coalesce=False))
    assert no_coalesce.hotplug is not None and no_coalesce.hotplug.regenerations == 8


def test_panic_at_every_write_of_an_update(tmp_path: Path) -> None:
    """128 possible CPUs make a two-page header, so the copy has several writes."""
    kw = {"possible": 128, "mem_gib": 2}
    up = inject_panics("upstream", [LOAD], ADD_1G, tmp_path, **kw)  # type: ignore[arg-type]
    assert {r.step for r in up} >= {"hide crash image", "copy elfcorehdr page 0", "copy elfcorehdr page 1",
                                    "restore crash image"}
    assert all(r.lost is not None for r in up), "upstream loses the dump at every step (kexec lock held)"
    ours = inject_panics("ours", [LOAD], ADD_1G, tmp_path, **kw)  # type: ignore[arg-type]
    assert [r.step for r in ours] == ["write slot 1 page 0", "write slot 1 page 1", "flip to slot 1"]
    assert all(r.complete for r in ours), ours
    legacy = inject_panics("legacy", [LOAD], ADD_1G, tmp_path, kernel="6.1", **kw)  # type: ignore[arg-type]
    assert len(legacy) == 8 and all(r.lost is not None for r in legacy), "every reload has its window"


def test_without_the_double_buffer_a_panic_mid_copy_dumps_a_torn_header(tmp_path: Path) -> None:
    """A DIMM added below another one shifts that one's PT_LOAD onto the header's second page; a
    panic after page 0 was rewritten and before page 1 was leaves a header that lost the upper DIMM."""
    setup = [LOAD, {"op": "add_dimm", "size_mib": 1024, "idx": 2, "start": "0x180000000"}]
    below = {"op": "add_dimm", "size_mib": 1024, "idx": 3, "start": "0x100000000"}
    kw = {"possible": 67, "mem_gib": 2}
    opts = OursOptions(coalesce=False, double_buffer=False)
    torn = inject_panics("ours", setup, below, tmp_path, options=opts, **kw)  # type: ignore[arg-type]
    lost_upper = [r for r in torn if any("0x180000000-0x1bfffffff (1 GiB)" in f for f in r.findings)]
    assert [r.step for r in lost_upper] == ["write slot 0 page 1"]
    opts = OursOptions(coalesce=False, double_buffer=True)
    kept = inject_panics("ours", setup, below, tmp_path, options=opts, **kw)  # type: ignore[arg-type]
    # never torn, never lost: the old header (missing only the block being added) or the new one
    assert all(r.lost is None and r.audit_exit is not None for r in kept)
    for r in kept:
        assert len(r.findings) <= 1 and all("memory-missing" in f and "(128 MiB)" in f for f in r.findings)
    assert all(r.complete for r in inject_panics("ours", setup, below, tmp_path, **kw))  # type: ignore[arg-type]


def test_events_while_a_load_holds_the_lock() -> None:
    lost = {}
    for design in ("upstream", "ours"):
        run = run_scenario([LOAD], design=design)
        assert run.hotplug is not None
        assert run.kexec.kexec_trylock()  # a concurrent kexec_file_load
        run.machine.add_dimm(GIB)
        run.machine.clock.run_until_idle()
        run.kexec.kexec_unlock()
        run.machine.clock.run_until_idle()
        lost[design] = run.hotplug.count(Outcome.LOCK_BUSY)
        run.apply(PANIC)
        assert (_ram(run) == _online_ram(run)) == (design == "ours")
    assert lost == {"upstream": 8, "ours": 0}
    ours = run_scenario([LOAD], design="ours")
    assert isinstance(ours.hotplug, OursCrashHotplug)
    assert ours.kexec.kexec_trylock()
    ours.machine.add_dimm(GIB)
    ours.machine.clock.run_until_idle()
    assert ours.hotplug.deferred == 1 and ours.hotplug.regenerations == 0
    ours.kexec.kexec_unlock()
    assert ours.hotplug.regenerations == 1, "replayed once, when the lock was released"


def test_true_header_after_memory_leaves_and_offline_blocks(tmp_path: Path) -> None:
    removed = [*SCRIPTED_STEPS[:6], PANIC]
    up = run_scenario(removed, design="upstream")
    ours = run_scenario(removed, design="ours")
    dimm1 = (0x140000000, 0x17FFFFFFF)
    assert dimm1 in _ram(up) and dimm1 not in _ram(ours)
    assert _ram(ours) == _online_ram(ours)
    rep = ours.audit(tmp_path / "ours")
    assert rep is not None and rep.exit_status == 0
    # offline two blocks of the 2nd DIMM: upstream still dumps them, ours does not
    for design, keeps in (("upstream", True), ("ours", False)):
        run = run_scenario(SCRIPTED_STEPS[:3], design=design)
        blocks = run.machine.memory.dimm_blocks(run.dimms[2])[:2]
        for b in blocks:
            run.machine.memory_block_offline(b)
        run.machine.clock.run_until_idle()
        run.apply(PANIC)
        start = run.machine.memory.block_range(blocks[0])[0]
        dumped = any(s <= start <= e for s, e in _ram(run))
        assert dumped == keeps
        if design == "ours":
            assert _ram(run) == _online_ram(run)
    # without online_only, offline blocks stay in the header as upstream has them
    run = run_scenario(SCRIPTED_STEPS[:3], design="ours", options=OursOptions(online_only=False))
    block = run.machine.memory.dimm_blocks(run.dimms[2])[0]
    run.machine.memory_block_offline(block)
    run.machine.clock.run_until_idle()
    run.apply(PANIC)
    start = run.machine.memory.block_range(block)[0]
    assert any(s <= start <= e for s, e in _ram(run))


_OPS = st.sampled_from(["add1", "add2", "del", "cpu_add", "cpu_off", "cpu_on", "block_off", "block_on",
                        "reload", "busy"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_OPS, min_size=1, max_size=12), st.integers(0, 3))
def test_ours_every_panic_is_complete(ops: list[str], panic_after: int) -> None:
    run = run_scenario([LOAD], design="ours", mem_gib=1, possible=4)
    m = run.machine
    added: list[str] = []
    for op in ops:
        try:
            if op in ("add1", "add2"):
                added.append(m.add_dimm((1 if op == "add1" else 2) * GIB).name)
            elif op == "del" and added:
                m.remove_dimm(added.pop(0))
            elif op == "cpu_add":
                free = [c for c in m.cpus.possible if c not in m.cpus.present]
                if free:
                    m.cpu_hot_add(free[0])
                    m.cpu_online(free[0])
            elif op == "cpu_off" and len(m.cpus.online) > 1:
                m.cpu_offline(m.cpus.online[-1])
            elif op == "cpu_on" and m.cpus.offline and set(m.cpus.offline) & set(m.cpus.present):
                m.cpu_online(sorted(set(m.cpus.offline) & set(m.cpus.present))[0])
            elif op in ("block_off", "block_on") and added:
                blk = m.memory.dimm_blocks(added[-1])[-1]
                (m.memory_block_offline if op == "block_off" else m.memory_block_online)(blk)
            elif op == "reload":
                from crash_hotplug.kexec.kexec_file import kexec_file_unload

                kexec_file_unload(run.kexec)
                run.load()
            elif op == "busy":
                assert run.kexec.kexec_trylock()
                if added:
                    m.memory_block_offline(m.memory.dimm_blocks(added[-1])[0])
                run.kexec.kexec_unlock()
        except Exception as e:  # the kernel refused the step (e.g. no free DIMM slot): fine
            from crash_hotplug.errors import CrashHotplugError

            assert isinstance(e, CrashHotplugError), e
        if panic_after == 0:
            break
        m.clock.run_until(m.clock.now + 0.005 * panic_after)  # sometimes inside a coalescing window
    res = crash_kexec(run.kexec, m.cpus.online[-1])
    assert res.vmcore is not None, res
    run.panic = res
    assert _ram(run) == _online_ram(run)
    vf = VmcoreFile.from_vmcore(res.vmcore, m.mem)
    assert len(vf.prstatus) == len(m.cpus.online)
