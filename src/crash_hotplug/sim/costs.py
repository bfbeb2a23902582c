"""What each step costs, and where the number comes from: cost profiles selected by name.

``seed`` (the default)
    The system the seed measured: a RHEL 7 guest resized from 32 to 512 GiB (3840 blocks of 128 MiB)
    in about 144 s, with kdumpctl and kexec busy for about 389 s (Oracle's write-up of the test the
    RFC cites). Its legacy path is RHEL 7's: kexec-tools 2.0.15-33.el7's ``98-kexec.rules`` runs
    ``systemd-run kdumpctl reload`` for every event, kdumpctl instances queue on its lock, and a
    reload is ``kexec -p -u`` then ``kexec -p`` (``kexec_load``; ``-s`` only under Secure Boot). One
    reload therefore costs 389 s / 3840 = 0.101 s on that host; every other step is the QEMU TCG
    lab's measurement scaled by the same factor (the ratios between steps carry, the seconds do not).
    Derived values say so in their source.
``lab-<kernel>``
    A real kernel's ``timing.json`` as measured in the lab: ``../shared/vectors/*/timing.json``,
    ``../shared/timing/*-timing.json``, the lab's own runs (``lab-runs/*/timing.json``) and any file
    or directory in ``$CRASH_HOTPLUG_TIMING`` (``:``-separated). ``lab-6.12.43`` is built in.
``legacy-throttled`` (every profile)
    kdump-utils' ``98-kexec.rules`` as it ships it (``data/udev``, origin in its README): its RUN line
    costs ``udev_event`` plus ``systemctl_is_active`` and ``systemd_run``, which no measurement here
    prices (0 s, counted in ``udev_event``; RHEL 7's line runs the same two programs).
``--costs FILE``
    A JSON object of step names (``{"name": seconds}`` or ``{"name": {"seconds": s, "source": "..."}}``)
    over the built-in ``lab-6.12.43`` numbers, or a ``timing.json``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.fileio import read_text_limited

__all__ = [
    "DEFAULT_COSTS",
    "DEFAULT_PROFILE",
    "SEED_BUSY_S",
    "SEED_EVENTS",
    "SEED_SCALING_S",
    "Cost",
    "CostModel",
    "CostModelError",
    "LegacyPath",
    "available_profiles",
    "load_costs",
]

_TCG = "vectors 6.12.43 timing.json (Debian 6.12.43 under QEMU TCG)"
#: the seed's measurement (Oracle, "Crash hotplug: kernel handling of CPU and memory hot un/plug",
#: January 2024: RHEL 7 guest, QEMU QMP scaling 32 GiB -> 512 GiB with virtual DIMMs)
SEED_EVENTS = 3840
SEED_SCALING_S = 144.0
SEED_BUSY_S = 389.0
_SEED = ("seed: RHEL 7 guest, 32 -> 512 GiB (3840 blocks) in about 144 s of scaling, kdumpctl and kexec "
         "busy about 389 s (Oracle blog, January 2024, the measurement the RFC cites)")
_UNMEASURED_SYSTEMD = (
    "no measurement: this machine runs no systemd and no published timing was found; counted in udev_event "
    "(the RUN line's process), for RHEL 7's line and kdump-utils' alike, both of which run it; a value well under "
    "the 37.5 ms between blocks only shifts each reload by itself; a --costs file can price it")
#: largest cost a file may give a step (a day): beyond it a storm never ends in any useful sense
MAX_COST_S = 86400.0
#: at most this many bytes of a cost file or timing.json are read
MAX_COST_FILE = 4 << 20

DEFAULT_PROFILE = "seed"


@dataclass(frozen=True)
class Cost:
    seconds: float
    unit: str
    source: str
    #: computed from other measurements rather than measured itself
    derived: bool = False


@dataclass(frozen=True)
class LegacyPath:
    """How a host without in-kernel updates reloads kdump: the udev rule it ships and the syscall
    its reload uses."""

    rules: str
    syscall: str
    origin: str


#: today's kdump-utils: its rule file as it ships it, the throttler, ``kexec -s -p``
THROTTLED = LegacyPath(
    "kdump-utils-98-kexec.rules", "kexec_file_load",
    "kdump-utils v1.0.61 98-kexec.rules (x86_64, unchanged; rhkdump/kdump-utils, text as of commit 659e0aa): "
    "unless crash_hotplug reads 1, systemctl is-active kdump.service, then systemd-run --no-block "
    "kdump-udev-throttler (1 s sleep, udevadm settle --timeout 3, one kdumpctl reload per burst); "
    "kdumpctl reload: kexec -p -u, kexec -s -p (KEXEC_ARGS=-s on x86_64); on ppc64le its 98-kexec.rules.ppc64")
#: the rule from before crash hotplug, reloading with ``kexec -s -p``
ALWAYS = LegacyPath("98-kdump-reload-always.rules", "kexec_file_load",
                    "every CPU add/remove and memory online/offline runs kdumpctl reload (kexec -s -p)")
#: RHEL 7 as the seed measured it
RHEL7 = LegacyPath("rhel7-98-kexec.rules", "kexec_load",
                   "RHEL 7 kexec-tools 2.0.15-33.el7 98-kexec.rules: systemd-run kdumpctl reload per event; "
                   "kdumpctl reload = kexec -p -u, kexec -p (kexec_load)")


DEFAULT_COSTS: dict[str, Cost] = {
    "resize_block_interval": Cost(
        SEED_SCALING_S / SEED_EVENTS, "per 128 MiB block the hypervisor adds", f"derived: 144 s / 3840 blocks; {_SEED}",
        derived=True),
    "memory_block_online": Cost(0.00175436, "per block onlined", f"{_TCG}: memoryN/state online write(), median"),
    "memory_block_offline": Cost(0.00396987, "per block offlined", f"{_TCG}: memoryN/state offline write(), median"),
    "cpu_online": Cost(0.05139197, "per CPU brought up", f"{_TCG}: cpuN/online write() of 1, median"),
    "cpu_offline": Cost(0.03855897, "per CPU taken down", f"{_TCG}: cpuN/online write() of 0, median"),
    "crash_hotplug_event": Cost(0.000642, "per in-kernel header update",
                                f"{_TCG}: 'crash hp: hp_action 3' to 'updated elfcorehdr', median"),
    "elfcorehdr_build_phdr": Cost(0.0, "per program header", "included in crash_hotplug_event"),
    "elfcorehdr_copy_page": Cost(1.0e-6, "per 4 KiB page copied",
                                 "derived: a 4 KiB memcpy at 4 GB/s (the window the image is hidden)", derived=True),
    "purgatory_redigest_byte": Cost(4.7e-10, "per byte re-digested",
                                    "measured on this machine: hashlib.sha256 at 2.1 GB/s (bench_elfcorehdr)"),
    "kexec_lock_lookup": Cost(1.0e-6, "per lock/look-up/flip", "derived: an atomic and a few loads", derived=True),
    "kexec_file_load": Cost(0.76311478, "per load", f"{_TCG}: kexec -s -p, median of 5"),
    "kexec_load": Cost(0.81674122, "per load", f"{_TCG}: kexec -p, median of 5"),
    "kexec_unload": Cost(0.02714643, "per unload", f"{_TCG}: kexec -p -u, median of 5"),
    "udev_event": Cost(0.0006, "per uevent handled",
                       "measured on this machine: fork+exec of /bin/sh -c true, median of 50 (a RUN program); "
                       "stands for the whole RUN line, systemctl is-active and systemd-run included"),
    "systemctl_is_active": Cost(0.0, "per systemctl is-active in a RUN line", _UNMEASURED_SYSTEMD),
    "systemd_run": Cost(0.0, "per systemd-run starting a transient service", _UNMEASURED_SYSTEMD),
}

#: steps the seed profile scales from the TCG lab by the seed's reload over the lab's reload
_SCALED = ("memory_block_online", "memory_block_offline", "cpu_online", "cpu_offline", "crash_hotplug_event",
           "kexec_file_load", "kexec_load", "kexec_unload")


class CostModelError(CrashHotplugError):
    """A calibration file or profile that cannot be used."""


@dataclass
class CostModel:
    """The price of every step (:class:`~crash_hotplug.machine.clock.StepCosts`), the profile it
    came from, and the legacy path that profile's host uses."""

    table: dict[str, Cost]
    profile: str = "lab-6.12.43"
    description: str = f"{_TCG}, with the seed's scaling pace"
    legacy: LegacyPath = ALWAYS
    throttled: LegacyPath = THROTTLED
    _seconds: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._seconds = {k: c.seconds for k, c in self.table.items()}

    @classmethod
    def default(cls) -> CostModel:
        """The default profile (``seed``)."""
        return seed_profile()

    @classmethod
    def lab_6_12_43(cls) -> CostModel:
        return cls(dict(DEFAULT_COSTS))

    def cost(self, what: str, units: float = 1.0) -> float:
        try:
            return self._seconds[what] * units
        except KeyError:
            raise CostModelError(f"no cost for step {what!r}") from None

    def recalibrated(self, path: Path, *, profile: str | None = None) -> CostModel:
        """A copy with the values (and sources) from ``path``: a file of step costs, or a lab run's
        (or the vectors') ``timing.json``. The whole file is checked before anything is used."""
        data = _read_json(path)
        if "summary" in data and "methods" in data:
            data = _from_timing_json(data, path)
        table = dict(self.table)
        problems: list[str] = []
        for name, v in data.items():
            if name not in table:
                problems.append(f"unknown step {name!r}")
                continue
            source = f"calibration file {path}"
            if isinstance(v, dict):
                extra = sorted(set(v) - {"seconds", "source"})
                if extra:
                    problems.append(f"{name}: unknown field(s) {', '.join(map(repr, extra))}")
                    continue
                if "source" in v:
                    if not isinstance(v["source"], str):
                        problems.append(f"{name}.source: expected a string")
                        continue
                    source = v["source"]
                v = v.get("seconds")
                field_name = f"{name}.seconds"
            else:
                field_name = name
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                problems.append(f"{field_name}: expected a number of seconds, got {json.dumps(v)[:40]}")
                continue
            seconds = float(v)
            if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_COST_S:
                problems.append(f"{field_name}: {v} is not a cost in seconds (0 to {MAX_COST_S:g})")
                continue
            table[name] = replace(table[name], seconds=seconds, source=source, derived=False)
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            known = f"; known steps: {', '.join(sorted(table))}" if any("unknown step" in p for p in problems) else ""
            raise CostModelError(f"{path}: {'; '.join(problems[:3])}{more}{known}")
        return CostModel(table, profile or f"file {path}", f"{path} over {self.profile}", self.legacy, self.throttled)

    def sources(self) -> list[tuple[str, float, str, str]]:
        return [(k, c.seconds, c.unit, c.source) for k, c in sorted(self.table.items())]

    def summary(self) -> str:
        """One line: the profile and its main numbers (the sources: ``--costs-table``, ``--json``)."""
        reload_s = self.cost("kexec_unload") + self.cost(self.legacy.syscall)
        return (f"costs: {self.profile}: reload {reload_s:.3g} s, update {self.cost('crash_hotplug_event') * 1e3:.3g} "
                f"ms, a block every {self.cost('resize_block_interval') * 1e3:.3g} ms (--costs-table: sources)")

    def to_json(self) -> dict[str, object]:
        return {
            "profile": self.profile,
            "description": self.description,
            "legacy": {"rules": self.legacy.rules, "syscall": self.legacy.syscall, "origin": self.legacy.origin},
            "legacy_throttled": {"rules": self.throttled.rules, "syscall": self.throttled.syscall,
                                 "origin": self.throttled.origin},
            "steps": {k: {"seconds": c.seconds, "unit": c.unit, "source": c.source, "derived": c.derived}
                      for k, c in sorted(self.table.items())},
        }


def seed_profile() -> CostModel:
    """The RHEL 7 host the seed measured (see the module docstring)."""
    base = DEFAULT_COSTS
    tcg_reload = base["kexec_unload"].seconds + base["kexec_load"].seconds
    seed_reload = SEED_BUSY_S / SEED_EVENTS
    factor = seed_reload / tcg_reload
    why = (f"derived: 389 s / 3840 reloads = {seed_reload * 1e3:.1f} ms per kexec -p -u + kexec -p; "
           f"{_TCG} x {factor:.4f} (that reload over the lab's {tcg_reload:.3f} s)")
    table = dict(base)
    for name in _SCALED:
        c = base[name]
        table[name] = Cost(c.seconds * factor, c.unit, f"{why}; lab: {c.source}", derived=True)
    return CostModel(table, "seed", "RHEL 7 as the seed measured it: 144 s of scaling, 389 s of kdumpctl/kexec",
                     RHEL7, THROTTLED)


def _read_json(path: Path) -> dict[str, object]:
    text = read_text_limited(path, MAX_COST_FILE)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CostModelError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise CostModelError(f"{path}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise CostModelError(f"{path}: expected an object of step names, got {type(data).__name__}")
    return data


def _from_timing_json(data: dict[str, object], path: Path) -> dict[str, object]:
    """Step costs from a real-kernel ``timing.json`` (the lab's, or the vectors'); steps it does not
    measure keep their defaults."""
    where = f"{path} ({data.get('kernel', '?')}, {data.get('accel', '?')})"
    out: dict[str, object] = {}

    def get(*keys: str) -> float | None:
        cur: object = data
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        if isinstance(cur, bool) or not isinstance(cur, (int, float)):
            return None
        return float(cur)

    pairs = {
        "crash_hotplug_event": (("summary", "in_kernel_update_median_s", "3"), 1.0),
        "kexec_file_load": (("summary", "full_reload_median_s", "kexec_file_load (-s)", "load"), 1.0),
        "kexec_unload": (("summary", "full_reload_median_s", "kexec_file_load (-s)", "unload"), 1.0),
        "kexec_load": (("summary", "full_reload_median_s", "kexec_load (no -s)", "load"), 1.0),
        "memory_block_online": (("memory_toggle_sysfs_write_ns", "unloaded", "online_write_ns", "median"), 1e-9),
        "memory_block_offline": (("memory_toggle_sysfs_write_ns", "unloaded", "offline_write_ns", "median"), 1e-9),
        "cpu_online": (("cpu_toggle_sysfs_write_ns", "unloaded", "online_write_ns", "median"), 1e-9),
        "cpu_offline": (("cpu_toggle_sysfs_write_ns", "unloaded", "offline_write_ns", "median"), 1e-9),
    }
    for name, (keys, scale) in pairs.items():
        v = get(*keys)
        if v is not None:
            out[name] = {"seconds": v * scale, "source": f"{where}: {'.'.join(keys)}"}
    if not out:
        raise CostModelError(f"{path}: a timing.json without any measurement this model uses")
    return out


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def _timing_files() -> list[Path]:
    """Every ``timing.json`` a ``lab-<kernel>`` profile can come from, in order of precedence."""
    found: list[Path] = []
    for entry in filter(None, os.environ.get("CRASH_HOTPLUG_TIMING", "").split(":")):
        p = Path(entry)
        found += sorted(p.glob("**/*timing.json")) if p.is_dir() else [p]
    shared = _repo_root().parent / "shared"
    found += sorted(shared.glob("vectors/*/timing.json")) + sorted(shared.glob("timing/*-timing.json"))
    for runs in dict.fromkeys([Path.cwd() / "lab-runs", _repo_root() / "lab-runs"]):
        found += sorted(runs.glob("*/timing.json"))
    return [p for p in found if p.is_file()]


def _profile_name(path: Path) -> str:
    """``lab-<kernel>`` from where the file sits: ``timing/<kernel>-timing.json``,
    ``vectors/<kernel>/timing.json``, ``lab-runs/<run>/timing.json`` (``lab-<run>``)."""
    if path.name.endswith("-timing.json"):
        return f"lab-{path.name[: -len('-timing.json')]}"
    return f"lab-{path.parent.name}"


def available_profiles() -> dict[str, Path | None]:
    """Profile name -> the timing.json it is built from (None: built in)."""
    out: dict[str, Path | None] = {"seed": None, "lab-6.12.43": None}
    for p in _timing_files():
        out.setdefault(_profile_name(p), p)
    return out


def load_costs(spec: str | None) -> CostModel:
    """A profile by name (``seed``, ``lab-<kernel>``) or a cost file's path; None is the default."""
    if spec is None or spec == "seed":
        return seed_profile()
    profiles = available_profiles()
    if spec in profiles:
        src = profiles[spec]
        base = CostModel.lab_6_12_43()
        if src is None:
            return base
        model = base.recalibrated(src, profile=spec)
        model.description = f"{src}, the seed's scaling pace, the rest {_TCG}"
        return model
    path = Path(spec)
    if not path.exists() and "/" not in spec and not spec.endswith(".json"):
        raise CostModelError(f"no cost profile {spec!r} and no such file (profiles: {', '.join(profiles)})")
    data = _read_json(path)
    # a timing.json replaces lab measurements: over the lab's numbers; a file of steps over the default
    base = CostModel.lab_6_12_43() if "summary" in data and "methods" in data else seed_profile()
    return base.recalibrated(path)
