"""legacy-throttled as kdump-utils ships it: its rule file unchanged, the RUN line's
``systemctl is-active`` gate, ``systemd-run --no-block``, and ``kdump-udev-throttler``'s
lock / sleep / settle / one-reload-per-burst as the v1.0.61 script does it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from crash_hotplug.kexec.kexec_core import Kexec
from crash_hotplug.legacy.kdumpctl import KdumpService
from crash_hotplug.legacy.throttler import SETTLE_TIMEOUT, THROTTLE_SLEEP, Throttler
from crash_hotplug.legacy.udev import HotplugEvent, evaluate, parse_rules
from crash_hotplug.legacy.udevd import (
    KDUMP_UTILS_RULES,
    RULES_ALWAYS_RELOAD,
    bundled_rules,
    bundled_rules_name,
    bundled_rules_text,
    without_fadump,
)
from crash_hotplug.machine.clock import Clock
from crash_hotplug.machine.machine import GIB, Machine
from crash_hotplug.scenario import ScenarioRun
from crash_hotplug.sim.costs import RHEL7, CostModel, load_costs
from tests.conftest import VECTORS_PPC64, needs_ppc64_vectors

REPO = Path(__file__).resolve().parents[2]
#: SHA-256 of rhkdump/kdump-utils v1.0.61 98-kexec.rules (as recorded in both READMEs)
KDUMP_UTILS_SHA256 = "e1a0aaaa7e290b3cbf3d7e7b77cd8a50078711df57fed9edbcf2e9f3e0acce9c"
#: and of its 98-kexec.rules.ppc64
KDUMP_UTILS_PPC64_SHA256 = "5f5d746f5e910857df4ebf7794add753e2486c4768ea1a84b67b6e600e049b76"


class Costs:
    def __init__(self, **s: float) -> None:
        self.s = s

    def cost(self, what: str, units: float = 1.0) -> float:
        return self.s.get(what, 0.0) * units


def test_the_simulator_runs_kdump_utils_file_as_shipped() -> None:
    text = bundled_rules_text(KDUMP_UTILS_RULES)
    assert hashlib.sha256(text.encode()).hexdigest() == KDUMP_UTILS_SHA256
    for readme in (REPO / "src/crash_hotplug/data/udev/README.md", REPO / "tests/data/udev/README.md"):
        assert re.search(rf"^{KDUMP_UTILS_SHA256}  kdump-utils", readme.read_text(), re.M), readme
    for profile in ("seed", "lab-6.12.43"):
        costs = load_costs(profile)
        assert costs.throttled.rules == KDUMP_UTILS_RULES and "v1.0.61" in costs.throttled.origin
        m = Machine.new(mem_gib=2, kernel="6.1")
        run = ScenarioRun.start(m, "legacy-throttled", costs.throttled.syscall, rules=costs.throttled.rules)
        assert run.udev is not None
        assert run.udev.rules == [parse_rules(text, KDUMP_UTILS_RULES)]
    assert not (REPO / "src/crash_hotplug/data/udev/98-kdump-reload.rules").exists(), "no paraphrase left"


def test_ppc64le_runs_the_file_kdump_utils_installs_there() -> None:
    """kdump-utils' Makefile installs 98-kexec.rules.ppc64 as 98-kexec.rules on ppc64/ppc64le."""
    ppc = bundled_rules_name(KDUMP_UTILS_RULES, "ppc64le")
    assert ppc == f"{KDUMP_UTILS_RULES}.ppc64" and bundled_rules_name(KDUMP_UTILS_RULES) == KDUMP_UTILS_RULES
    assert hashlib.sha256(bundled_rules_text(ppc).encode()).hexdigest() == KDUMP_UTILS_PPC64_SHA256
    readme = (REPO / "src/crash_hotplug/data/udev/README.md").read_text()
    assert re.search(rf"^{KDUMP_UTILS_PPC64_SHA256}  {re.escape(ppc)}$", readme, re.M)
    for other in (RULES_ALWAYS_RELOAD, RHEL7.rules):
        assert bundled_rules_name(other, "ppc64le") == other
    rules = bundled_rules(KDUMP_UTILS_RULES, "ppc64le")

    def runs(subsystem: str, action: str, attrs: dict[str, str | None]) -> list[str]:
        return [cmd for _, cmd in evaluate(rules, HotplugEvent(subsystem, action, "x", attrs)).outcomes[0].runs]

    (mem,) = runs("memory", "online", {})
    assert "/sys/kernel/fadump/hotplug_ready" in mem and runs("memory", "offline", {}) == [mem]
    (cpu,) = runs("cpu", "online", {})
    assert "/sys/kernel/fadump/enabled" in cpu
    assert runs("cpu", "add", {}) == [] and runs("memory", "online", {"crash_hotplug": "1"}) == []
    assert without_fadump("/sys/kernel/fadump/hotplug_ready") is None


@needs_ppc64_vectors
def test_ppc64le_storm_reloads_through_the_ppc64_rule() -> None:
    from crash_hotplug.sim.engine import simulate
    from crash_hotplug.sim.plans import GIB as PLAN_GIB
    from crash_hotplug.sim.plans import resize_plan
    from crash_hotplug.sim.ppc64 import Ppc64Guest, start_ppc64

    assert VECTORS_PPC64 is not None
    s0 = VECTORS_PPC64 / "6.12" / "base" / "S0"
    guest = Ppc64Guest(s0 / "root", (s0 / "crash-fdt.dtb").read_bytes())
    run = start_ppc64(guest, "legacy-throttled", rules=CostModel.default().throttled.rules)
    assert run.udev is not None and run.udev.rules[0].path == f"{KDUMP_UTILS_RULES}.ppc64"
    plan = resize_plan(6 * PLAN_GIB, 2 * PLAN_GIB, dimm=1 * PLAN_GIB, block=256 << 20, cpus=2, possible=8)
    tl = simulate("legacy-throttled", plan, guest=guest)
    assert 0 < len(tl.reloads) < plan.memory_events / 4, "no fadump: the throttler reloads, once per burst"


def test_no_reload_while_kdump_service_is_not_active() -> None:
    m = Machine.new(mem_gib=2, kernel="6.1")
    run = ScenarioRun.start(m, "legacy-throttled")
    assert run.kdump is not None and run.udev is not None and not run.kdump.active
    run.apply({"op": "add_dimm", "size_mib": 1024})  # 8 blocks: 8 memory online events
    assert run.udev.events == 8 and run.udev.inactive == 8
    assert run.udev.transient_units == 0 and run.udev.reload_requests == 0 and run.kdump.reloads == 0
    run.apply({"op": "load"})
    assert run.kdump.active
    run.apply({"op": "add_dimm", "size_mib": 1024})
    assert run.udev.transient_units == 8 and run.kdump.reloads == 1 and run.udev.inactive == 8
    run.kdump.stop()
    assert not run.kdump.active and run.kexec.kexec_crash_image is None
    run.apply({"op": "add_dimm", "size_mib": 1024})
    assert run.udev.inactive == 16 and run.kdump.reloads == 1, "kdumpctl stop: the rule exits 0"


def test_is_active_stays_true_through_reloads() -> None:
    """kdump.service is oneshot + RemainAfterExit: a reload's unload does not make it inactive."""
    run = ScenarioRun.start(Machine.new(mem_gib=2, kernel="6.1"), "legacy")
    run.apply({"op": "load"})
    assert run.kdump is not None
    seen: list[bool] = []
    run.kdump.on_step = lambda step: seen.append(run.kdump.active if run.kdump else False)
    run.kdump.reload()
    assert seen == [True] and run.kdump.reloads == 1


def _service(**costs: float) -> tuple[Machine, KdumpService]:
    m = Machine.new(mem_gib=2, kernel="6.1")
    m.clock = Clock(costs=Costs(**costs))
    svc = KdumpService(Kexec(m))
    svc.start()
    return m, svc


def test_lock_holder_sleeps_one_second_then_reloads_once() -> None:
    """Script lines 36-51: the first instance holds the lock through ``sleep 1`` and a settle that
    finds the queue empty; the others exit (none waits for the lock); one reload."""
    m, svc = _service()
    thr = Throttler(svc, lambda: None)
    for t in (0.0, 0.2, 0.9):
        m.clock.call_at(t, thr.run)
    m.clock.run_until_idle()
    assert (thr.started, thr.exited, svc.reloads) == (1, 2, 1)
    assert svc.busy == [(THROTTLE_SLEEP, THROTTLE_SLEEP)]
    assert thr.settle_timeouts == 0


def test_settle_waits_for_the_queue_at_most_three_seconds() -> None:
    """``sleep 1 && udevadm settle --timeout 3``: a queue busy until 2.5 s holds the reload until
    then; one busy past 4 s is cut off at 4 s and the reload goes ahead all the same."""
    for busy_until, reload_at, timeouts in ((2.5, 2.5, 0), (9.0, THROTTLE_SLEEP + SETTLE_TIMEOUT, 1)):
        m, svc = _service()
        clock = m.clock

        def queue(b: float = busy_until, clock: Clock = clock) -> float | None:
            return b if clock.now < b else None

        thr = Throttler(svc, queue)
        thr.run()
        m.clock.run_until_idle()
        assert svc.busy == [(reload_at, reload_at)] and thr.settle_timeouts == timeouts


def test_lock_is_dropped_before_kdumpctl_so_reloads_queue_on_kdumpctl_lock() -> None:
    """Line 48 closes the lock before line 51's ``kdumpctl reload``: an instance started after that
    takes the lock while the reload runs, and its own reload waits for kdumpctl's lock."""
    m, svc = _service(kexec_unload=0.5, kexec_file_load=2.0)
    thr = Throttler(svc, lambda: None)
    thr.run()  # reload 1.0 -> 3.5
    m.clock.call_at(1.2, thr.run)  # takes the lock again at once; reload asked at 2.2, runs 3.5 -> 6.0
    m.clock.call_at(1.5, thr.run)  # lock held: exits
    m.clock.run_until_idle()
    assert (thr.started, thr.exited, svc.reloads) == (2, 1, 2)
    assert svc.busy == [(1.0, 3.5), (3.5, 6.0)]


def test_systemd_run_leaves_the_worker_free() -> None:
    """``systemd-run --no-block``: the worker is done after its own time; the throttler sleeps in a
    transient service, so the queue is empty while it does, and its settle returns at once."""
    m = Machine.new(mem_gib=2, kernel="6.1")
    m.clock = Clock(costs=Costs(udev_event=0.005))
    run = ScenarioRun.start(m, "legacy-throttled")
    run.apply({"op": "load"})
    assert run.udev is not None and run.kdump is not None
    m.add_dimm(GIB // 8)  # one block, one event
    m.clock.run_until(0.006)
    assert run.udev.queue_empty_at() is None and run.udev.throttler.started == 1 and run.kdump.reloads == 0
    m.clock.run_until_idle()
    assert run.kdump.busy == [(0.005 + THROTTLE_SLEEP, 0.005 + THROTTLE_SLEEP)]


def test_systemctl_and_systemd_run_are_priced_and_sourced() -> None:
    """The RUN line's steps have costs with sources; priced by a cost file, they hold the worker
    and delay the throttler's start by that much."""
    seed = CostModel.default()
    for step in ("systemctl_is_active", "systemd_run"):
        c = seed.table[step]
        assert c.seconds == 0.0 and "no measurement" in c.source and "udev_event" in c.source
    m = Machine.new(mem_gib=2, kernel="6.1")
    m.clock = Clock(costs=Costs(udev_event=0.001, systemctl_is_active=0.01, systemd_run=0.02))
    run = ScenarioRun.start(m, "legacy-throttled")
    run.apply({"op": "load"})
    assert run.udev is not None and run.kdump is not None
    m.add_dimm(GIB // 8)
    m.clock.run_until(0.001)
    assert run.udev.queue_empty_at() == 0.031 and run.udev.throttler.started == 0
    m.clock.run_until(0.031)
    assert run.udev.queue_empty_at() is None and run.udev.throttler.started == 1
    m.clock.run_until_idle()
    assert run.kdump.busy == [(0.031 + THROTTLE_SLEEP, 0.031 + THROTTLE_SLEEP)]


def test_rules_that_look_at_the_device_are_evaluated_per_event() -> None:
    """The RUN list is kept per (subsystem, action, crash_hotplug) only for rules that look at
    nothing else: a rule matching KERNEL is evaluated for every event."""
    from crash_hotplug.legacy.udevd import UdevDaemon
    from crash_hotplug.machine.uevent import Uevent

    m, svc = _service()
    rf = parse_rules('SUBSYSTEM=="memory", KERNEL=="memory1", RUN+="/usr/bin/kdumpctl reload"\n', "t.rules")
    udev = UdevDaemon(svc, [rf], lambda: None).attach()
    for name in ("memory0", "memory1", "memory2"):
        m.uevents.send(Uevent("online", "memory", name))
    m.clock.run_until_idle()
    assert udev.events == 3 and udev.reload_requests == 1 and svc.reloads == 1


def test_cpu_storm_settle_waits_for_the_event_finishing_as_it_wakes() -> None:
    """``simulate cpu --add 6 --remove 3``: an add/remove event every 0.5 s, so each holder's settle
    (1 s after its event's worker finished) wakes at the instant the worker of the event 1 s later
    finishes. The queue holds that event until its worker is done, RUN line included, so its
    throttler starts first and finds the lock held: 3 reloads for the 9 events (at 1.0006, 2.5006,
    4.0052 s), where counting the queue empty at that instant gave 4."""
    from crash_hotplug.sim.engine import simulate
    from crash_hotplug.sim.plans import cpu_plan

    tl = simulate("legacy-throttled", cpu_plan(6, 3))
    assert [round(s, 4) for s, _ in tl.reload_busy] == [1.0006, 2.5006, 4.0052]
