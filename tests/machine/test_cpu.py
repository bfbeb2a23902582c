"""CPU hotplug: mask transitions, the kernel's refusals, and the cpuhp callback order."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from crash_hotplug.elf.prstatus import USER_REGS, ElfPrstatus
from crash_hotplug.machine.cpu import (
    CpuAlreadyPresentError,
    CpuBusyError,
    CpuHotplug,
    CpuhpCallbackError,
    CpuhpState,
    CpuhpStateError,
    CpuNotHotpluggableError,
    CpuNotPossibleError,
    CpuNotPresentError,
    task_pid,
    user_regs,
)


def boot(possible: int = 8, present: int = 2) -> CpuHotplug:
    return CpuHotplug.boot(range(possible), range(present), range(present),
                           {c: 0x6CC3D800 + c * 0x80000 for c in range(possible)})


def test_hot_add_online_offline_remove() -> None:
    hp = boot()
    assert (hp.possible, hp.present, hp.online, hp.offline) == (tuple(range(8)), (0, 1), (0, 1), (2, 3, 4, 5, 6, 7))
    hp.cpu_hot_add(2)
    assert hp.present == (0, 1, 2) and hp.online == (0, 1)
    hp.cpu_up(2)
    assert hp.online == (0, 1, 2) and hp.cpu(2).state == CpuhpState.CPUHP_ONLINE
    hp.cpu_down(1)
    assert hp.online == (0, 2) and hp.present == (0, 1, 2) and hp.cpu(1).state == CpuhpState.CPUHP_OFFLINE
    hp.cpu_hot_remove(1)
    assert hp.present == (0, 2)
    assert hp.cpu(1).crash_notes == 0x6CC3D800 + 0x80000, "crash_notes of a possible CPU never move"


def test_refusals() -> None:
    hp = boot(possible=4, present=2)
    with pytest.raises(CpuNotPossibleError):
        hp.cpu_hot_add(4)
    with pytest.raises(CpuAlreadyPresentError):
        hp.cpu_hot_add(1)
    with pytest.raises(CpuNotPresentError):
        hp.cpu_up(3)
    with pytest.raises(CpuNotHotpluggableError) as e:
        hp.cpu_down(0)
    assert e.value.errno == 1 and e.value.cpu == 0
    with pytest.raises(CpuBusyError):
        hp.cpu_hot_remove(1)  # still online
    hp.cpu0_hotpluggable = True
    hp.cpu_down(1)
    with pytest.raises(CpuBusyError) as busy:
        hp.cpu_down(0)  # the last online CPU
    assert busy.value.errno == 16
    assert hp.online == (0,)


def test_bp_prepare_dyn_callbacks_run_while_the_cpu_is_not_online() -> None:
    hp = boot()
    seen: list[tuple[str, int, bool]] = []

    def startup(cpu: int) -> int:
        seen.append(("startup", cpu, hp.cpu(cpu).online))
        return 0

    def teardown(cpu: int) -> int:
        seen.append(("teardown", cpu, hp.cpu(cpu).online))
        return 0

    state = hp.cpuhp_setup_state_nocalls(CpuhpState.CPUHP_BP_PREPARE_DYN, "crash/cpuhp", startup, teardown)
    assert CpuhpState.CPUHP_BP_PREPARE_DYN <= state <= CpuhpState.CPUHP_BP_PREPARE_DYN_END
    assert seen == [], "nocalls: nothing runs for CPUs already up"
    hp.cpu_hot_add(3)
    hp.cpu_up(3)
    hp.cpu_down(3)
    assert seen == [("startup", 3, False), ("teardown", 3, False)]


def test_states_run_ascending_up_and_descending_down() -> None:
    hp = boot()
    order: list[str] = []

    def cb(tag: str) -> Callable[[int], int]:
        def f(cpu: int) -> int:
            order.append(tag)
            return 0
        return f

    a = hp.cpuhp_setup_state_nocalls(CpuhpState.CPUHP_AP_ONLINE_DYN, "ap", cb("ap+"), cb("ap-"))
    b = hp.cpuhp_setup_state_nocalls(CpuhpState.CPUHP_BP_PREPARE_DYN, "bp", cb("bp+"), cb("bp-"))
    c = hp.cpuhp_setup_state_nocalls(CpuhpState.CPUHP_BP_PREPARE_DYN, "bp2", cb("bp2+"), cb("bp2-"))
    assert b < c < a
    hp.cpu_hot_add(2)
    hp.cpu_up(2)
    assert order == ["bp+", "bp2+", "ap+"]
    order.clear()
    hp.cpu_down(2)
    assert order == ["ap-", "bp2-", "bp-"]
    assert [t[2] for t in hp.trace] == ["startup"] * 3 + ["teardown"] * 3


def test_failing_startup_rolls_back() -> None:
    hp = boot()
    torn: list[int] = []
    hp.cpuhp_setup_state_nocalls(CpuhpState.CPUHP_BP_PREPARE_DYN, "ok", lambda c: 0, lambda c: torn.append(c) or 0)
    hp.cpuhp_setup_state_nocalls(CpuhpState.CPUHP_AP_ONLINE_DYN, "bad", lambda c: -12, None)
    hp.cpu_hot_add(5)
    with pytest.raises(CpuhpCallbackError) as e:
        hp.cpu_up(5)
    assert e.value.errno == 12 and e.value.callback == "bad"
    assert not hp.cpu(5).online and hp.cpu(5).state == CpuhpState.CPUHP_OFFLINE
    assert torn == [5], "the states already run are torn down again"


def test_registers_are_a_function_of_cpu_and_counter() -> None:
    hp = boot()
    s = hp.cpu(1)
    assert s.regs == user_regs(1, 0) and s.pid == task_pid(1, 0) == 0
    s.counter = 3
    regs = user_regs(1, 3)
    assert s.regs == regs != user_regs(1, 2) and s.pid == task_pid(1, 3) != 0
    assert regs[USER_REGS.index("cs")] == 0x10 and regs[USER_REGS.index("flags")] == 0x246
    assert regs[USER_REGS.index("ip")] >> 24 == 0xFFFFFFFF81
    note = s.prstatus().note_buf()
    assert len(note) == 368
    back = ElfPrstatus.unpack(note[20:356])
    assert back.pr_pid == s.pid and back.regs == regs


def test_cpuhp_state_errors() -> None:
    hp = boot()
    for _ in range(CpuhpState.CPUHP_BP_PREPARE_DYN_END - CpuhpState.CPUHP_BP_PREPARE_DYN + 1):
        hp.cpuhp_setup_state_nocalls(CpuhpState.CPUHP_BP_PREPARE_DYN, "x", None, None)
    with pytest.raises(CpuhpStateError, match="ENOSPC"):
        hp.cpuhp_setup_state_nocalls(CpuhpState.CPUHP_BP_PREPARE_DYN, "one too many", None, None)
    hp.cpuhp_setup_state_nocalls(CpuhpState.CPUHP_PERF_PREPARE, "perf", None, None)
    with pytest.raises(CpuhpStateError, match="taken by perf"):
        hp.cpuhp_setup_state_nocalls(CpuhpState.CPUHP_PERF_PREPARE, "again", None, None)
