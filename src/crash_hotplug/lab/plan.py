"""Scenario plans: the ``plan`` object of the vectors' ``scenario.json``, read from a data file.

A plan is ``{"name", "kernel"?, "machine"?: {...}, "steps": [{"op": ...}, ...]}``. Each op and its
arguments are checked here, before any VM starts, so a bad file is one clear ``ScenarioError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from crash_hotplug.lab.errors import ScenarioError

__all__ = ["OPS", "Plan", "load_plan", "shipped_scenarios"]

# op -> (required args with types, optional args with types)
OPS: dict[str, tuple[dict[str, type | tuple[type, ...]], dict[str, type | tuple[type, ...]]]] = {
    "load": ({}, {"syscall": str, "hotplug": bool, "debug_load": bool}),
    "unload": ({}, {}),
    "add_dimm": ({"idx": int, "size_mib": int}, {}),
    "del_dimm": ({"idx": int}, {}),
    "add_cpus": ({"n": int}, {"online": bool}),
    "online_cpu": ({"cpu": int}, {}),
    "offline_cpu": ({"cpu": int}, {}),
    "del_cpu": ({"cpu": int}, {}),
    "online_block": ({"block": int}, {}),
    "offline_block": ({"block": int}, {}),
    "storm": ({}, {"blocks": int, "reload_runs": int, "dimm_mib": int, "toggles": int, "cpu_toggles": int}),
    "panic": ({}, {"cpu": (int, str), "dump": (str, list)}),
}
SYSCALLS = ("kexec_file_load", "kexec_load")
#: the panic step's ``dump``: makedumpfile in the capture kernel writes kdump-compressed (``-l``)
#: or flattened (``-F``) output, which comes back into the run directory
DUMP_MODES = ("-l", "-F")


@dataclass(frozen=True)
class Plan:
    """A validated plan; ``steps`` keep the file's dicts (they are written back to scenario.json)."""

    name: str
    kernel: str | None
    machine: dict[str, Any] = field(default_factory=dict)
    steps: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kernel": self.kernel, "machine": self.machine, "steps": list(self.steps)}


def _check_step(i: int, step: Any) -> dict[str, Any]:
    if not isinstance(step, dict) or "op" not in step:
        raise ScenarioError(f"step {i}: expected an object with an 'op', got {step!r}")
    op = step["op"]
    if op not in OPS:
        raise ScenarioError(f"step {i}: unknown op {op!r} (known: {', '.join(OPS)})")
    required, optional = OPS[op]
    for key, typ in required.items():
        if key not in step:
            raise ScenarioError(f"step {i} ({op}): missing {key!r}")
        if not isinstance(step[key], typ) or (isinstance(step[key], bool) and typ is int):
            raise ScenarioError(f"step {i} ({op}): {key!r} must be {getattr(typ, '__name__', typ)}")
    for key, value in step.items():
        if key == "op" or key in required:
            continue
        if key not in optional:
            raise ScenarioError(f"step {i} ({op}): unknown argument {key!r}")
        if not isinstance(value, optional[key]):
            raise ScenarioError(f"step {i} ({op}): bad value {value!r} for {key!r}")
    if op == "load" and step.get("syscall", "kexec_file_load") not in SYSCALLS:
        raise ScenarioError(f"step {i} (load): syscall must be one of {SYSCALLS}")
    if op == "add_dimm" and (step["size_mib"] <= 0 or step["size_mib"] % 128):
        raise ScenarioError(f"step {i} (add_dimm): size_mib must be a positive multiple of 128")
    if op == "panic" and isinstance(step.get("cpu"), str) and step["cpu"] != "last_online":
        raise ScenarioError(f"step {i} (panic): cpu must be a number or 'last_online'")
    if op == "panic" and "dump" in step:
        modes = [step["dump"]] if isinstance(step["dump"], str) else step["dump"]
        if not modes or any(m not in DUMP_MODES for m in modes):
            raise ScenarioError(f"step {i} (panic): dump must be one or more of {', '.join(DUMP_MODES)}")
    return dict(step)


def plan_from_json(data: Any, origin: str = "<plan>") -> Plan:
    """Validate a plan object (or a whole ``scenario.json`` holding one under ``plan``)."""
    if isinstance(data, dict) and isinstance(data.get("plan"), dict):
        data = data["plan"]
    if not isinstance(data, dict):
        raise ScenarioError(f"{origin}: a plan must be a JSON object")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ScenarioError(f"{origin}: 'steps' must be a non-empty list")
    checked = tuple(_check_step(i, s) for i, s in enumerate(steps))
    ops = [s["op"] for s in checked]
    if "panic" in ops and ops.index("panic") != len(ops) - 1:
        raise ScenarioError(f"{origin}: 'panic' must be the last step")
    machine = data.get("machine", {})
    if not isinstance(machine, dict):
        raise ScenarioError(f"{origin}: 'machine' must be an object")
    kernel = data.get("kernel")
    return Plan(str(data.get("name", Path(origin).stem)), str(kernel) if kernel else None, machine, checked)


def shipped_scenarios() -> dict[str, Path]:
    """The scenario files shipped in ``crash_hotplug/data/lab/scenarios``, by name."""
    base = resources.files("crash_hotplug").joinpath("data/lab/scenarios")
    return {Path(p.name).stem: Path(str(p)) for p in base.iterdir() if p.name.endswith(".json")}


def load_plan(name_or_path: str) -> Plan:
    """A shipped scenario by name (``base``, ``short``, ...) or a JSON file by path."""
    shipped = shipped_scenarios()
    path = shipped.get(name_or_path, Path(name_or_path))
    if not path.is_file():
        raise ScenarioError(
            f"no scenario {name_or_path!r}: not a shipped one ({', '.join(sorted(shipped))}) nor a file"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{path}: not valid JSON: {exc}") from exc
    return plan_from_json(data, str(path))
