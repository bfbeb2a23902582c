"""Scripted hotplug scenarios on the model: a machine, a kdump load, hotplug steps, a panic, the
vmcore and its audit, under a chosen design.

Designs: ``upstream`` and ``rfc`` (:mod:`crash_hotplug.crash.hotplug`); ``none`` -- a kernel
without crash hotplug and no udev reload, the header staying as it was loaded; ``legacy`` -- no
kernel handler, udev reloading kdump on every event (``kdumpctl reload``); ``legacy-throttled`` --
the same through the kdump-utils throttler and its crash-hotplug-aware rule.

Steps are JSON-able dicts in the vectors' ``plan`` form: ``{"op": "load"}``,
``{"op": "add_dimm", "size_mib": 1024}``, ``{"op": "del_dimm", "idx": 1}``,
``{"op": "add_cpus", "n": 2}``, ``{"op": "offline_cpu", "cpu": 1}``, ``{"op": "online_cpu", "cpu": 1}``,
``{"op": "remove_cpu", "cpu": 3}``, ``{"op": "panic", "cpu": "last_online"}``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crash_hotplug.audit import AuditReport, audit, audit_vmcore, read_machine_at_panic
from crash_hotplug.crash.hotplug import DESIGNS, CrashHotplug
from crash_hotplug.crash.ours import OursCrashHotplug, OursOptions
from crash_hotplug.crash.panic import PanicResult, crash_kexec, write_panic_artifacts
from crash_hotplug.crash.vmcore import VmcoreFile
from crash_hotplug.elf.structs import Elf64_Ehdr
from crash_hotplug.errors import CrashHotplugError, InputFileError
from crash_hotplug.fileio import TEXT_FILE_LIMIT, read_text_limited
from crash_hotplug.kexec.kexec_core import Kexec
from crash_hotplug.kexec.kexec_file import KexecPayload, kexec_file_load
from crash_hotplug.kexec.kexec_load import kexec_tools_load
from crash_hotplug.kexec.kimage import Kimage, kimage_find_elfcorehdr
from crash_hotplug.legacy.kdumpctl import KdumpService
from crash_hotplug.legacy.udevd import RULES_ALWAYS_RELOAD, RULES_CRASH_HOTPLUG_AWARE, UdevDaemon, bundled_rules
from crash_hotplug.machine.cpumask import NR_CPUS_MAX
from crash_hotplug.machine.machine import MIB, Machine

__all__ = [
    "BASE_STEPS",
    "SCENARIO_DESIGNS",
    "SCRIPTED_STEPS",
    "STEP_SCHEMA",
    "InjectedPanic",
    "ScenarioError",
    "ScenarioRun",
    "check_steps",
    "inject_panics",
    "load_steps",
    "run_scenario",
]

SCENARIO_DESIGNS = ("upstream", "rfc", "ours", "none", "legacy", "legacy-throttled")

#: the issue's scripted run: 4 GiB, 2 CPUs; two 1 GiB DIMMs, two CPUs, one offlined, a DIMM
#: removed, a 2 GiB DIMM added, then a panic
SCRIPTED_STEPS: tuple[dict[str, Any], ...] = (
    {"op": "load"},
    {"op": "add_dimm", "size_mib": 1024},
    {"op": "add_dimm", "size_mib": 1024},
    {"op": "add_cpus", "n": 2},
    {"op": "offline_cpu", "cpu": 1},
    {"op": "del_dimm", "idx": 1},
    {"op": "add_dimm", "size_mib": 2048},
    {"op": "panic", "cpu": "last_online"},
)
#: the ``base`` scenario of the real-kernel vectors
BASE_STEPS: tuple[dict[str, Any], ...] = (
    {"op": "load"},
    {"op": "add_dimm", "idx": 1, "size_mib": 1024},
    {"op": "add_cpus", "n": 2},
    {"op": "offline_cpu", "cpu": 1},
    {"op": "del_dimm", "idx": 1},
    {"op": "add_dimm", "idx": 2, "size_mib": 2048},
    {"op": "panic", "cpu": "last_online"},
)


class ScenarioError(CrashHotplugError):
    """A step that cannot run (bad op, unknown DIMM, a refusal by the kernel)."""


@dataclass
class ScenarioRun:
    """A scenario in progress: the machine, its kexec state and handler, what happened so far."""

    machine: Machine
    kexec: Kexec
    design: str
    syscall: str = "kexec_file_load"
    hotplug: CrashHotplug | None = None
    image: Kimage | None = None
    panic: PanicResult | None = None
    log: list[str] = field(default_factory=list)
    dimms: dict[int, str] = field(default_factory=dict)
    kdump: KdumpService | None = None
    udev: UdevDaemon | None = None

    @classmethod
    def start(cls, machine: Machine, design: str = "upstream", syscall: str = "kexec_file_load",
              options: OursOptions | None = None, rules: str | None = None) -> ScenarioRun:
        """``rules`` names the bundled udev rule file a legacy design uses (default: the
        always-reload rule for ``legacy``, kdump-utils' for ``legacy-throttled``)."""
        if design not in SCENARIO_DESIGNS:
            raise ScenarioError(f"unknown design {design!r} ({', '.join(SCENARIO_DESIGNS)})")
        if syscall not in ("kexec_file_load", "kexec_load"):
            raise ScenarioError(f"unknown syscall {syscall!r} (kexec_file_load, kexec_load)")
        kexec = Kexec(machine)
        run = cls(machine, kexec, design, syscall)
        if design == "ours":
            run.hotplug = OursCrashHotplug(kexec, options=options or OursOptions()).crash_hotplug_init()
        elif design in DESIGNS:
            run.hotplug = CrashHotplug(kexec, design=DESIGNS[design]).crash_hotplug_init()
        if design.startswith("legacy"):
            run.kdump = KdumpService(kexec, syscall)
            throttled = design == "legacy-throttled"
            chosen = rules or (RULES_CRASH_HOTPLUG_AWARE if throttled else RULES_ALWAYS_RELOAD)
            run.udev = UdevDaemon(run.kdump, bundled_rules(chosen), run.crash_hotplug_attr, throttle=throttled).attach()
        return run

    def crash_hotplug_attr(self) -> int | None:
        """What ``cpu/crash_hotplug`` reads now; None (the file absent) when no kernel handler runs."""
        if not self.machine.config.crash_hotplug or self.hotplug is None:
            return None
        return self.hotplug.crash_check_hotplug_support()

    # -- steps -------------------------------------------------------------------------------
    def load(self) -> Kimage:
        """``kexec -s -p`` (kexec_file_load) or ``kexec -p --hotplug`` (kexec_load)."""
        image = self.kdump.start() if self.kdump is not None else self.load_image()
        self.image = image
        return image

    def load_image(self) -> Kimage:
        """The design's own load syscall, without kdumpctl."""
        if self.syscall == "kexec_file_load":
            loaded = kexec_file_load(self.kexec, KexecPayload.synthetic(), elfcorehdr_in_digest=self.design == "rfc",
                                     elfcorehdr_slots=2 if self.design == "ours" else 1)
            assert loaded is not None
            image = loaded
        else:
            image = kexec_tools_load(self.kexec, KexecPayload.synthetic(),
                                     hotplug=self.design in DESIGNS or self.design == "ours")
        return image

    @property
    def current_image(self) -> Kimage | None:
        """The image loaded now (a legacy reload replaces it)."""
        return self.kexec.kexec_crash_image

    def header(self) -> bytes:
        """The elfcorehdr in memory now: the page-rounded header the segment starts with."""
        image = self.current_image or self.image
        if image is None:
            raise ScenarioError("no kdump image loaded")
        index = image.elfcorehdr_index
        if index < 0:
            index = kimage_find_elfcorehdr(image, self.machine.mem)
        addr = image.elf_load_addr if index < 0 else image.segments[index].mem
        ehdr = Elf64_Ehdr.unpack(self.machine.mem.read(addr, 64))
        used = 64 + 56 * ehdr.e_phnum
        return self.machine.mem.read(addr, -(-used // 4096) * 4096)

    def apply(self, step: Mapping[str, Any]) -> None:
        op = step.get("op")
        handler = _OPS.get(str(op))
        if handler is None:
            raise ScenarioError(f"unknown step op {op!r}")
        try:
            handler(self, step)
        except (KeyError, ValueError, TypeError) as e:
            raise ScenarioError(f"step {dict(step)}: {e}") from None
        if op != "panic":
            # the system settles before the next step (udev, throttler and reloads finish)
            self.machine.clock.run_until_idle()
        self.log.append(str(dict(step)))

    def run(self, steps: Iterable[Mapping[str, Any]], source: str | None = None) -> ScenarioRun:
        """Apply ``steps`` in order; with ``source`` (the step file) a step that cannot run is an
        error naming the file and the step index."""
        for i, s in enumerate(steps):
            if source is None:
                self.apply(s)
                continue
            try:
                self.apply(s)
            except CrashHotplugError as e:
                raise ScenarioError(f"{source}: step {i} ({s.get('op')}): {e}") from None
        return self

    def audit(self, out_dir: Path, *, samples: int = 64, write_vmcore: bool = False) -> AuditReport | None:
        """Write the machine at the panic under ``out_dir/root`` (and, with ``write_vmcore``, the whole
        vmcore as ``out_dir/vmcore``) and audit the vmcore against it; None when the dump was lost.
        Without ``write_vmcore`` the audit reads the vmcore as the capture kernel presents it, from
        the crashed machine's memory."""
        if self.panic is None:
            raise ScenarioError("no panic happened")
        root, path = write_panic_artifacts(self.machine, self.panic, out_dir, vmcore=write_vmcore)
        if self.panic.vmcore is None:
            return None
        if path is not None:
            return audit(path, root, samples=samples)
        vf = VmcoreFile.from_vmcore(self.panic.vmcore, self.machine.mem)
        return audit_vmcore(vf, read_machine_at_panic(root), samples=samples)


def _add_dimm(run: ScenarioRun, step: Mapping[str, Any]) -> None:
    size = int(step.get("size_mib", 1024)) * MIB
    start = step.get("start")
    dimm = run.machine.add_dimm(size, start=None if start is None else int(str(start), 0))
    run.dimms[int(step.get("idx", len(run.dimms) + 1))] = dimm.name


def _del_dimm(run: ScenarioRun, step: Mapping[str, Any]) -> None:
    idx = int(step["idx"])
    if idx not in run.dimms:
        raise ScenarioError(f"no DIMM {idx} was added (have {sorted(run.dimms)})")
    run.machine.remove_dimm(run.dimms.pop(idx))


def _add_cpus(run: ScenarioRun, step: Mapping[str, Any]) -> None:
    m = run.machine
    free = [c for c in m.cpus.possible if c not in m.cpus.present]
    n = int(step.get("n", 1))
    if len(free) < n:
        raise ScenarioError(f"cannot add {n} CPUs: only {len(free)} possible CPUs are not present")
    for cpu in free[:n]:
        m.cpu_hot_add(cpu)
        m.cpu_online(cpu)


def _load(run: ScenarioRun) -> None:
    run.load()


def _panic(run: ScenarioRun, step: Mapping[str, Any]) -> None:
    cpu_spec = step.get("cpu", "last_online")
    online = run.machine.cpus.online
    cpu = online[-1] if cpu_spec == "last_online" else int(cpu_spec)
    if step.get("busy"):
        # a task runs on every online CPU (distinct pids: gdb shows one thread per CPU)
        for c in online:
            run.machine.cpus.cpu(c).counter += 1
    panicking = run.machine.cpus.cpu(cpu)
    if panicking.pid == 0:
        # the panic comes from a task (``echo c > /proc/sysrq-trigger``), not from the idle task:
        # its pid is in the panicking CPU's NT_PRSTATUS; the other CPUs stay in their idle task (pid 0)
        panicking.counter += 1
    run.panic = crash_kexec(run.kexec, cpu)


_OPS: dict[str, Callable[[ScenarioRun, Mapping[str, Any]], None]] = {
    "load": lambda run, step: _load(run),
    "add_dimm": _add_dimm,
    "del_dimm": _del_dimm,
    "add_cpus": _add_cpus,
    "offline_cpu": lambda run, step: run.machine.cpu_offline(int(step["cpu"])),
    "online_cpu": lambda run, step: run.machine.cpu_online(int(step["cpu"])),
    "remove_cpu": lambda run, step: run.machine.cpu_hot_remove(int(step["cpu"])),
    "panic": _panic,
}


class _WorldStopped(Exception):
    """Raised from a step hook once the injected panic has been taken: the update never finishes."""


@dataclass
class InjectedPanic:
    """A panic injected at one write of an update, and what its dump showed."""

    index: int
    step: str
    lost: str | None
    audit_exit: int | None
    findings: list[str]

    @property
    def complete(self) -> bool:
        return self.lost is None and self.audit_exit == 0


def inject_panics(design: str, setup: Iterable[Mapping[str, Any]], update: Mapping[str, Any], out_dir: Path, *,
                  kernel: str = "6.12.43", mem_gib: float = 4, cpus: int = 2, possible: int = 8,
                  options: OursOptions | None = None) -> list[InjectedPanic]:
    """Run ``setup``, then ``update`` once per write it makes, panicking right before that write.

    Each panic is audited against the machine at that moment (the byte check off: the question is
    which CPUs and memory the header describes).
    """
    setup = list(setup)

    def start() -> ScenarioRun:
        return run_scenario(setup, design=design, kernel=kernel, mem_gib=mem_gib, cpus=cpus, possible=possible,
                            options=options)

    def hook_owner(run: ScenarioRun) -> CrashHotplug | KdumpService:
        owner = run.hotplug if run.hotplug is not None else run.kdump
        if owner is None:
            raise ScenarioError(f"design {design!r} makes no updates to inject panics into")
        return owner

    names: list[str] = []
    trial = start()
    hook_owner(trial).on_step = names.append
    trial.apply(update)
    results: list[InjectedPanic] = []
    for k, name in enumerate(names):
        run = start()

        def on_step(step: str, run: ScenarioRun = run, k: int = k, name: str = name, seen: list[int] = [0]) -> None:  # noqa: B006 - one counter per run
            if seen[0] < k:
                seen[0] += 1
                return
            cpu = run.machine.cpus.online[-1]
            res = crash_kexec(run.kexec, cpu)
            root, _ = write_panic_artifacts(run.machine, res, out_dir / f"{design}-{k}", vmcore=False)
            if res.vmcore is None:
                results.append(InjectedPanic(k, name, None if res.lost is None else res.lost.value, None, []))
            else:
                vf = VmcoreFile.from_vmcore(res.vmcore, run.machine.mem)
                rep = audit_vmcore(vf, read_machine_at_panic(root), samples=0)
                results.append(InjectedPanic(k, name, None, rep.exit_status,
                                             [f"{f.kind}: {f.message}" for f in rep.findings]))
            raise _WorldStopped

        hook_owner(run).on_step = on_step
        with contextlib.suppress(_WorldStopped):
            run.apply(update)
    return results


# -- the step-file schema ------------------------------------------------------------------------

#: the largest DIMM a step may add: 16 TiB, far beyond any hotplug slot
MAX_DIMM_MIB = 16 << 20


def _int_field(v: Any, lo: int, hi: int) -> str | None:
    """Why ``v`` is not an integer in ``[lo, hi]`` (JSON true/false, null, 1.5, "2" are not); None if it is."""
    if type(v) is not int:
        return f"must be an integer, found {json.dumps(v)[:40]}"
    if not lo <= v <= hi:
        return f"must be in [{lo}, {hi}], found {v}"
    return None


def _dimm_start(v: Any) -> str | None:
    if isinstance(v, str):
        if not re.fullmatch(r"0x[0-9a-fA-F]{1,16}|[0-9]{1,20}", v):
            return f"must be an address (an integer, or a string in hex with 0x), found {json.dumps(v)[:40]}"
        v = int(v[2:], 16) if v.startswith("0x") else int(v, 10)
    if type(v) is not int:
        return f"must be an address (an integer, or a string in hex with 0x), found {json.dumps(v)[:40]}"
    if v < 0 or v % (128 * MIB) or v >= 1 << 52:
        return f"must be a 128 MiB-aligned address below 2^52, found {v:#x}"
    return None


def _panic_cpu(v: Any) -> str | None:
    return None if v == "last_online" else _int_field(v, 0, NR_CPUS_MAX - 1)


def _flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, found {json.dumps(v)[:40]}"


_Check = Callable[[Any], "str | None"]
_CPU: _Check = lambda v: _int_field(v, 0, NR_CPUS_MAX - 1)  # noqa: E731
#: op -> (required fields, optional fields), each field with its check
STEP_SCHEMA: dict[str, tuple[dict[str, _Check], dict[str, _Check]]] = {
    "load": ({}, {}),
    "add_dimm": ({}, {"size_mib": lambda v: _int_field(v, 128, MAX_DIMM_MIB) or (
        None if v % 128 == 0 else f"must be a multiple of 128 (the memory block size), found {v}"),
        "idx": lambda v: _int_field(v, 1, 1 << 16), "start": _dimm_start}),
    "del_dimm": ({"idx": lambda v: _int_field(v, 1, 1 << 16)}, {}),
    "add_cpus": ({}, {"n": lambda v: _int_field(v, 1, NR_CPUS_MAX)}),
    "offline_cpu": ({"cpu": _CPU}, {}),
    "online_cpu": ({"cpu": _CPU}, {}),
    "remove_cpu": ({"cpu": _CPU}, {}),
    "panic": ({}, {"cpu": _panic_cpu, "busy": _flag}),
}


def check_steps(data: Any, source: str) -> list[dict[str, Any]]:
    """The steps if every one is valid, checked as a whole before anything runs; otherwise one
    :class:`ScenarioError` naming ``source``, the step index and the field."""
    if not isinstance(data, list):
        raise ScenarioError(f"{source}: expected a list of steps (or a scenario with plan.steps), "
                            f"found {type(data).__name__}")
    out: list[dict[str, Any]] = []
    for i, step in enumerate(data):
        where = f"{source}: step {i}"
        if not isinstance(step, dict):
            raise ScenarioError(f"{where}: expected an object with an 'op', found {json.dumps(step)[:40]}")
        op = step.get("op")
        if not isinstance(op, str) or op not in STEP_SCHEMA:
            raise ScenarioError(f"{where}: op {json.dumps(op)[:40]} is not one of {', '.join(STEP_SCHEMA)}")
        required, optional = STEP_SCHEMA[op]
        for key in required:
            if key not in step:
                raise ScenarioError(f"{where} ({op}): field {key!r} is missing")
        for key, value in step.items():
            if key == "op":
                continue
            check = required.get(key) or optional.get(key)
            if check is None:
                known = ", ".join([*required, *optional]) or "none"
                raise ScenarioError(f"{where} ({op}): unknown field {key[:40]!r} (fields: {known})")
            why = check(value)
            if why is not None:
                raise ScenarioError(f"{where} ({op}): field {key!r} {why}")
        if out and out[-1]["op"] == "panic":
            raise ScenarioError(f"{where} ({op}): comes after the panic step; the machine is down")
        out.append(dict(step))
    return out


def load_steps(path: Path) -> list[dict[str, Any]]:
    """Steps from a JSON file: a list of step objects, or a scenario file with ``plan.steps``,
    read bounded and validated as a whole (:func:`check_steps`)."""
    try:
        text = read_text_limited(path, TEXT_FILE_LIMIT)
    except InputFileError as e:
        raise ScenarioError(str(e)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScenarioError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ScenarioError(f"{path}: not a step file (JSON nested too deeply)") from None
    if isinstance(data, dict):
        plan = data.get("plan", data)
        data = plan.get("steps") if isinstance(plan, dict) else None
    return check_steps(data, str(path))


def run_scenario(steps: Iterable[Mapping[str, Any]], *, design: str = "upstream", syscall: str = "kexec_file_load",
                 mem_gib: float = 4, cpus: int = 2, kernel: str = "6.12.43", possible: int = 8,
                 options: OursOptions | None = None, source: str | None = None) -> ScenarioRun:
    """Run ``steps`` on a new machine (default: the 4 GiB, 2-CPU guest on 6.12); ``source`` names
    the step file in errors."""
    machine = Machine.new(mem_gib=mem_gib, cpus=cpus, kernel=kernel, possible=possible)
    return ScenarioRun.start(machine, design, syscall, options).run(steps, source)

