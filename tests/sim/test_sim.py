"""The storm simulator: plans, the cost model, metrics, and the timeline's verdicts checked
against the real panic path and audit at every moment the state changed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from crash_hotplug.cli import cli
from crash_hotplug.crash.panic import crash_kexec
from crash_hotplug.crash.vmcore import VmcoreFile
from crash_hotplug.sim.costs import (
    SEED_BUSY_S,
    SEED_EVENTS,
    SEED_SCALING_S,
    CostModel,
    CostModelError,
    available_profiles,
    load_costs,
)
from crash_hotplug.sim.engine import simulate
from crash_hotplug.sim.metrics import measure, wilson
from crash_hotplug.sim.plans import GIB, PlanError, convert_udevadm_monitor, cpu_plan, resize_plan, with_reloads
from crash_hotplug.sim.run import compare

TIMING_6_18 = Path(__file__).resolve().parents[2].parent / "shared" / "timing" / "6.18.15-timing.json"


def test_the_seeds_resize_is_3840_events() -> None:
    plan = resize_plan(32 * GIB, 512 * GIB)
    assert plan.memory_events == 3840
    assert plan.dimms == 240
    assert 140 < plan.last_event < 146, "paced as the seed's operator measured (about 144 s)"
    with pytest.raises(PlanError):
        resize_plan(32 * GIB, 33 * GIB)


def test_wilson_interval() -> None:
    lo, hi = wilson(0, 10_000)
    assert lo == 0 and 0.0003 < hi < 0.0004
    lo, hi = wilson(5000, 10_000)
    assert math.isclose(lo, 0.4902, abs_tol=1e-3) and math.isclose(hi, 0.5098, abs_tol=1e-3)


def test_costs_carry_sources_and_recalibrate(tmp_path: Path) -> None:
    c = CostModel.default()
    assert c.profile == "seed"
    assert all(src for _, _, _, src in c.sources())
    f = tmp_path / "m.json"
    f.write_text(json.dumps({"kexec_file_load": {"seconds": 0.1, "source": "lab run 7"}, "udev_event": 0.002}))
    r = c.recalibrated(f)
    assert r.cost("kexec_file_load") == 0.1 and r.table["kexec_file_load"].source == "lab run 7"
    f.write_text(json.dumps({"no_such_step": 1}))
    with pytest.raises(CostModelError, match="unknown step"):
        c.recalibrated(f)


def test_seed_profile_is_derived_from_the_measurement() -> None:
    """One reload on the seed's host is 389 s / 3840 events; the other steps keep the lab's ratios."""
    seed, lab = load_costs("seed"), load_costs("lab-6.12.43")
    reload_s = seed.cost("kexec_unload") + seed.cost("kexec_load")
    assert math.isclose(reload_s, SEED_BUSY_S / SEED_EVENTS, rel_tol=1e-9)
    ratio = seed.cost("crash_hotplug_event") / reload_s
    assert math.isclose(ratio, lab.cost("crash_hotplug_event") / (lab.cost("kexec_unload") + lab.cost("kexec_load")))
    assert seed.table["kexec_load"].derived and "389 s" in seed.table["kexec_load"].source
    assert seed.legacy.syscall == "kexec_load" and seed.legacy.rules == "rhel7-98-kexec.rules"
    assert lab.cost("kexec_file_load") == 0.76311478 and not lab.table["kexec_file_load"].derived


@pytest.mark.skipif(not TIMING_6_18.is_file(), reason="../shared/timing not present")
def test_lab_profiles_come_from_every_timing_json() -> None:
    names = available_profiles()
    assert {"seed", "lab-6.12.43", "lab-6.18.15", "lab-7.3.4"} <= set(names)
    c = load_costs("lab-6.18.15")
    assert c.cost("crash_hotplug_event") == pytest.approx(0.019241)
    assert "6.18.15-timing.json" in c.table["crash_hotplug_event"].source
    with pytest.raises(CostModelError, match=r"no cost profile 'lab-9\.9'"):
        load_costs("lab-9.9")


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "expected an object of step names"),
    ('{"kexec_load": "fast"}', "kexec_load: expected a number of seconds"),
    ('{"kexec_load": {"seconds": -1}}', "kexec_load.seconds: -1 is not a cost"),
    ('{"kexec_load": {"seconds": 1e999}}', "kexec_load.seconds: inf is not a cost"),
    ('{"kexec_load": {"secs": 1}}', "kexec_load: unknown field"),
    ('{"kexec_load": true}', "kexec_load: expected a number"),
    ('{"kexec_load": {"seconds": 1, "source": 3}}', "kexec_load.source: expected a string"),
])
def test_cost_files_are_checked_as_a_whole(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "costs.json"
    f.write_text(text)
    res = CliRunner().invoke(cli, ["simulate", "cpu", "--add", "1", "--remove", "0", "--costs", str(f)])
    assert res.exit_code == 2, res.output
    assert str(f) in res.output and message in res.output and "Traceback" not in res.output


def test_seed_default_reproduces_the_cited_measurement() -> None:
    """The default storm on the default profile against Oracle's write-up of the seed's test:
    scaling 144 s, kdumpctl and kexec busy 389 s, so settled about 245 s after the last event."""
    c = compare(resize_plan(32 * GIB, 512 * GIB), ["legacy"], panics=200)
    m = c.metrics[0]
    assert m.storm_s == pytest.approx(SEED_SCALING_S, rel=0.10)
    assert m.kdump_busy_s == pytest.approx(SEED_BUSY_S, rel=0.25)
    assert m.settle_s is not None and m.settle_s == pytest.approx(SEED_BUSY_S - SEED_SCALING_S, rel=0.25)
    assert m.reloads == 3840 and m.reload_failures == 0


def test_lab_6_12_43_profile_keeps_the_lab_figures() -> None:
    """``--costs lab-6.12.43``: a reload is the TCG lab's kexec -s -p -u + kexec -s -p (0.79 s)."""
    lab = load_costs("lab-6.12.43")
    c = compare(resize_plan(32 * GIB, 64 * GIB, costs=lab), ["legacy", "upstream"], costs=lab, panics=200)
    m = {x.approach: x for x in c.metrics}
    assert m["legacy"].kdump_busy_s == pytest.approx(256 * (0.02714643 + 0.76311478), rel=0.01)
    assert m["upstream"].regenerations == 256 and m["upstream"].waited_events == 0


@pytest.mark.skipif(not TIMING_6_18.is_file(), reason="../shared/timing not present")
def test_updates_slower_than_events_queue_and_meet_a_reload() -> None:
    """6.18.15: an update (19.2 ms) outlasts the gap between blocks (18.8 ms), so operations queue
    behind the update in progress; a `kdumpctl reload` mid-storm holds the kexec lock for its load
    (4.5 s): upstream drops the updates that meet it and ends with a header that misses memory,
    ours defers them and replays them when the lock is released."""
    costs = load_costs("lab-6.18.15")
    plan = with_reloads(resize_plan(32 * GIB, 40 * GIB, costs=costs), [0.5])
    c = compare(plan, ["upstream", "ours"], costs=costs, panics=500)
    tl = {t.approach: t for t in c.timelines}
    m = {x.approach: x for x in c.metrics}
    assert m["upstream"].waited_events > 0
    calm = compare(resize_plan(32 * GIB, 40 * GIB, costs=costs), ["upstream"], costs=costs, panics=10).metrics[0]
    assert calm.storm_s > plan.last_event, "operations waited for updates: the storm took longer than planned"
    assert calm.dropped_events == 0 and calm.settle_s is not None
    assert m["upstream"].dropped_events > 0
    assert m["upstream"].settle_s is None and tl["upstream"].states[-1][1:] == (True, False)
    assert m["ours"].dropped_events == 0 and m["ours"].deferred_events > 0
    assert m["ours"].settle_s is not None and tl["ours"].states[-1][1:] == (True, True)
    assert m["ours"].panics_incomplete == 0


@pytest.mark.parametrize("approach", ["upstream", "ours", "legacy-throttled", "rfc"])
def test_timeline_verdicts_match_real_panics(approach: str) -> None:
    """Replay a small storm to just after each recorded state change and really panic there: the
    dump is lost exactly where the timeline says, and the audit is clean exactly where it says."""
    plan = resize_plan(2 * GIB, 6 * GIB, dimm=GIB, possible=8)
    tl = simulate(approach, plan)
    checked = 0
    moments: list[tuple[float, bool, bool]] = []
    for i, (t, loaded, true) in enumerate(tl.states[1:12], 1):
        moments.append((t + 1e-9, loaded, true))
        after = None
        while (end := max((e for s, e, _ in tl.blocked if s <= (after or t) + 1e-9 < e), default=None)) is not None:
            after = end
        nxt = tl.states[i + 1][0] if i + 1 < len(tl.states) else math.inf
        if after is not None and after + 1e-9 < nxt:
            moments.append((after + 1e-9, loaded, true))  # the same state once the lock is free
    for at, loaded, true in moments:
        t = at
        from crash_hotplug.machine.clock import Clock
        from crash_hotplug.machine.machine import Machine
        from crash_hotplug.scenario import ScenarioRun
        from crash_hotplug.sim.engine import _apply

        m = Machine.new(mem_gib=plan.boot_gib, cpus=plan.cpus, possible=plan.possible, kernel=plan.kernel,
                        maxmem_gib=plan.maxmem_gib, slots=plan.slots)
        m.clock = Clock(costs=CostModel.default())
        run = ScenarioRun.start(m, approach)
        run.load()
        for op in plan.ops:
            m.clock.call_at(op.t, lambda op=op, m=m: _apply(m, op))  # type: ignore[misc]
        m.clock.run_until(at)
        res = crash_kexec(run.kexec, m.cpus.online[-1])
        # updates and reloads hold the kexec lock on the clock: a panic inside one is not dumped
        # (ours takes the lock for a look-up and a flip, accounted as 1 us windows, not held)
        if approach == "ours" and tl.blocked_at(at) is not None:
            continue
        if not loaded or tl.blocked_at(at) is not None:
            assert res.vmcore is None, (t, loaded)
            continue
        assert res.vmcore is not None, (t, res)
        from crash_hotplug.crash.x86_64 import prepare_elf_headers
        from crash_hotplug.elf.core import ElfCore

        vf = VmcoreFile.from_vmcore(res.vmcore, m.mem)
        offline = [m.memory.block_range(i) for i, b in m.memory.blocks.items() if not b.online]
        want = ElfCore.parse(prepare_elf_headers(m.kernel_state(), offline)[0])
        exact = [(s.paddr, s.end) for s in vf.ram_loads] == [
            (p.p_paddr, p.p_paddr + p.p_memsz - 1) for p in want.load_phdrs[1:]
        ]
        assert exact == (true or tl.panic_flush), (approach, t)
        checked += 1
    assert checked >= 1


def test_cpu_storm() -> None:
    c = compare(cpu_plan(4, 2), ["upstream", "legacy", "ours"], panics=500)
    m = {x.approach: x for x in c.metrics}
    assert m["upstream"].regenerations == 0, "x86 skips CPU events: every possible CPU is described"
    assert m["legacy"].reloads == 6
    assert m["ours"].panics_incomplete == 0


def test_convert_and_replay(tmp_path: Path) -> None:
    monitor = "".join(
        f"KERNEL[{100 + i * 0.01:.6f}] {action}      /devices/system/memory/memory{64 + i} (memory)\n"
        f"ACTION={action}\nDEVPATH=/devices/system/memory/memory{64 + i}\nSUBSYSTEM=memory\n\n"
        f"UDEV  [{100 + i * 0.01:.6f}] {action}      /devices/system/memory/memory{64 + i} (memory)\n\n"
        for action in ("add",) for i in range(8)
    ) + "".join(
        f"KERNEL[{101 + i * 0.002:.6f}] online   /devices/system/memory/memory{64 + i} (memory)\n\n" for i in range(8)
    )
    src = tmp_path / "monitor.txt"
    src.write_text(monitor)
    records = convert_udevadm_monitor(monitor)
    assert len(records) == 16 and records[0]["action"] == "add" and records[-1]["kernel"] == "memory71"
    log = tmp_path / "storm.jsonl"
    res = CliRunner().invoke(cli, ["simulate", "convert-udev", str(src), "-o", str(log)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["simulate", "replay", str(log), "--boot", "4G", "--panics", "100", "--json",
                                   "--approach", "upstream", "--approach", "ours"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["approaches"]["upstream"]["regenerations"] == 8
    assert data["approaches"]["ours"]["regenerations"] == 1


def test_cli_json_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "t.png"
    res = CliRunner().invoke(cli, ["simulate", "resize", "--from", "4G", "--to", "12G", "--panics", "200",
                                   "--json", "--plot", str(png)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    for a in ("legacy", "legacy-throttled", "rfc", "upstream", "ours"):
        assert {"settle_s", "unloaded_s", "stale_s", "reloads", "regenerations", "panics_lost",
                "panics_incomplete"} <= set(data["approaches"][a])
    assert all(v["source"] for v in data["costs"].values())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = CliRunner().invoke(cli, ["simulate", "resize", "--from", "4G", "--to", "5G"])
    assert res.exit_code == 2 and "not a whole number" in res.stderr
    assert measure  # the metrics module is what the CLI reports


def test_recalibrate_from_a_real_kernel_timing_json() -> None:
    from tests.conftest import VECTORS

    if VECTORS is None:
        pytest.skip("no vectors")
    c = CostModel.default().recalibrated(VECTORS / "6.12" / "timing.json")
    assert math.isclose(c.cost("crash_hotplug_event"), 0.000692)
    assert math.isclose(c.cost("kexec_file_load"), 0.70586745)
    assert "6.12" in c.table["kexec_file_load"].source
    assert c.cost("resize_block_interval") == CostModel.default().cost("resize_block_interval")


def test_plot_draws_durations_to_scale() -> None:
    """A synthetic timeline with known durations: the plot's lanes hold exactly those widths (a
    0.4 ms window is 0.4 ms wide, not widened), each lane is labelled, instants are markers."""
    from crash_hotplug.sim.engine import Timeline
    from crash_hotplug.sim.plot import build_figure

    tl = Timeline(approach="synthetic", plan="p", events=[1.0, 2.0],
                  states=[(0.0, True, True), (1.0, True, False), (1.5, True, True), (3.0, False, False),
                          (3.25, True, True)],
                  blocked=[(1.0, 1.0004, "lock"), (2.0, 2.002, "lock"), (2.001, 2.003, "hidden")],
                  regenerations=[1.5], reloads=[], lags=[], panic_flush=False, end=4.0)
    m = measure(tl, horizon=5.0, panics=10)
    fig = build_figure([tl], [m], "synthetic")
    ax = fig.axes[0]
    widths: dict[str, list[float]] = {}
    for coll in ax.collections:
        label = coll.get_label()
        if label in ("no image", "stale", "blocked"):
            widths[label] = sorted(float(p.vertices[:, 0].max() - p.vertices[:, 0].min()) for p in coll.get_paths())
    assert widths["stale"] == pytest.approx([0.5])
    assert widths["no image"] == pytest.approx([0.25])
    assert widths["blocked"] == pytest.approx([0.0004, 0.003]), "merged, exact, not widened"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["events / writes", "blocked", "stale", "no image"]
    text = "\n".join(t.get_text() for t in fig.axes[1].texts)
    assert "stale 500 ms" in text and "no image 250 ms" in text and "blocked 3.40 ms" in text, "table format"
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_table_fits_80_columns() -> None:
    """At COLUMNS=80 every row of the results table fits: names whole, nothing wrapped."""
    res = CliRunner().invoke(cli, ["simulate", "resize", "--from", "4G", "--to", "8G", "--panics", "100"],
                             env={"COLUMNS": "80"}, terminal_width=80)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    rows = [ln for ln in lines if ln.split()[:1] and ln.split()[0] in
            ("legacy", "legacy-throttled", "rfc", "upstream", "ours")]
    assert [r.split()[0] for r in rows] == ["legacy", "legacy-throttled", "rfc", "upstream", "ours"]
    width = max(len(r) for r in rows)
    assert width <= 80, rows
    header = lines[lines.index(rows[0]) - 3: lines.index(rows[0])]
    assert all(len(h) <= 80 for h in header) and "settle" in header[0]
    assert all(len(r.split()) == len(rows[0].split()) for r in rows), "no value wrapped onto another line"
    assert "costs: seed" in res.output and "Traceback" not in res.output
    wide = CliRunner().invoke(cli, ["simulate", "resize", "--from", "4G", "--to", "8G", "--panics", "100", "--wide",
                                    "--costs-table"])
    assert wide.exit_code == 0 and "lost [95% CI]" in wide.output and "cost profile seed" in wide.output


@pytest.mark.parametrize("args, message", [
    (["--block", "1"], "--block: 1 bytes is not a memory block size"),
    (["--block", "4K"], "--block: 4096 bytes is not a memory block size"),
    (["--block", "192M"], "not a memory block size x86_64 can have"),
    (["--block", "4G"], "not a memory block size x86_64 can have"),
    (["--to", "99999999999999999999"], "--to: 99999999999999999999 is beyond the 52-bit physical address space"),
    (["--to", "5P"], "beyond the 52-bit physical address space"),
    (["--to", "lots"], "--to: not a size"),
    (["--from", "0"], "--from: 0 MiB is less than the 256 MiB"),
    (["--to", "0"], "--to: 0 MiB is less than the 256 MiB"),
    (["--from", "１G"], "--from: not a size"),
    (["--to", "4096T", "--dimm", "128M"], "at most 300000 are simulated"),
    (["--reload-at", "inf"], "--reload-at"),
])
def test_resize_arguments_are_checked(args: list[str], message: str) -> None:
    res = CliRunner().invoke(cli, ["simulate", "resize", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) <= 4


@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2: not JSON"),
    ("[1]", "line 2: expected an object"),
    ('{"t": 1, "action": "online", "subsystem": "memory"}', "line 2: missing kernel"),
    ('{"t": null, "action": "online", "subsystem": "memory", "kernel": "memory9"}', "line 2: t: expected seconds"),
    ('{"t": 1e999, "action": "online", "subsystem": "memory", "kernel": "memory9"}', "line 2: t: expected seconds"),
    ('{"t": 1, "action": 5, "subsystem": "memory", "kernel": "memory9"}', "line 2: action: expected a non-empty"),
    ('{"t": 1, "action": "online", "subsystem": "memory", "kernel": "cpu9"}', "line 2: kernel: 'cpu9' is not a"),
    ('{"t": 1, "action": "explode", "subsystem": "memory", "kernel": "memory9"}', "line 2: action: 'explode'"),
    ('{"t": 1, "action": "add", "subsystem": "memory", "kernel": "memory999999999"}', "line 2: memory999999999 lies"),
])
def test_replay_lines_are_checked_with_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"t": 0, "action": "add", "subsystem": "memory", "kernel": "memory300"}\n' + line + "\n")
    res = CliRunner().invoke(cli, ["simulate", "replay", str(log), "--panics", "10"])
    assert res.exit_code == 2, res.output
    assert f"{log}: {message}" in res.output and "Traceback" not in res.output


def test_replay_errors_while_running_name_the_line(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text('{"t": 0, "action": "add", "subsystem": "cpu", "kernel": "cpu1"}\n')
    res = CliRunner().invoke(cli, ["simulate", "replay", str(log), "--panics", "10", "--approach", "upstream"])
    assert res.exit_code == 2 and f"{log}: line 1: cpu_add" in res.output, res.output


def test_inputs_that_are_not_regular_files_fail_cleanly(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (["convert-udev", "/dev/zero", "-o", str(tmp_path / "o.jsonl")],
                 ["convert-udev", str(fifo), "-o", str(tmp_path / "o.jsonl")],
                 ["replay", str(fifo)],
                 ["cpu", "--costs", str(fifo)],
                 ["cpu", "--costs", "/dev/zero"]):
        res = CliRunner().invoke(cli, ["simulate", *args])
        assert res.exit_code == 2, (args, res.output)
        assert "expected a regular file" in res.output and "Traceback" not in res.output, (args, res.output)
    assert not (tmp_path / "o.jsonl").exists()


def test_outputs_are_checked_before_any_work(tmp_path: Path) -> None:
    src = tmp_path / "monitor.txt"
    src.write_text("KERNEL[1.000000] online /devices/system/memory/memory64 (memory)\n")
    for args in (["convert-udev", str(src), "-o", "/dev/full"],
                 ["convert-udev", str(src), "-o", str(tmp_path / "missing" / "o.jsonl")],
                 ["resize", "--to", "512G", "--plot", str(tmp_path / "missing" / "p.png")]):
        res = CliRunner().invoke(cli, ["simulate", *args])
        assert res.exit_code == 2, (args, res.output)
        assert "cannot write" in res.output and "Traceback" not in res.output
