"""The step runner: boot a Debian kernel, load kdump, hot-plug through QMP, snapshot, panic, capture.

Each step but the panic is followed by a snapshot ``S<n>``: the guest files the vectors hold
(``/bin/snap``, base64 in the guest, decoded here), and the elfcorehdr segment read with QMP
``pmemsave`` at the address of the kernel's ``Loaded ELF headers at ... memsz=`` line. The
panic is pinned with ``taskset``; the capture kernel's ``/proc/vmcore`` headers, ``/proc/cmdline``
and per-CPU ``crash_notes`` (read through the vmcore PT_LOADs) make ``capture.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from crash_hotplug.elf.constants import NT_PRSTATUS
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.elf.notes import iter_notes
from crash_hotplug.elf.prstatus import ElfPrstatus
from crash_hotplug.elf.structs import Elf64_Phdr
from crash_hotplug.lab.debian import KernelPackage, cache_dir, default_archive
from crash_hotplug.lab.errors import GuestPanicked, GuestTimeout, LabError, QemuError, ScenarioError
from crash_hotplug.lab.guest import SerialConsole, parse_snapshot_stream
from crash_hotplug.lab.initramfs import (
    CAPTURE_CMDLINE,
    READY_MARK,
    build_labtool,
    build_main_initramfs,
)
from crash_hotplug.lab.kconfig import KernelConfig
from crash_hotplug.lab.kernels import KernelRequest, usable_or_raise
from crash_hotplug.lab.plan import Plan
from crash_hotplug.lab.qemu import DUMP_PORT, KVM_FAILURE_MARKS, VM, MachineConfig, kvm_probe
from crash_hotplug.lab.quirks import MachineQuirk, QuirkVerdicts, hotplug_cpus, needs_quirk
from crash_hotplug.lab.rundir import (
    KERNEL_TEXT_VADDR,
    hexrange,
    iomem_system_ram_expected,
    last_loaded_elf_headers,
    parse_cpulist,
)

__all__ = ["GuestToolVersions", "Runner", "action_label"]


class GuestToolVersions(Protocol):
    """What the run records of the guest's userland (either architecture's tool set)."""

    @property
    def busybox_version(self) -> str: ...

    @property
    def kexec_version(self) -> str: ...

Report = Callable[[str], None]
PAGE = 4096
KCORE_READ = 65536
VMCORE_READ = 65536
BOOT_TIMEOUT = 300.0
CAPTURE_TIMEOUT = 600.0
#: the panic step's ``"dump"`` modes: the file each writes and the core collector's options
#: (kdump-utils' default ``makedumpfile -l --message-level 1 -d 31``; ``-F`` for an ssh target)
DUMP_FILES = {
    "-l": ("vmcore.kdump", "-l --message-level 1 -d 31"),
    "-F": ("vmcore.flat", "-F -l --message-level 1 -d 31"),
}
DUMP_TIMEOUT = 1200.0
KVM_PROBE_TIMEOUT = 60.0
# The capture kernel is the same kernel, with the capture initramfs (the vectors' load).
KEXEC_ARGS = "/kdump/vmlinuz --initrd=/kdump/capture.cpio.gz --append=" + shlex.quote(CAPTURE_CMDLINE)
KEXEC_LOAD = f"kexec -s -p -d {KEXEC_ARGS}"
KEXEC_LOAD_NOFILE = f"kexec -p -d {KEXEC_ARGS}"
PANIC_RE = re.compile(r"CPU: ([0-9]+) (?:UID: [0-9]+ )?PID: ([0-9]+) Comm: (\S+)")


def _size_label(mib: int) -> str:
    return f"{mib // 1024}GiB" if mib % 1024 == 0 else f"{mib}MiB"


def action_label(step: dict[str, Any]) -> str:
    """The vectors' wording of a step's action (``step.json`` ``action``)."""
    op = step["op"]
    if op == "load":
        if step.get("syscall", "kexec_file_load") == "kexec_load":
            return "kexec -p -d load"
        return "kexec -s -p -d load"
    if op == "unload":
        return "kexec -p -u"
    if op == "add_dimm":
        return f"hot-add {_size_label(step['size_mib'])} pc-dimm (dimm{step['idx']})" + (
            " auto-onlined movable" if step["idx"] == 1 else ""
        )
    if op == "del_dimm":
        return f"hot-remove dimm{step['idx']} (device_del)"
    if op == "add_cpus":
        return f"hot-add {step['n']} vCPUs" + (" + online" if step.get("online", True) else "")
    if op in ("online_cpu", "offline_cpu"):
        return f"{op.split('_')[0]} cpu{step['cpu']} via sysfs"
    if op == "del_cpu":
        return f"hot-remove cpu{step['cpu']} (device_del)"
    if op in ("online_block", "offline_block"):
        return f"{op.split('_')[0]} memory{step['block']} via sysfs"
    if op == "storm":
        return "memory storm timing"
    return str(op)


@dataclass
class _Loaded:
    syscall: str
    addr: int
    memsz: int


@dataclass
class _State:
    block_size: int = 0
    dimms: dict[int, dict[str, int]] = field(default_factory=dict)
    loaded: _Loaded | None = None
    prev_used: bytes | None = None
    prev_addr: int | None = None
    step_no: int = 0
    summaries: list[dict[str, Any]] = field(default_factory=list)
    last_header: bytes | None = None
    last_root: Path | None = None
    dumps: list[dict[str, Any]] = field(default_factory=list)


class Runner:
    """Runs one plan on one kernel into a run directory."""

    def __init__(
        self,
        plan: Plan,
        kernel: KernelRequest | str,
        out: Path,
        accel: str = "auto",
        report: Report | None = None,
    ) -> None:
        if accel not in ("auto", "kvm", "tcg"):
            raise ScenarioError(f"accel must be auto, kvm or tcg, not {accel!r}")
        self.plan = plan
        self.request = kernel if isinstance(kernel, KernelRequest) else KernelRequest(key=kernel)
        self.kernel_key = self.request.label
        self.out = out
        self.accel = accel
        self.report = report or (lambda _m: None)
        self.cfg = self._machine_config(plan.machine)
        self.state = _State()
        self.scenario: dict[str, Any] = {}
        self.mode = "unknown"
        self.config: KernelConfig | None = None
        self.accel_reason = ""

    @staticmethod
    def _machine_config(machine: dict[str, Any]) -> MachineConfig:
        return MachineConfig.from_plan(machine)

    # -- preparation ---------------------------------------------------------------------

    def prepare(self) -> tuple[KernelPackage, GuestToolVersions, Path]:
        archive = default_archive(self.report)
        kernel = self.request.fetch(archive, self.report)
        self.mode, self.config = usable_or_raise(kernel)
        cfg = self.config
        self.report(
            f"kernel {kernel.release} ({kernel.package} {kernel.version}); crash hotplug: {self.mode}"
            + (f", NR_CPUS={cfg.nr_cpus}" if cfg is not None else ", config unknown")
        )
        tools = archive.fetch_guest_tools()
        labtool = build_labtool(cache_dir())
        initrd = build_main_initramfs(cache_dir(), kernel, tools, labtool)
        return kernel, tools, initrd

    def _accel_verdict_path(self) -> Path:
        return cache_dir() / "accel-verdicts.json"

    def _accel_order(self, kernel: KernelPackage) -> list[str]:
        if self.accel != "auto":
            self.accel_reason = f"{self.accel}: asked for with --accel"
            return [self.accel]
        ok, why = kvm_probe()
        if not ok:
            self.accel_reason = f"tcg: {why}"
            return ["tcg"]
        verdicts = self._verdicts()
        if verdicts.get(self._verdict_key(kernel)) == "tcg":
            self.accel_reason = f"tcg: {why}, but KVM could not run this kernel on this host before (cached)"
            return ["tcg"]
        self.accel_reason = f"kvm: {why}"
        return ["kvm", "tcg"]

    def _verdicts(self) -> dict[str, str]:
        p = self._accel_verdict_path()
        try:
            data = json.loads(p.read_text())
            return {str(k): str(v) for k, v in data.items()}
        except (OSError, json.JSONDecodeError):
            return {}

    def _verdict_key(self, kernel: KernelPackage) -> str:
        return f"{kernel.release}|{os.uname().release}"

    def _save_verdict(self, kernel: KernelPackage, accel: str) -> None:
        v = self._verdicts()
        v[self._verdict_key(kernel)] = accel
        self._accel_verdict_path().write_text(json.dumps(v, indent=1))

    def _boot(self, stack: contextlib.ExitStack, kernel: KernelPackage, initrd: Path) -> VM:
        """Start the VM, on KVM first where it may work, else TCG; returns it booted to the shell.

        Where the plan hot-adds vCPUs and the kernel reports it will refuse them, the machine is
        booted again with the quirk it asks for (see ``quirks``); the verdict is cached per release.
        """
        order = self._accel_order(kernel)
        self.report(f"accelerator: {self.accel_reason}")
        verdicts = QuirkVerdicts(cache_dir() / "machine-quirks.json")
        wants_cpus = any(st["op"] == "add_cpus" for st in self.plan.steps)
        for accel in order:
            quirks = verdicts.get(kernel.release, accel) if wants_cpus else []
            try:
                vm = self._start(stack, kernel, initrd, accel, quirks, probe=accel == "kvm" and len(order) > 1)
            except (GuestTimeout, QemuError) as exc:
                if accel == "kvm" and len(order) > 1:
                    why = " ".join(str(exc).split())[:160]
                    self.report(f"KVM cannot run this guest here ({why}); using TCG")
                    self._save_verdict(kernel, "tcg")
                    self.accel_reason = f"tcg: KVM could not run this kernel ({why})"
                    continue
                raise
            if wants_cpus and not quirks:
                _rc, dmesg = vm.console.run("dmesg | grep -E 'hotplug CPUs|Unable to map lapic'", check=False)
                asked = needs_quirk(dmesg, self.cfg.maxcpus, self.cfg.cpus, accel)
                if asked is not None:
                    quirk, evidence = asked
                    self.report(f"the kernel says {evidence.split('] ', 1)[-1]!r}: booting again with {quirk.name}")
                    vm.close()
                    quirks = [asked]
                    verdicts.put(kernel.release, accel, quirks)
                    vm = self._start(stack, kernel, initrd, accel, quirks, probe=False)
            self._record_quirks(vm, quirks)
            self.scenario["accel"] = accel
            self.scenario["accel_reason"] = self.accel_reason
            self.report(f"booted in {self.scenario['boot_host_s']} s ({accel})")
            return vm
        raise QemuError("no accelerator could boot the guest")

    def _start(
        self,
        stack: contextlib.ExitStack,
        kernel: KernelPackage,
        initrd: Path,
        accel: str,
        quirks: list[tuple[MachineQuirk, str]],
        probe: bool,
    ) -> VM:
        """One boot to the guest shell. Under TCG a kernel that panics before its shell is up is booted
        once more, and the first panic is kept in ``scenario.json`` (``boot_panics``): QEMU 7.2's TCG
        has been seen to oops a 7.3 kernel at boot in a way the next boot did not repeat. A second
        panic is the error."""
        for attempt in (1, 2):
            vm = VM(
                self.cfg, kernel.vmlinuz, initrd, self.out, accel=accel, log=self.report, quirks=[q for q, _ in quirks]
            )
            t0 = time.monotonic()
            try:
                stack.enter_context(vm)
                if probe:
                    self._wait_kvm_boot(vm)
                vm.console.wait_for(rf"^{READY_MARK} main", BOOT_TIMEOUT)
            except GuestPanicked as exc:
                vm.close()
                if accel != "tcg" or attempt == 2:
                    raise
                self.scenario.setdefault("boot_panics", []).append({"accel": accel, "oops": exc.summary})
                self.report(f"the guest kernel panicked while booting ({' | '.join(exc.summary[:2])}); booting again")
                continue
            except BaseException:
                vm.close()
                raise
            self.scenario["boot_host_s"] = round(time.monotonic() - t0, 3)
            return vm
        raise AssertionError("unreachable")

    def _record_quirks(self, vm: VM, quirks: list[tuple[MachineQuirk, str]]) -> None:
        """Each applied quirk with its reason, what the kernel said that asked for it, and what it
        says with it (scenario.json ``machine_quirks``)."""
        _rc, dmesg = vm.console.run("dmesg | grep -E 'hotplug CPUs|Hypervisor detected'", check=False)
        after = hotplug_cpus(dmesg)
        hyper = next((ln.strip() for ln in dmesg.splitlines() if "Hypervisor detected" in ln), None)
        self.scenario["machine_quirks"] = [
            {**q.to_json(evidence), "kernel_says_with_it": [x for x in (hyper, after[2] if after else None) if x]}
            for q, evidence in quirks
        ]
        self.scenario["kernel_hotplug_cpus"] = after[1] if after else None

    @staticmethod
    def _wait_kvm_boot(vm: VM) -> None:
        """Fail fast when KVM cannot run the guest (``KVM internal error``: PVM and the decompressor)."""
        deadline = time.monotonic() + KVM_PROBE_TIMEOUT
        while time.monotonic() < deadline:
            err = vm.stderr_tail(4000)
            hit = next((ln for ln in err.splitlines() if any(m in ln for m in KVM_FAILURE_MARKS)), None)
            if hit is not None:
                raise QemuError(f"KVM failed: {hit.strip()}")
            if vm.proc is None or vm.proc.poll() is not None:
                raise QemuError(f"QEMU exited under KVM: {err}")
            if "Linux version" in vm.console.text():
                return
            time.sleep(0.25)
        raise QemuError("no kernel output under KVM within the probe time")

    # -- the run -------------------------------------------------------------------------

    def run(self) -> Path:
        """Run the plan; returns the run directory. The VM is always stopped on return."""
        kernel, tools, initrd = self.prepare()
        self.out.mkdir(parents=True, exist_ok=True)
        self.scenario = {
            "kernel": self.kernel_key,
            "scenario": self.plan.name,
            "kernel_release": kernel.release,
            "kernel_origin": kernel.origin,
            "kernel_package": kernel.package,
            "kernel_package_version": kernel.version,
            "kernel_packages": list(kernel.packages),
            "crash_hotplug_mode": self.mode,
            "kernel_config": None if self.config is None else self.config.summary(),
            "busybox_static_version": tools.busybox_version,
            "kexec_tools_version": tools.kexec_version,
        }
        with contextlib.ExitStack() as stack:
            vm = self._boot(stack, kernel, initrd)
            con = vm.console
            _rc, version = con.run("cat /proc/version")
            self.scenario["kernel_version"] = version.strip()
            argv = list(vm.argv)
            argv[argv.index(str(kernel.vmlinuz))] = kernel.vmlinuz.name
            argv[argv.index(str(initrd))] = f"rootfs-{self.kernel_key}.cpio.gz"
            self.scenario["qemu_argv"] = [
                a.replace(str(vm.serial_sock), "<socket>").replace(str(vm.qmp_sock), "<socket>") for a in argv
            ]
            self.scenario["plan"] = {**self.plan.to_json(), "kernel": self.kernel_key}
            self.scenario["pre_steps_without_snapshot"] = []
            self.scenario["p0_debug_load"] = None
            _rc, bs = con.run("cat /sys/devices/system/memory/block_size_bytes")
            self.state.block_size = int(bs.strip(), 16)
            self._write_scenario()
            for step in self.plan.steps:
                op = step["op"]
                self.report(f"step {op}: {action_label(step)}")
                if op == "panic":
                    self._panic(vm, step)
                    break
                if op == "storm":
                    from crash_hotplug.lab.timing import run_storm

                    run_storm(vm, self, step)
                    continue
                t0 = time.monotonic()
                extra = self._do(vm, step)
                wall = extra.pop("_wall", time.monotonic() - t0)
                self._snapshot(vm, step, wall, extra)
            self._write_scenario()
        return self.out

    def _write_scenario(self) -> None:
        self.scenario["steps"] = self.state.summaries
        (self.out / "scenario.json").write_text(json.dumps(self.scenario, indent=1) + "\n")

    # -- actions -------------------------------------------------------------------------

    def _do(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        op = step["op"]
        handler = getattr(self, f"_op_{op}")
        result: dict[str, Any] = handler(vm, step)
        return result

    def _op_load(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        con = vm.console
        syscall = step.get("syscall", "kexec_file_load")
        if step.get("hotplug"):
            _rc, helptext = con.run("kexec --help 2>&1 | grep -c -- --hotplug", check=False)
            if helptext.strip() in ("", "0"):
                raise ScenarioError(
                    "this kexec-tools has no --hotplug (added in 2.0.28; the guest has bookworm's 2.0.25)"
                )
        extra: dict[str, Any] = {}
        if syscall == "kexec_file_load" and step.get("debug_load", self._kernel_at_least(6, 7)):
            # KEXEC_FILE_ON_CRASH|KEXEC_FILE_DEBUG: the kernel prints where it placed every segment.
            cmd = f"labtool kfl /kdump/vmlinuz /kdump/capture.cpio.gz 0xa {shlex.quote(CAPTURE_CMDLINE)}"
            rc, out = con.run(cmd, timeout=120, check=False)
            if rc == 0:
                con.run("kexec -p -u", timeout=60)
                self.scenario["p0_debug_load"] = (
                    "labtool kfl 0xa (kexec_file_load ON_CRASH|DEBUG) + kexec -p -u before S0"
                )
            else:
                self.report(f"debug load not possible here ({out.strip()}); continuing")
        cmd = KEXEC_LOAD if syscall == "kexec_file_load" else KEXEC_LOAD_NOFILE
        if step.get("hotplug"):
            cmd = cmd.replace("kexec ", "kexec --hotplug ", 1)
        t0 = time.monotonic()
        _rc, out = con.run(cmd, timeout=300)
        wall = time.monotonic() - t0
        extra["_wall"] = wall
        if syscall == "kexec_file_load":
            _rc, dmesg = con.run("dmesg | grep 'Loaded ELF headers at' | tail -n 1")
            found = last_loaded_elf_headers(dmesg)
            if found is None:
                raise ScenarioError("the kernel printed no 'Loaded ELF headers at' line (dynamic debug off?)")
            self.state.loaded = _Loaded(syscall, found.addr, found.memsz)
        else:
            self.state.loaded = _Loaded(syscall, *_kexec_tools_elfcorehdr(out))
        return extra

    def set_loaded(self, syscall: str, addr: int, memsz: int) -> None:
        """Record where the loaded crash image's elfcorehdr segment is (for later snapshots)."""
        self.state.loaded = _Loaded(syscall, addr, memsz)

    def _op_unload(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        vm.console.run("kexec -p -u", timeout=60)
        self.state.loaded = None
        return {}

    def _kernel_at_least(self, major: int, minor: int) -> bool:
        m = re.search(r"Linux version ([0-9]+)\.([0-9]+)", str(self.scenario.get("kernel_version", "")))
        return m is not None and (int(m[1]), int(m[2])) >= (major, minor)

    def wait_guest(self, vm: VM, cond: str, timeout: float) -> bool:
        """Poll a shell condition in the guest every 50 ms, in one round trip; True if it came true."""
        n = max(1, int(timeout / 0.05))
        loop = f"( i=0; while ! {{ {cond}; }}; do i=$((i+1)); [ $i -ge {n} ] && exit 1; sleep 0.05; done )"
        rc, _ = vm.console.run(loop, timeout=timeout * 3 + 30, check=False)
        return rc == 0

    def hot_add_dimm(self, vm: VM, idx: int, size: int) -> list[int]:
        """QMP ``object-add`` memory-backend-ram + ``device_add`` pc-dimm; returns the DIMM's block numbers."""
        backend: dict[str, Any] = {"qom-type": "memory-backend-ram", "id": f"mem{idx}", "size": size}
        vm.cmd("object-add", **backend)
        vm.cmd("device_add", driver="pc-dimm", id=f"dimm{idx}", memdev=f"mem{idx}")
        addr = self._dimm_addr(vm, f"dimm{idx}")
        self.state.dimms[idx] = {"addr": addr, "size": size}
        bs = self.state.block_size
        return list(range(addr // bs, (addr + size) // bs))

    def _op_add_dimm(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        idx, size = step["idx"], step["size_mib"] << 20
        t0 = time.monotonic()
        blocks = self.hot_add_dimm(vm, idx, size)
        if not self.wait_guest(vm, blocks_online(blocks), 120):
            raise ScenarioError(f"dimm{idx}'s memory blocks {blocks} did not come online within 120 s")
        return {
            "_wall": time.monotonic() - t0,
            "dimm_blocks": blocks,
            "dimm_addr": hex(self.state.dimms[idx]["addr"]),
        }

    @staticmethod
    def _dimm_addr(vm: VM, dev_id: str) -> int:
        for dev in vm.cmd("query-memory-devices"):
            data = dev.get("data", {})
            if data.get("id") == dev_id:
                return int(data["addr"])
        raise QemuError(f"query-memory-devices does not list {dev_id}")

    def _op_del_dimm(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        idx = step["idx"]
        if idx not in self.state.dimms:
            raise ScenarioError(f"del_dimm: dimm{idx} was not added by this plan")
        t0 = time.monotonic()
        vm.cmd("device_del", id=f"dimm{idx}")
        vm.wait_event("DEVICE_DELETED", 120, lambda ev: ev.get("data", {}).get("device") == f"dimm{idx}")
        wall = time.monotonic() - t0
        vm.cmd("object-del", id=f"mem{idx}")
        del self.state.dimms[idx]
        return {"_wall": wall}

    def _cpus(self, vm: VM, which: str) -> list[int]:
        _rc, out = vm.console.run(f"cat /sys/devices/system/cpu/{which}")
        return parse_cpulist(out)

    def _op_add_cpus(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        n = step["n"]
        before = self._cpus(vm, "present")
        slots = [c for c in vm.cmd("query-hotpluggable-cpus") if "qom-path" not in c]
        slots.sort(key=lambda c: c["props"].get("socket-id", 0))
        if len(slots) < n:
            raise ScenarioError(f"add_cpus: only {len(slots)} free vCPU slots for {n}")
        t0 = time.monotonic()
        refused = "dmesg | grep -c 'Unable to map lapic'"
        _rc, out = vm.console.run(refused, check=False)
        refused_before = int(out.strip() or 0)
        for slot in slots[:n]:
            props = slot["props"]
            vm.cmd("device_add", driver=slot["type"], id=f"vcpu{props.get('socket-id', 0)}", **props)
        want = len(before) + n
        # Done when all CPUs are present, or when the kernel has said it refuses them all (6.12.117+ TCG).
        cond = (
            f'[ "$(ls -d /sys/devices/system/cpu/cpu[0-9]* | wc -l)" -ge {want} ] || '
            f'[ "$({refused})" -ge {refused_before + n} ]'
        )
        self.wait_guest(vm, cond, 20)
        after = self._cpus(vm, "present")
        added = sorted(set(after) - set(before))
        if len(added) < n:
            self.report(f"the kernel accepted {len(added)} of {n} vCPUs (see dmesg)")
        if step.get("online", True):
            for cpu in added:
                vm.console.run(f"echo 1 > /sys/devices/system/cpu/cpu{cpu}/online", timeout=60)
        return {"_wall": time.monotonic() - t0, "cpus_added": added}

    def _op_online_cpu(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        vm.console.run(f"echo 1 > /sys/devices/system/cpu/cpu{step['cpu']}/online", timeout=60)
        return {}

    def _op_offline_cpu(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        cpu = step["cpu"]
        rc, out = vm.console.run(f"echo 0 > /sys/devices/system/cpu/cpu{cpu}/online", timeout=60, check=False)
        if rc != 0:
            self.report(f"offline cpu{cpu} failed: {out.strip()}")
            return {"action_failed": out.strip() or f"exit {rc}"}
        return {}

    def _op_del_cpu(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        """``device_del`` of the vCPU that ``add_cpus`` plugged as ``vcpu<N>`` (socket N = cpu N here)."""
        target = f"vcpu{step['cpu']}"
        plugged = {c["qom-path"].rsplit("/", 1)[-1] for c in vm.cmd("query-hotpluggable-cpus") if "qom-path" in c}
        if target not in plugged:
            raise ScenarioError(f"del_cpu: no hot-added vCPU {target} (plugged: {sorted(plugged)})")
        t0 = time.monotonic()
        vm.cmd("device_del", id=target)
        try:
            vm.wait_event("DEVICE_DELETED", 60, lambda ev: ev.get("data", {}).get("device") == target)
        except QemuError as exc:
            _rc, log = vm.console.run("dmesg | tail -n 15", check=False)
            raise ScenarioError(f"del_cpu: the guest did not eject {target}: {exc}; dmesg:\n{log}") from exc
        return {"_wall": time.monotonic() - t0}

    def _op_online_block(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        path = f"/sys/devices/system/memory/memory{step['block']}/state"
        vm.console.run(f"echo online_movable > {path}", timeout=60)
        return {}

    def _op_offline_block(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        path = f"/sys/devices/system/memory/memory{step['block']}/state"
        vm.console.run(f"echo offline > {path}", timeout=60)
        return {}

    # -- snapshot ------------------------------------------------------------------------

    def _snapshot(self, vm: VM, step: dict[str, Any], wall: float, extra: dict[str, Any]) -> None:
        st = self.state
        name = f"S{st.step_no}"
        st.step_no += 1
        sdir = self.out / name
        root = sdir / "root"
        t0 = time.monotonic()
        _rc, text = vm.console.run("/bin/snap", timeout=600)
        files, unreadable = parse_snapshot_stream(text)
        for gpath, data in files.items():
            if gpath == "/proc/kcore" and len(data) >= 64:
                data = data[: ElfCore.parse(data, gpath).used_size]
            dest = root / gpath.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        info: dict[str, Any] = {"step": name, "action": action_label(step), "op": dict(step)}
        loaded = st.loaded
        if loaded is None:
            info.update({"kexec_syscall": None, "elfcorehdr_addr": None})
            info["step_wall_s"] = round(wall, 4)
            info["unreadable_files"] = unreadable
            info.update(extra)
            self._finish_step(sdir, info, None)
            return
        seg_path = sdir / ".segment.bin"
        with vm.paused():
            seg = vm.pmemsave(loaded.addr, loaded.memsz, seg_path)
        seg_path.unlink()
        core = ElfCore.parse(seg, f"elfcorehdr segment at {loaded.addr:#x}")
        used = core.used_size
        bin_size = -(-used // PAGE) * PAGE
        hdr = seg[:bin_size]
        (sdir / "elfcorehdr.bin").write_bytes(hdr)
        loads, notes = core.load_phdrs, core.notes_phdrs
        rest = seg[bin_size:]
        changed = None if st.prev_used is None else seg[:used] != st.prev_used
        info.update(
            {
                "kexec_syscall": loaded.syscall,
                "elfcorehdr_addr": hex(loaded.addr),
                "elfcorehdr_segment_size": loaded.memsz,
                "elfcorehdr_used_size": used,
                "elfcorehdr_bin_size": bin_size,
                "elfcorehdr_bin_note": (
                    "segment bytes [0, elfcorehdr_bin_size): the used header rounded up to a page, "
                    "the size of the kernel's own buffer"
                ),
                "segment_rest_all_zero": not any(rest),
                "segment_rest_nonzero_bytes": sum(1 for b in rest if b),
                "bytes_after_used_nonzero": sum(1 for b in hdr[used:] if b),
                "segment_sha256": hashlib.sha256(seg).hexdigest(),
                "elfcorehdr_bin_sha256": hashlib.sha256(hdr).hexdigest(),
                "n_load": len(loads),
                "n_note": len(notes),
                "step_wall_s": round(wall, 4),
                "header_changed_vs_previous_step": changed,
                "same_addr_as_previous_step": None if st.prev_addr is None else st.prev_addr == loaded.addr,
                **self._ram_check(root, loads),
                "pt_note_owners": _note_owners(root, notes),
                "kcore_bytes_read": KCORE_READ,
                "unreadable_files": unreadable,
            }
        )
        info.update(extra)
        info["header_built_by"] = (
            "kernel (kexec_file_load)" if loaded.syscall == "kexec_file_load" else "kexec-tools (kexec_load)"
        )
        self._snapshot_extra(vm, sdir, info)
        info["snapshot_host_s"] = round(time.monotonic() - t0, 3)
        st.prev_used, st.prev_addr = seg[:used], loaded.addr
        st.last_header = hdr
        self._finish_step(sdir, info, hdr)

    def _ram_check(self, root: Path, loads: list[Elf64_Phdr]) -> dict[str, Any]:
        """``step.json``'s comparison of the header's RAM with ``/proc/iomem`` (x86: System RAM
        minus [0, 1 MiB) and the ``Crash kernel`` line)."""
        iomem = (root / "proc/iomem").read_text() if (root / "proc/iomem").exists() else ""
        expected, crash = iomem_system_ram_expected(iomem)
        ram = sorted((p.p_paddr, p.p_paddr + p.p_memsz - 1) for p in loads if p.p_vaddr < KERNEL_TEXT_VADDR)
        return {
            "header_matches_iomem_system_ram": ram == sorted(expected),
            "iomem_system_ram_expected": [hexrange(r) for r in expected],
            "elfcorehdr_ram_ranges": [hexrange(r) for r in ram],
            "iomem_rule": (
                "top-level 'System RAM' lines of proc/iomem minus [0, 1 MiB) and minus the 'Crash kernel' range"
            ),
            "crashkernel_region": hexrange(crash) if crash else None,
        }

    def _snapshot_extra(self, vm: VM, sdir: Path, info: dict[str, Any]) -> None:
        """What an architecture adds to a step's snapshot (nothing on x86)."""

    @staticmethod
    def _prstatus_pid_ip(desc: bytes) -> tuple[int, int]:
        """``(pr_pid, instruction pointer)`` of an NT_PRSTATUS descriptor (x86_64 layout)."""
        pr = ElfPrstatus.unpack(desc)
        return pr.pr_pid, pr.ip

    def _finish_step(self, sdir: Path, info: dict[str, Any], hdr: bytes | None) -> None:
        st = self.state
        sdir.mkdir(parents=True, exist_ok=True)
        (sdir / "step.json").write_text(json.dumps(info, indent=1) + "\n")
        st.last_root = sdir / "root"
        st.summaries.append(
            {
                "step": info["step"],
                "action": info["action"],
                "header_built_by": info.get("header_built_by"),
                "elfcorehdr_used_size": info.get("elfcorehdr_used_size"),
                "header_changed_vs_previous_step": info.get("header_changed_vs_previous_step"),
                "header_matches_iomem_system_ram": info.get("header_matches_iomem_system_ram"),
                "n_load": info.get("n_load"),
                "n_note": info.get("n_note"),
                "step_wall_s": info.get("step_wall_s"),
                "snapshot_host_s": info.get("snapshot_host_s"),
            }
        )
        self._write_scenario()
        self.report(
            f"{info['step']}: wall {info['step_wall_s']} s, header used "
            f"{info.get('elfcorehdr_used_size')} B, changed {info.get('header_changed_vs_previous_step')}, "
            f"matches iomem {info.get('header_matches_iomem_system_ram')}"
        )

    # -- panic and capture ---------------------------------------------------------------

    def _panic(self, vm: VM, step: dict[str, Any]) -> None:
        con = vm.console
        online = self._cpus(vm, "online")
        cpu = step.get("cpu", "last_online")
        pinned = max(online) if cpu == "last_online" else int(cpu)
        if pinned not in online:
            raise ScenarioError(f"panic: cpu{pinned} is not online (online: {online})")
        if self.state.loaded is None:
            raise ScenarioError("panic: no crash kernel is loaded")
        start = con.position
        t0 = time.monotonic()
        con.send(f"taskset -c {pinned} sh -c 'echo c > /proc/sysrq-trigger'")
        con.wait_for(rf"^{READY_MARK} capture", CAPTURE_TIMEOUT, start, panic_ok=True)
        capture_boot = time.monotonic() - t0
        banner = PANIC_RE.search(con.text(start))
        self.report(f"capture kernel up in {capture_boot:.1f} s")
        self._capture(con, pinned, banner, capture_boot)
        modes = step.get("dump") or []
        for mode in [modes] if isinstance(modes, str) else modes:
            self._dump(con, vm, str(mode))

    def _dump(self, con: SerialConsole, vm: VM, mode: str) -> None:
        """Run the distribution's core collector on ``/proc/vmcore`` as kdump-utils does
        (``makedumpfile -l --message-level 1 -d 31``; with ``-F`` the flattened stream an ssh
        target receives) and bring the file back through the debug console port."""
        if mode not in DUMP_FILES:
            raise ScenarioError(f"panic: dump mode {mode!r} is not one of {', '.join(DUMP_FILES)}")
        name, options = DUMP_FILES[mode]
        start = vm.dump_path.stat().st_size if vm.dump_path.exists() else 0
        t0 = time.monotonic()
        if mode == "-F":
            cmd = f"makedumpfile {options} /proc/vmcore 2>/tmp/md.err | labtool out {DUMP_PORT:#x}"
        else:
            cmd = (f"makedumpfile {options} /proc/vmcore /tmp/{name} >/tmp/md.err 2>&1 && "
                   f"labtool out {DUMP_PORT:#x} < /tmp/{name} && rm -f /tmp/{name}")
        rc, out = con.run(cmd, timeout=DUMP_TIMEOUT, check=False)
        _rc, err = con.run("cat /tmp/md.err", check=False)
        counted = re.findall(r"^([0-9]+) 0\s*$", out, re.MULTILINE)
        if rc != 0 or not counted:
            raise ScenarioError(f"capture: makedumpfile {options} failed ({rc}): {(out + err).strip()[-600:]}")
        size = int(counted[-1])
        with vm.dump_path.open("rb") as f:
            f.seek(start)
            data = f.read(size)
        if len(data) != size:
            raise ScenarioError(f"capture: {name}: {len(data)} of {size} bytes came back through the debug port")
        (self.out / name).write_bytes(data)
        took = time.monotonic() - t0
        self.report(f"capture: makedumpfile {options} -> {name}, {size} B in {took:.1f} s")
        self.state.dumps.append({"file": name, "command": f"makedumpfile {options}", "bytes": size,
                                 "host_s": round(took, 3), "makedumpfile_messages": _last_lines(err)})
        cap = self.out / "capture.json"
        info = json.loads(cap.read_text())
        info["dumps"] = self.state.dumps
        cap.write_text(json.dumps(info, indent=1) + "\n")

    def _capture(self, con: SerialConsole, pinned: int, banner: re.Match[str] | None, boot_s: float) -> None:
        _rc, cmdline = con.run("cat /proc/cmdline")
        _rc, ls = con.run("ls -l /proc/vmcore")
        _rc, version = con.run("cat /proc/version")
        _rc, cpus = con.run("cd /sys/devices/system/cpu && cat possible present online")
        _rc, iomem = con.run("cat /proc/iomem")
        con.run(f"head -c {VMCORE_READ} /proc/vmcore > /tmp/vmcore-head", timeout=120)
        raw = con.read_file("/tmp/vmcore-head", timeout=120)
        vmcore = ElfCore.parse(raw, "/proc/vmcore")
        notes, loads = vmcore.notes_phdrs, vmcore.load_phdrs
        end = max([vmcore.used_size, *(p.p_offset + p.p_filesz for p in notes)])
        headers = raw[:end]
        (self.out / "vmcore-headers.bin").write_bytes(headers)
        (self.out / "capture-cmdline").write_text(cmdline)
        prstatus = []
        for _i, note in ElfCore.parse(headers, "vmcore headers").notes():
            if note.name == "CORE" and note.n_type == NT_PRSTATUS:
                pid, ip = self._prstatus_pid_ip(note.desc)
                prstatus.append({"pr_pid": pid, "rip": hex(ip)})
        per_cpu = self._per_cpu_notes(con, loads)
        fields = ls.split()
        info: dict[str, Any] = {
            "panic_cpu": int(banner[1]) if banner else None,
            "panic_pinned_cpu": pinned,
            "panic_pid": int(banner[2]) if banner else None,
            "panic_comm": banner[3] if banner else None,
            "panic_trigger": "taskset -c <cpu> sh -c 'echo c > /proc/sysrq-trigger'",
            "vmcore_size": int(fields[4]) if len(fields) > 4 and fields[4].isdigit() else None,
            "vmcore_ls": ls.strip(),
            "capture_cmdline": cmdline.strip(),
            "capture_kernel": version.strip(),
            "capture_cpus_possible_present_online": cpus.strip(),
            "vmcore_headers_len": len(headers),
            "vmcore_n_load": len(loads),
            "vmcore_n_note": len(notes),
            "vmcore_load_ranges": [[hex(p.p_paddr), hex(p.p_memsz)] for p in loads],
            "vmcore_nt_prstatus": prstatus,
            "per_cpu_crash_notes_in_vmcore": per_cpu,
            "per_cpu_note": (
                "for every CPU of the last step: the NT_PRSTATUS read from /proc/vmcore at that CPU's "
                "crash_notes address through the PT_LOADs, and whether the final elfcorehdr had a "
                "PT_NOTE for it"
            ),
            "capture_iomem": iomem.strip(),
            "capture_boot_host_s": round(boot_s, 3),
        }
        (self.out / "capture.json").write_text(json.dumps(info, indent=1) + "\n")
        self.report(
            f"capture: panic on cpu{info['panic_cpu']}, vmcore {info['vmcore_size']} B, "
            f"{len(loads)} PT_LOAD, {len(prstatus)} NT_PRSTATUS"
        )

    def _per_cpu_notes(self, con: SerialConsole, loads: list[Elf64_Phdr]) -> dict[str, Any]:
        root, hdr = self.state.last_root, self.state.last_header
        out: dict[str, Any] = {}
        if root is None:
            return out
        final_notes = set()
        if hdr is not None:
            final_notes = {p.p_paddr for p in ElfCore.parse(hdr).notes_phdrs}
        cpudir = root / "sys/devices/system/cpu"
        cpus = sorted(
            (int(d.name[3:]) for d in cpudir.glob("cpu[0-9]*") if (d / "crash_notes").exists()),
        )
        for cpu in cpus:
            paddr = int((cpudir / f"cpu{cpu}/crash_notes").read_text().strip(), 16)
            size = int((cpudir / f"cpu{cpu}/crash_notes_size").read_text().strip() or "0")
            entry: dict[str, Any] = {
                "crash_notes_paddr": hex(paddr),
                "pt_note_in_final_elfcorehdr": paddr in final_notes,
                "prstatus_saved": None,
                "pr_pid": None,
            }
            seg = next((p for p in loads if p.p_paddr <= paddr < p.p_paddr + p.p_memsz), None)
            if seg is not None and size:
                off = seg.p_offset + paddr - seg.p_paddr
                dd = f"dd if=/proc/vmcore of=/tmp/n{cpu} bs=1 skip={off} count={size} 2>/dev/null"
                rc, _ = con.run(dd, timeout=60, check=False)
                data = con.read_file(f"/tmp/n{cpu}", timeout=60) if rc == 0 else b""
                saved = False
                for note in iter_notes(data):
                    if note.name == "CORE" and note.n_type == NT_PRSTATUS:
                        saved = True
                        entry["pr_pid"] = self._prstatus_pid_ip(note.desc)[0]
                entry["prstatus_saved"] = saved
            out[f"cpu{cpu}"] = entry
        return out


def blocks_online(blocks: list[int]) -> str:
    """A guest shell condition: every listed memory block is online."""
    return " && ".join(f'[ "$(cat /sys/devices/system/memory/memory{b}/state 2>/dev/null)" = online ]' for b in blocks)


def _note_owners(root: Path, notes: list[Elf64_Phdr]) -> list[str]:
    """Name each PT_NOTE by address: ``cpuN`` (sysfs crash_notes), ``vmcoreinfo``, or ``?``."""
    owners: dict[int, str] = {}
    cpudir = root / "sys/devices/system/cpu"
    for d in cpudir.glob("cpu[0-9]*"):
        f = d / "crash_notes"
        if f.exists():
            with contextlib.suppress(ValueError):
                owners[int(f.read_text().strip(), 16)] = d.name
    vmci = root / "sys/kernel/vmcoreinfo"
    if vmci.exists():
        with contextlib.suppress(ValueError, IndexError):
            owners[int(vmci.read_text().split()[0], 16)] = "vmcoreinfo"
    return [owners.get(p.p_paddr, "?") for p in notes]


def _kexec_tools_elfcorehdr(kexec_debug: str) -> tuple[int, int]:
    """Where kexec-tools (``kexec_load``) put the elfcorehdr: the ``elfcorehdr=`` it appended and
    the size of the segment loaded there (``kexec -d`` output)."""
    m = re.search(r"elfcorehdr=([0-9]+)K", kexec_debug)
    if not m:
        raise ScenarioError("kexec -d printed no elfcorehdr= argument")
    addr = int(m[1]) * 1024
    mems = dict(re.findall(r"segment\[([0-9]+)\]\.mem\s*=\s*(0x[0-9a-f]+)", kexec_debug))
    sizes = dict(re.findall(r"segment\[([0-9]+)\]\.memsz\s*=\s*(0x[0-9a-f]+)", kexec_debug))
    for idx, mem in mems.items():
        if int(mem, 16) == addr and idx in sizes:
            return addr, int(sizes[idx], 16)
    raise ScenarioError(f"kexec -d printed no segment at the elfcorehdr address {addr:#x}")


def run_scenario(
    plan: Plan, kernel: KernelRequest | str, out: Path, accel: str = "auto", report: Report | None = None
) -> Path:
    """Run ``plan`` on a kernel into ``out``; the VM is stopped whatever happens."""
    request = kernel if isinstance(kernel, KernelRequest) else KernelRequest(key=kernel)
    try:
        from crash_hotplug.lab.debian_ppc64 import is_ppc64_key

        if is_ppc64_key(request.key):
            from crash_hotplug.lab.scenario_ppc64 import Ppc64Runner

            return Ppc64Runner(plan, request, out, accel=accel, report=report).run()
        return Runner(plan, request, out, accel=accel, report=report).run()
    except subprocess.SubprocessError as exc:
        raise LabError(str(exc)) from exc


def _last_lines(text: str) -> str:
    """makedumpfile's messages without its progress meter (each ``\r`` rewrites the line), at most 2000 characters."""
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    return "\n".join(line for line in lines if line)[-2000:]
