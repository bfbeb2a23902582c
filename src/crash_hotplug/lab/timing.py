"""Timings on the real kernel: an N-block memory storm handled in the kernel, against a udev-style
unload-then-reload of the crash image per event, side by side in one VM (``timing.json``).

In-kernel: a DIMM of N memory blocks is hot-added with the image loaded; every block online is one
``crash_handle_hotplug_event()`` (``kernel/crash_core.c``), timed from the printk stamps of
``crash hp: hp_action N`` to ``crash hp: updated elfcorehdr``. Settle time is host time from
``device_add`` until every block is online and (where the kernel has crash hotplug) every update
has been printed; the image is never unloaded, so the time with no crash image is zero.

Reload: a second DIMM of N blocks, then, as a udev rule that ignores ``crash_hotplug`` would, one
``kexec -p -u`` + ``kexec -s -p`` per block event, timed in the guest with ``CLOCK_MONOTONIC``
(``labtool now``). Settle time runs from ``device_add`` to the last load; the time with no crash
image is, per event, from the end of the unload to the end of the load.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from crash_hotplug.elf.core import ElfCore
from crash_hotplug.lab.errors import ScenarioError
from crash_hotplug.lab.rundir import last_loaded_elf_headers
from crash_hotplug.lab.scenario import KEXEC_ARGS, blocks_online

if TYPE_CHECKING:
    from crash_hotplug.lab.qemu import VM
    from crash_hotplug.lab.scenario import Runner

__all__ = ["hotplug_update_pairs", "run_storm", "stats"]

_STAMP = re.compile(r"^\[\s*([0-9]+\.[0-9]+)\] (.*)$")

METHODS = {
    "in_kernel_update_s": (
        "dmesg printk timestamps (dynamic debug on crash_core.c): time from 'crash hp: hp_action N' to the "
        "following 'crash hp: updated elfcorehdr', per memory block event; N=3 MEM_ONLINE, N=4 MEM_OFFLINE"
    ),
    "full_reload_ns": (
        "in the guest, CLOCK_MONOTONIC (labtool now) around `kexec -p -u` and around `kexec -s -p` "
        "(kexec_file_load) or `kexec -p` (kexec_load) of the same kernel+initrd; what a udev-rule reload "
        "costs per event"
    ),
    "sysfs_write_ns": (
        "in the guest, CLOCK_MONOTONIC around one write() to memoryN/state (offline / online_movable, once "
        "per block of the in-kernel DIMM) or cpuN/online (0 / 1, cpu_toggles times), with kdump loaded and "
        "unloaded (labtool wr)"
    ),
    "storm": (
        "host wall time from QMP device_add of an N-block pc-dimm until the kernel settled: in_kernel = every "
        "block online and every 'updated elfcorehdr' printed; reload = one unload+load per block event done "
        "(udev-style, crash_hotplug ignored). no_image = time with no crash image loaded"
    ),
}


def stats(values: Sequence[float]) -> dict[str, float | int]:
    """n, min, median, max of a sample (empty: n=0 only)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": min(values),
        "median": round(statistics.median(values), 9),
        "max": max(values),
    }


def hotplug_update_pairs(dmesg: str) -> list[tuple[int, float]]:
    """``(hp_action, seconds)`` from each ``crash hp: hp_action N`` to the next ``updated elfcorehdr``."""
    pairs: list[tuple[int, float]] = []
    pending: tuple[int, float] | None = None
    for line in dmesg.splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        t, msg = float(m[1]), m[2]
        if a := re.match(r"crash hp: hp_action ([0-9]+)", msg):
            pending = (int(a[1]), t)
        elif msg.startswith("crash hp: updated elfcorehdr") and pending is not None:
            pairs.append((pending[0], round(t - pending[1], 6)))
            pending = None
    return pairs


def _after_mark(dmesg: str, mark: str) -> str:
    idx = dmesg.rfind(mark)
    return dmesg[idx:] if idx >= 0 else dmesg


def _header_covers(vm: VM, runner: Runner, addr: int) -> bool | None:
    """Whether the loaded elfcorehdr has a PT_LOAD starting at ``addr`` (read with ``pmemsave``)."""
    loaded = runner.state.loaded
    if loaded is None:
        return None
    dest = runner.out / ".storm-segment.bin"
    with vm.paused():
        seg = vm.pmemsave(loaded.addr, loaded.memsz, dest)
    dest.unlink()
    return any(p.p_paddr == addr for p in ElfCore.parse(seg).load_phdrs)


def _timed_writes(vm: VM, writes: list[tuple[str, str, list[int]]]) -> None:
    """One ``write()`` per (path, value), timed in the guest by ``labtool wr``; ns appended to the list."""
    for path, value, sink in writes:
        _rc, out = vm.console.run(f"labtool wr {path} {value}", timeout=120, check=False)
        parts = out.split()
        if len(parts) == 3 and parts[1] == "0":
            sink.append(int(parts[2]))


def _toggle_blocks(vm: VM, blocks: list[int]) -> dict[str, Any]:
    """``offline`` then ``online_movable`` written once to each block's ``state``."""
    offline: list[int] = []
    online: list[int] = []
    for b in blocks:
        path = f"/sys/devices/system/memory/memory{b}/state"
        _timed_writes(vm, [(path, "offline", offline), (path, "online_movable", online)])
    return {"offline_write_ns": stats(offline), "online_write_ns": stats(online)}


def _toggle_cpu(vm: VM, cpu: int, n: int) -> dict[str, Any]:
    """``0`` then ``1`` written ``n`` times to ``cpuN/online``."""
    offline: list[int] = []
    online: list[int] = []
    path = f"/sys/devices/system/cpu/cpu{cpu}/online"
    for _ in range(n):
        _timed_writes(vm, [(path, "0", offline), (path, "1", online)])
    return {"cpu": cpu, "offline_write_ns": stats(offline), "online_write_ns": stats(online)}


def _reload_runs(vm: VM, n: int, load_cmd: str, wait_blocks: list[int] | None = None) -> list[dict[str, Any]]:
    """n unload+load cycles in one guest command; each as ns of unload and load, and the exit status."""
    wait = ""
    if wait_blocks:
        wait = (
            f"i=0; while ! {{ {blocks_online(wait_blocks)}; }}; do i=$((i+1)); [ $i -ge 2400 ] && break; "
            "sleep 0.05; done; "
        )
    script = (
        f"{wait}for i in $(seq 1 {n}); do a=$(labtool now); kexec -p -u; b=$(labtool now); "
        f"{load_cmd} >/dev/null 2>&1; r=$?; c=$(labtool now); echo \"@@T $a $b $c $r\"; done"
    )
    _rc, out = vm.console.run(script, timeout=120 + 60 * n)
    runs = []
    for m in re.finditer(r"^@@T ([0-9]+) ([0-9]+) ([0-9]+) ([0-9]+)$", out, re.M):
        a, b, c, r = (int(x) for x in m.groups())
        runs.append({"unload_ns": b - a, "load_ns": c - b, "rc": r})
    if len(runs) != n or any(r["rc"] for r in runs):
        raise ScenarioError(f"reload timing: expected {n} good unload+load cycles, got {runs}")
    return runs


def run_storm(vm: VM, runner: Runner, step: dict[str, Any]) -> dict[str, Any]:
    """Measure the storm and the reload costs; writes ``timing.json`` in the run directory."""
    con = vm.console
    if runner.state.loaded is None or runner.state.loaded.syscall != "kexec_file_load":
        raise ScenarioError("storm: load kdump with kexec_file_load first (a 'load' step)")
    n_blocks = int(step.get("blocks", 8))
    runs = int(step.get("reload_runs", 3))
    bs = runner.state.block_size
    size = int(step.get("dimm_mib", 0)) << 20 or n_blocks * bs
    n_blocks = size // bs
    rc, hp = con.run("cat /sys/devices/system/memory/crash_hotplug", check=False)
    crash_hotplug = rc == 0 and hp.strip() == "1"
    base_idx = 100 + 2 * len([k for k in runner.state.dimms if k >= 100])

    # In-kernel update: the image stays loaded.
    con.run("echo lab-storm-in-kernel > /dev/kmsg")
    _rc, before = con.run("dmesg | grep -c 'crash hp: updated elfcorehdr'", check=False)
    n_before = int(before.strip() or 0)
    t0 = time.monotonic()
    blocks_a = runner.hot_add_dimm(vm, base_idx, size)
    cond = blocks_online(blocks_a)
    if crash_hotplug:
        cond += f" && [ $(dmesg | grep -c 'crash hp: updated elfcorehdr') -ge {n_before + len(blocks_a)} ]"
    if not runner.wait_guest(vm, cond, 300):
        raise ScenarioError(f"storm: dimm{base_idx} did not settle within 300 s")
    settle_in_kernel = time.monotonic() - t0
    covers = _header_covers(vm, runner, runner.state.dimms[base_idx]["addr"])
    _rc, after = con.run("dmesg | grep -c 'crash hp: updated elfcorehdr'", check=False)
    updates_for_add = int(after.strip() or 0) - n_before
    # Offline/online toggles of those blocks through sysfs: in-kernel updates for hp_action 4 and 3,
    # and the write() latency the user sees, with the image loaded.
    toggle_blocks = blocks_a[: int(step.get("toggles", len(blocks_a)))]
    cpu_toggles = int(step.get("cpu_toggles", 3))
    mem_toggles = {"loaded": _toggle_blocks(vm, toggle_blocks)}
    cpu_toggle = {"loaded": _toggle_cpu(vm, 1, cpu_toggles)}
    _rc, dmesg = con.run("dmesg")
    pairs = hotplug_update_pairs(_after_mark(dmesg, "lab-storm-in-kernel"))

    # udev-style: one unload + reload per block event of a second DIMM.
    t1 = time.monotonic()
    blocks_b = runner.hot_add_dimm(vm, base_idx + 1, size)
    per_event = _reload_runs(vm, len(blocks_b), f"kexec -s -p {KEXEC_ARGS}", wait_blocks=blocks_b)
    settle_reload = time.monotonic() - t1

    # Reload cost of each syscall, as the vectors' full_reload.
    full: list[dict[str, Any]] = []
    for mode, cmd in (
        ("kexec_file_load (-s)", f"kexec -s -p {KEXEC_ARGS}"),
        ("kexec_load (no -s)", f"kexec -p {KEXEC_ARGS}"),
    ):
        full.extend({"mode": mode, **r} for r in _reload_runs(vm, runs, cmd))
    # The same toggles with no crash image loaded: the hotplug cost without any kdump work.
    con.run("kexec -p -u", timeout=60)
    mem_toggles["unloaded"] = _toggle_blocks(vm, toggle_blocks)
    cpu_toggle["unloaded"] = _toggle_cpu(vm, 1, cpu_toggles)
    # Leave a kexec_file_load image loaded, and follow where its header went.
    con.run(f"kexec -s -p -d {KEXEC_ARGS} >/dev/null 2>&1", timeout=120)
    _rc, tail = con.run("dmesg | grep 'Loaded ELF headers at' | tail -n 1")
    found = last_loaded_elf_headers(tail)
    if found is not None:
        runner.set_loaded("kexec_file_load", found.addr, found.memsz)

    by_action: dict[str, dict[str, float | int]] = {}
    for action in sorted({a for a, _ in pairs}):
        by_action[str(action)] = stats([s for a, s in pairs if a == action])
    stats_ns: dict[str, dict[str, Any]] = {}
    for mode in ("kexec_file_load (-s)", "kexec_load (no -s)"):
        rows = [r for r in full if r["mode"] == mode]
        stats_ns[mode] = {
            "unload_ns": stats([r["unload_ns"] for r in rows]),
            "load_ns": stats([r["load_ns"] for r in rows]),
        }
    no_image = [r["load_ns"] / 1e9 for r in per_event]
    storm: dict[str, Any] = {
        "blocks": n_blocks,
        "block_size": bs,
        "kernel_crash_hotplug": crash_hotplug,
        "in_kernel": {
            "dimm": f"dimm{base_idx}",
            "settle_s": round(settle_in_kernel, 4),
            "no_image_s": 0.0,
            "updates_seen": updates_for_add,
            "header_covers_dimm": covers,
        },
        "reload": {
            "dimm": f"dimm{base_idx + 1}",
            "settle_s": round(settle_reload, 4),
            "no_image_s_total": round(sum(no_image), 6),
            "no_image_s_per_event": stats(no_image),
            "per_event_ns": per_event,
        },
    }
    timing = {
        "kernel": runner.kernel_key,
        "kernel_version": runner.scenario.get("kernel_version"),
        "accel": runner.scenario.get("accel"),
        "note": f"{str(runner.scenario.get('accel', '')).upper()} timings; absolute numbers depend on the accelerator",
        "methods": METHODS,
        "summary": {
            "in_kernel_update_median_s": {k: v["median"] for k, v in by_action.items() if "median" in v},
            "full_reload_median_s": {
                mode: {
                    "unload": float(s["unload_ns"].get("median", 0)) / 1e9,
                    "load": float(s["load_ns"].get("median", 0)) / 1e9,
                }
                for mode, s in stats_ns.items()
            },
            "storm_settle_s": {"in_kernel": storm["in_kernel"]["settle_s"], "reload": storm["reload"]["settle_s"]},
            "storm_no_image_s": {"in_kernel": 0.0, "reload": storm["reload"]["no_image_s_total"]},
        },
        "in_kernel_update_s": {"pairs": [list(p) for p in pairs], "by_action": by_action},
        "full_reload": {"stats_ns": stats_ns, "runs": full},
        "memory_toggle_sysfs_write_ns": mem_toggles,
        "cpu_toggle_sysfs_write_ns": cpu_toggle,
        "storm": storm,
    }
    (runner.out / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    runner.report(
        f"storm of {n_blocks} blocks: in-kernel settle {settle_in_kernel:.2f} s (no image 0 s), "
        f"reload settle {settle_reload:.2f} s (no image {sum(no_image):.2f} s)"
    )
    return timing
