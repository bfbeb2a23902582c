"""The udev unload-then-reload path: reloads per event, the window with no crash image, the
throttler, and the rule that leaves hotplug to the kernel."""

from __future__ import annotations

from crash_hotplug.crash.panic import DumpLost, PanicResult, crash_kexec
from crash_hotplug.legacy.udev import HotplugEvent, evaluate
from crash_hotplug.legacy.udevd import RULES_ALWAYS_RELOAD, RULES_CRASH_HOTPLUG_AWARE, bundled_rules
from crash_hotplug.machine.clock import Clock
from crash_hotplug.machine.machine import GIB, Machine
from crash_hotplug.scenario import SCRIPTED_STEPS, ScenarioRun, run_scenario


def test_every_event_reloads_the_whole_image() -> None:
    run = run_scenario(SCRIPTED_STEPS[:2], design="legacy", kernel="6.1")
    assert run.kdump is not None and run.udev is not None
    assert run.udev.events == 8 and run.kdump.reloads == 8
    from crash_hotplug.crash.x86_64 import prepare_elf_headers

    assert run.header() == prepare_elf_headers(run.machine.kernel_state())[0]


def test_a_panic_between_unload_and_load_is_not_dumped() -> None:
    run = run_scenario([{"op": "load"}], design="legacy", kernel="6.1")
    assert run.kdump is not None
    seen: list[PanicResult] = []
    run.kdump.on_step = lambda step: seen.append(crash_kexec(run.kexec, 0)) if not seen else None
    run.machine.add_dimm(GIB)
    assert seen and seen[0].lost is DumpLost.NO_IMAGE
    assert crash_kexec(run.kexec, 0).dumped, "after the reload the dump works again"


def test_throttler_coalesces_a_burst_into_one_reload() -> None:
    run = run_scenario(SCRIPTED_STEPS[:-1], design="legacy-throttled", kernel="6.1")
    assert run.kdump is not None and run.udev is not None
    # DIMM add, DIMM add, 2 CPUs added, DIMM removed, DIMM added: five bursts, five reloads
    assert run.udev.reload_requests == 8 + 8 + 2 + 8 + 16
    assert run.kdump.reloads == 5
    assert run.udev.throttler.exited == run.udev.reload_requests - 5


def test_throttler_timing_under_costs() -> None:
    """With real durations: 1 s sleep, settle, then one reload whose unload-to-load window is the load time."""

    class Costs:
        def cost(self, what: str, units: float = 1.0) -> float:
            return {"kexec_unload": 0.027, "kexec_file_load": 0.763, "udev_event": 0.005}.get(what, 0.0)

    m = Machine.new(mem_gib=2, kernel="6.1")
    m.clock = Clock(costs=Costs())
    run = ScenarioRun.start(m, "legacy-throttled")
    run.apply({"op": "load"})
    run.apply({"op": "add_dimm", "size_mib": 1024})
    assert run.kdump is not None
    assert run.kdump.reloads == 1
    (gone, back), = run.kdump.unloaded
    assert abs((back - gone) - 0.763) < 1e-9
    # the first event's udev worker starts the throttler; it sleeps 1 s, the queue is empty by then
    assert abs(gone - (0.005 + 1.0 + 0.027)) < 1e-9


def test_aware_rule_leaves_hotplug_to_the_kernel() -> None:
    rules = bundled_rules(RULES_CRASH_HOTPLUG_AWARE)
    for subsystem, action in (("cpu", "add"), ("memory", "online"), ("memory", "offline")):
        assert not evaluate(rules, HotplugEvent(subsystem, action, "x", {"crash_hotplug": "1"})).reloads_kdump
        assert evaluate(rules, HotplugEvent(subsystem, action, "x", {"crash_hotplug": "0"})).reloads_kdump
        assert evaluate(rules, HotplugEvent(subsystem, action, "x", {})).reloads_kdump
    assert not evaluate(rules, HotplugEvent("cpu", "online", "x", {})).reloads_kdump
    always = bundled_rules(RULES_ALWAYS_RELOAD)
    assert evaluate(always, HotplugEvent("memory", "online", "x", {"crash_hotplug": "1"})).reloads_kdump


def test_crash_hotplug_reads_zero_while_the_lock_is_busy() -> None:
    """The sysfs attribute udev reads is 0 while a load holds the kexec lock: the aware rule then
    reloads although the kernel would have handled the event (upstream behaviour)."""
    run = run_scenario([{"op": "load"}], design="upstream")
    assert run.crash_hotplug_attr() == 1
    assert run.kexec.kexec_trylock()
    assert run.crash_hotplug_attr() == 0
    run.kexec.kexec_unlock()
