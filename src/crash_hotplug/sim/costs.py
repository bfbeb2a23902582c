"""What each step costs, and where the number comes from.

Sources are the seed (the RFC cover letter and the operator report it cites), the real-kernel
measurements in ``../shared/vectors`` (``timing.json``, Debian 6.12.43 under QEMU TCG), and
measurements on the machine this project was built on. A run can be recalibrated from a JSON file
of measurements (``{"name": {"seconds": s, "source": "..."}}``, or just ``{"name": s}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from crash_hotplug.errors import CrashHotplugError

__all__ = ["DEFAULT_COSTS", "Cost", "CostModel", "CostModelError"]

_TCG = "vectors 6.12.43 timing.json (Debian 6.12.43 under QEMU TCG)"


@dataclass(frozen=True)
class Cost:
    seconds: float
    unit: str
    source: str


DEFAULT_COSTS: dict[str, Cost] = {
    "resize_block_interval": Cost(
        144.0 / 3840, "per 128 MiB block the hypervisor adds",
        "seed: a 32 -> 512 GiB resize (3840 blocks) took about 144 s of scaling (operator report cited by the RFC)"),
    "memory_block_online": Cost(0.00175436, "per block onlined", f"{_TCG}: memoryN/state online write(), median"),
    "memory_block_offline": Cost(0.00396987, "per block offlined", f"{_TCG}: memoryN/state offline write(), median"),
    "cpu_online": Cost(0.05139197, "per CPU brought up", f"{_TCG}: cpuN/online write() of 1, median"),
    "cpu_offline": Cost(0.03855897, "per CPU taken down", f"{_TCG}: cpuN/online write() of 0, median"),
    "crash_hotplug_event": Cost(0.000642, "per in-kernel header update",
                                f"{_TCG}: 'crash hp: hp_action 3' to 'updated elfcorehdr', median"),
    "elfcorehdr_build_phdr": Cost(0.0, "per program header", "included in crash_hotplug_event"),
    "elfcorehdr_copy_page": Cost(1.0e-6, "per 4 KiB page copied",
                                 "derived: a 4 KiB memcpy at 4 GB/s (the window the image is hidden)"),
    "purgatory_redigest_byte": Cost(4.7e-10, "per byte re-digested",
                                    "measured on this machine: hashlib.sha256 at 2.1 GB/s (bench_elfcorehdr)"),
    "kexec_lock_lookup": Cost(1.0e-6, "per lock/look-up/flip", "derived: an atomic and a few loads"),
    "kexec_file_load": Cost(0.76311478, "per load", f"{_TCG}: kexec -s -p, median of 5"),
    "kexec_load": Cost(0.81674122, "per load", f"{_TCG}: kexec -p, median of 5"),
    "kexec_unload": Cost(0.02714643, "per unload", f"{_TCG}: kexec -p -u, median of 5"),
    "udev_event": Cost(0.0006, "per uevent handled",
                       "measured on this machine: fork+exec of /bin/sh -c true, median of 50 (a RUN program)"),
}


class CostModelError(CrashHotplugError):
    """A calibration file that cannot be used."""


@dataclass
class CostModel:
    """The price of every step (:class:`~crash_hotplug.machine.clock.StepCosts`)."""

    table: dict[str, Cost]

    @classmethod
    def default(cls) -> CostModel:
        return cls(dict(DEFAULT_COSTS))

    def cost(self, what: str, units: float = 1.0) -> float:
        try:
            return self.table[what].seconds * units
        except KeyError:
            raise CostModelError(f"no cost for step {what!r}") from None

    def recalibrated(self, path: Path) -> CostModel:
        """A copy with the values (and sources) from ``path``: a file of step costs, or a lab run's
        (or the vectors') ``timing.json``."""
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise CostModelError(f"{path}: cannot read: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise CostModelError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict):
            raise CostModelError(f"{path}: expected an object of step names")
        if "summary" in data and "methods" in data:
            data = _from_timing_json(data, path)
        table = dict(self.table)
        for name, v in data.items():
            if name not in table:
                raise CostModelError(f"{path}: unknown step {name!r} (known: {', '.join(sorted(table))})")
            if isinstance(v, (int, float)):
                seconds, source = float(v), f"calibration file {path}"
            elif isinstance(v, dict) and isinstance(v.get("seconds"), (int, float)):
                seconds, source = float(v["seconds"]), str(v.get("source", f"calibration file {path}"))
            else:
                raise CostModelError(f"{path}: {name}: expected seconds or {{\"seconds\": ..., \"source\": ...}}")
            if seconds < 0:
                raise CostModelError(f"{path}: {name}: negative cost {seconds}")
            table[name] = replace(table[name], seconds=seconds, source=source)
        return CostModel(table)

    def sources(self) -> list[tuple[str, float, str, str]]:
        return [(k, c.seconds, c.unit, c.source) for k, c in sorted(self.table.items())]


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
        return float(cur) if isinstance(cur, (int, float)) else None

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
