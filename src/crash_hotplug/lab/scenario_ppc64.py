"""The step runner on a pseries guest: the amd64 runner's plan, snapshot and capture, with what
ppc64 does differently.

* kdump is loaded with **kexec_load** by kexec-tools 2.0.32, ``kexec -p --hotplug -d`` (Debian's
  ppc64el kernels have no ``CONFIG_KEXEC_FILE``); the elfcorehdr and FDT segments come from its
  ``-d`` output (``segment[i].mem/memsz``, ``elfcorehdr=<n>K``, ``dt_offset is <addr>``).
* After every step, besides the header: the crash kernel's FDT (``crash-fdt.dtb``: the segment at
  ``dt_offset``, ``totalsize`` bytes, read with QMP ``pmemsave``) and the whole
  ``/proc/device-tree`` (a tar stream from the guest, unpacked under ``root/proc/device-tree``),
  from which kexec-tools' first FDT can be rebuilt.
* CPUs are hot-added as ``<type>`` cores (``query-hotpluggable-cpus``: ``power9_v2.0-spapr-cpu-core``,
  ``core-id``); the guest's DLPAR code adds and onlines them, as it does the 256 MiB LMBs of a
  ``pc-dimm``.
* The crashkernel region is in ``/proc/device-tree/chosen/linux,crashkernel-*`` (ppc64
  ``/proc/iomem`` has no ``Crash kernel`` line); RTAS is a PT_LOAD of its own.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import re
import shlex
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from crash_hotplug.crash.vmcore import merge_ranges
from crash_hotplug.elf.prstatus_ppc64 import ElfPrstatusPpc64
from crash_hotplug.elf.structs import Elf64_Phdr
from crash_hotplug.lab.debian import KernelPackage, cache_dir
from crash_hotplug.lab.debian_ppc64 import (
    fetch_ppc64_guest_tools,
    fetch_ppc64_kernel,
    kernel_from_debs,
    ppc64_archive,
)
from crash_hotplug.lab.errors import KernelFetchError, QemuError, ScenarioError
from crash_hotplug.lab.guest import SerialConsole
from crash_hotplug.lab.initramfs import READY_MARK
from crash_hotplug.lab.initramfs_ppc64 import CAPTURE_CMDLINE_PPC64, DT_TAR, build_main_initramfs_ppc64
from crash_hotplug.lab.kconfig import KernelConfig
from crash_hotplug.lab.plan import Plan
from crash_hotplug.lab.qemu import VM, MachineConfig
from crash_hotplug.lab.qemu_ppc64 import QEMU_PPC64, Ppc64MachineConfig, qemu_argv_ppc64
from crash_hotplug.lab.rundir import hexrange
from crash_hotplug.lab.scenario import BOOT_TIMEOUT, GuestToolVersions, Runner, _kexec_tools_elfcorehdr

__all__ = ["KEXEC_LOAD_PPC64", "Ppc64Runner", "kexec_debug_segments", "ppc64_ram_check"]

KEXEC_LOAD_PPC64 = (
    "kexec -p --hotplug -d /kdump/vmlinux --initrd=/kdump/capture.cpio.gz --append="
    + shlex.quote(CAPTURE_CMDLINE_PPC64)
)
#: ops the pseries runner carries out (storm needs the amd64 guest helper)
PPC64_OPS = ("load", "unload", "add_dimm", "del_dimm", "add_cpus", "del_cpu", "online_cpu", "offline_cpu",
             "online_block", "offline_block", "panic")
CPU_TIMEOUT = 180.0


def kexec_debug_segments(out: str) -> dict[str, Any]:
    """What ``kexec -d`` printed about the load: segments, flags, and where the FDT went."""
    seg: dict[int, dict[str, int]] = {}
    for idx, field, val in re.findall(r"segment\[([0-9]+)\]\.(buf|bufsz|mem|memsz)\s*=\s*(0x[0-9a-f]+)", out):
        seg.setdefault(int(idx), {})[field] = int(val, 16)
    flags = re.search(r"kexec_load: entry = (0x[0-9a-f]+) flags = (0x[0-9a-f]+)", out)
    dt = re.search(r"^dt_offset is ([0-9a-f]+)", out, re.M)
    extra = re.search(r"kdump fdt extra size: ([0-9]+)", out)
    backup = re.search(r"^backup_start is ([0-9a-f]+)", out, re.M)
    return {
        "kexec_segments": [seg[i] for i in sorted(seg)],
        "kexec_entry": flags[1] if flags else None,
        "kexec_flags": flags[2] if flags else None,
        "dt_offset": int(dt[1], 16) if dt else None,
        "kdump_fdt_extra_size": int(extra[1]) if extra else None,
        "backup_start": int(backup[1], 16) if backup else None,
    }


def _be(path: Path) -> int | None:
    try:
        return int.from_bytes(path.read_bytes(), "big")
    except OSError:
        return None


def ppc64_ram_check(root: Path, loads: list[Elf64_Phdr]) -> dict[str, Any]:
    """The header's RAM against ``/proc/iomem``: top-level System RAM minus the crashkernel region
    of ``/proc/device-tree/chosen``, against the merged PT_LOADs other than the RTAS one."""
    iomem = (root / "proc/iomem").read_text() if (root / "proc/iomem").exists() else ""
    ram = []
    for line in iomem.splitlines():
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) : System RAM$", line)
        if m:
            ram.append((int(m[1], 16), int(m[2], 16)))
    dt = root / "proc/device-tree"
    base, size = _be(dt / "chosen/linux,crashkernel-base"), _be(dt / "chosen/linux,crashkernel-size")
    rtas_base, rtas_size = _be(dt / "rtas/linux,rtas-base"), _be(dt / "rtas/rtas-size")
    crash = (base, base + size - 1) if base is not None and size else None
    expected: list[tuple[int, int]] = []
    for s, e in merge_ranges(ram):
        if crash is not None and s <= crash[1] and crash[0] <= e:
            if s < crash[0]:
                expected.append((s, crash[0] - 1))
            if crash[1] < e:
                expected.append((crash[1] + 1, e))
        else:
            expected.append((s, e))
    rtas = (rtas_base, rtas_base + rtas_size - 1) if rtas_base is not None and rtas_size else None
    phdrs = [(p.p_paddr, p.p_paddr + p.p_memsz - 1) for p in loads]
    in_rtas = [r for r in phdrs if rtas is not None and rtas[0] <= r[0] <= rtas[1]]
    ram_loads = merge_ranges([r for r in phdrs if r not in in_rtas])
    return {
        "header_matches_iomem_system_ram": ram_loads == expected,
        "iomem_system_ram_minus_crashkernel": [hexrange(r) for r in expected],
        "elfcorehdr_ram_ranges": [hexrange(r) for r in sorted(phdrs)],
        "rtas_range": hexrange(rtas) if rtas else None,
        "iomem_rule": (
            "top-level 'System RAM' of proc/iomem (ppc64 iomem has no 'Crash kernel' line) minus the "
            "crashkernel region from /proc/device-tree/chosen/linux,crashkernel-{base,size}, against the "
            "merged PT_LOAD ranges other than the RTAS one"
        ),
        "crashkernel_region": hexrange(crash) if crash else None,
    }


def _unpack_device_tree(tgz: Path, dest: Path) -> int:
    """The guest's ``tar -czf - base`` of ``/sys/firmware/devicetree`` unpacked as ``dest``
    (regular files and directories only, no path outside ``dest``); returns the file count."""
    count = 0
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(tgz.read_bytes())), mode="r:") as tar:
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if not parts or parts[0] != "base" or any(p in ("..", "") for p in parts) or Path(m.name).is_absolute():
                raise ScenarioError(f"{tgz}: unexpected member {m.name!r} in the device-tree archive")
            target = dest.joinpath(*parts[1:])
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif m.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                target.write_bytes(src.read() if src is not None else b"")
                count += 1
    return count


class Ppc64Runner(Runner):
    """Runs one plan on a Debian ppc64el kernel in a pseries guest into a run directory."""

    def __init__(self, plan: Plan, *args: Any, **kwargs: Any) -> None:
        bad = [st["op"] for st in plan.steps if st["op"] not in PPC64_OPS]
        if bad:
            raise ScenarioError(
                f"the pseries lab does not run {', '.join(sorted(set(bad)))} (it runs {', '.join(PPC64_OPS)})"
            )
        steps = []
        dropped: list[str] = []
        for st in plan.steps:
            if st["op"] == "load":
                if st.get("syscall", "kexec_load") != "kexec_load":
                    raise ScenarioError("Debian's ppc64el kernels have no kexec_file_load: a load step is kexec_load")
                st = {**st, "syscall": "kexec_load", "hotplug": st.get("hotplug", True)}
            if st["op"] == "panic" and st.get("dump"):
                # the pseries capture initramfs has no core collector: /proc/vmcore is read as on x86
                # (headers, notes), and the run says the dump was not taken
                modes = st["dump"]
                dropped.extend(str(m) for m in (modes if isinstance(modes, list) else [modes]))
                st = {k: v for k, v in st.items() if k != "dump"}
            steps.append(st)
        self.pcfg = Ppc64MachineConfig.from_plan(plan.machine)
        super().__init__(replace(plan, steps=tuple(steps)), *args, **kwargs)
        self.kexec: dict[str, Any] = {}
        self.prev_fdt: bytes | None = None
        self.dumps_not_taken = dropped
        self.dt_files = 0

    @staticmethod
    def _machine_config(machine: dict[str, Any]) -> MachineConfig:
        return MachineConfig(cpus=2, maxcpus=8)  # unused: the pseries machine is ``self.pcfg``

    # -- preparation ---------------------------------------------------------------------

    def prepare(self) -> tuple[KernelPackage, GuestToolVersions, Path]:
        archive = ppc64_archive(self.report)
        if self.request.key is not None:
            kernel = fetch_ppc64_kernel(archive, self.request.key)
        elif self.request.debs:
            digest = hashlib.sha256(str(self.request.debs).encode()).hexdigest()[:12]
            dest = cache_dir() / "kernels" / f"user-ppc64el-{digest}"
            kernel = kernel_from_debs(self.request.debs, dest, self.request.label)
        else:
            raise KernelFetchError("the pseries lab takes a Debian ppc64el kernel (--kernel or --kernel-deb)")
        self.mode, self.config = _ppc64_usable(kernel)
        cfg = self.config
        self.report(
            f"kernel {kernel.release} ({kernel.package} {kernel.version}); crash hotplug: {self.mode}"
            + (f", NR_CPUS={cfg.nr_cpus}" if cfg is not None else ", config unknown")
        )
        tools = fetch_ppc64_guest_tools(archive)
        initrd = build_main_initramfs_ppc64(cache_dir(), kernel, tools)
        return kernel, tools, initrd

    def _boot(self, stack: contextlib.ExitStack, kernel: KernelPackage, initrd: Path) -> VM:
        self.accel_reason = "tcg: a ppc64 guest on this host runs under TCG only"
        self.report(f"accelerator: {self.accel_reason}")
        build = qemu_argv_ppc64(self.pcfg, str(kernel.vmlinuz), str(initrd))
        vm = VM(self.cfg, kernel.vmlinuz, initrd, self.out, accel="tcg", log=self.report, argv=build, binary=QEMU_PPC64)
        t0 = time.monotonic()
        try:
            stack.enter_context(vm)
            vm.console.wait_for(rf"^{READY_MARK} main", BOOT_TIMEOUT)
        except BaseException:
            vm.close()
            raise
        self.scenario["boot_host_s"] = round(time.monotonic() - t0, 3)
        self.scenario.update({"accel": "tcg", "accel_reason": self.accel_reason, "machine_quirks": []})
        self.report(f"booted in {self.scenario['boot_host_s']} s (tcg)")
        return vm

    def _write_scenario(self) -> None:
        self.scenario["arch"] = "ppc64le"
        self.scenario["capture_cmdline_given"] = CAPTURE_CMDLINE_PPC64
        if self.dumps_not_taken:
            self.scenario["panic_dump_not_taken"] = (
                f"makedumpfile {', '.join(self.dumps_not_taken)}: the pseries capture initramfs has no core collector"
            )
        if self.kexec:
            self.scenario["kexec_load_command"] = KEXEC_LOAD_PPC64
            self.scenario["kexec_segments"] = self.kexec.get("kexec_segments")
        super()._write_scenario()

    # -- actions -------------------------------------------------------------------------

    def _op_load(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        con = vm.console
        cmd = KEXEC_LOAD_PPC64 if step.get("hotplug", True) else KEXEC_LOAD_PPC64.replace(" --hotplug", "")
        t0 = time.monotonic()
        _rc, out = con.run(cmd, timeout=600)
        wall = time.monotonic() - t0
        (self.out / "kexec-load.log").write_text(out)
        addr, memsz = _kexec_tools_elfcorehdr(out)
        self.kexec = kexec_debug_segments(out)
        if self.kexec["dt_offset"] is None:
            raise ScenarioError("kexec -d printed no 'dt_offset is' line: where the crash FDT is is unknown")
        self.set_loaded("kexec_load", addr, memsz)
        return {"_wall": wall, "kexec_load_command": cmd}

    def _op_unload(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        self.kexec = {}
        return super()._op_unload(vm, step)

    def _op_add_cpus(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        n = step["n"]
        before = self._cpus(vm, "present")
        slots = [c for c in vm.cmd("query-hotpluggable-cpus") if "qom-path" not in c]
        slots.sort(key=lambda c: c["props"].get("core-id", 0))
        if len(slots) < n:
            raise ScenarioError(f"add_cpus: only {len(slots)} free cores for {n}")
        t0 = time.monotonic()
        types = []
        for slot in slots[:n]:
            props = slot["props"]
            types.append(f"{slot['type']} core-id={props.get('core-id')}")
            vm.cmd("device_add", driver=slot["type"], id=f"core{props.get('core-id')}", **props)
        want = len(before) + n
        cond = f'[ "$(ls -d /sys/devices/system/cpu/cpu[0-9]* | wc -l)" -ge {want} ]'
        if not self.wait_guest(vm, cond, CPU_TIMEOUT):
            raise ScenarioError(f"add_cpus: the guest did not add {n} CPUs within {CPU_TIMEOUT:g} s")
        added = sorted(set(self._cpus(vm, "present")) - set(before))
        if step.get("online", True):
            online = " && ".join(f'[ "$(cat /sys/devices/system/cpu/cpu{c}/online)" = 1 ]' for c in added)
            if not self.wait_guest(vm, online, CPU_TIMEOUT):
                for cpu in added:
                    vm.console.run(f"echo 1 > /sys/devices/system/cpu/cpu{cpu}/online", timeout=120, check=False)
        return {"_wall": time.monotonic() - t0, "cpus_added": added, "cpu_cores_plugged": types}

    def _op_del_cpu(self, vm: VM, step: dict[str, Any]) -> dict[str, Any]:
        """``device_del`` of the core ``add_cpus`` plugged as ``core<N>`` (one thread per core: cpu N)."""
        target = f"core{step['cpu']}"
        plugged = {c["qom-path"].rsplit("/", 1)[-1] for c in vm.cmd("query-hotpluggable-cpus") if "qom-path" in c}
        if target not in plugged:
            raise ScenarioError(f"del_cpu: no hot-added core {target} (plugged: {sorted(plugged)})")
        t0 = time.monotonic()
        vm.cmd("device_del", id=target)
        try:
            vm.wait_event("DEVICE_DELETED", CPU_TIMEOUT, lambda ev: ev.get("data", {}).get("device") == target)
        except QemuError as exc:
            raise ScenarioError(f"del_cpu: the guest did not release {target}: {exc}") from exc
        return {"_wall": time.monotonic() - t0}

    # -- snapshot ------------------------------------------------------------------------

    def _device_tree(self, root: Path) -> None:
        """Unpack the snapshot's device-tree archive into ``root/proc/device-tree`` (once)."""
        tgz = root / DT_TAR.lstrip("/")
        if tgz.exists():
            self.dt_files = _unpack_device_tree(tgz, root / "proc/device-tree")
            tgz.unlink()

    def _ram_check(self, root: Path, loads: list[Elf64_Phdr]) -> dict[str, Any]:
        self._device_tree(root)
        return ppc64_ram_check(root, loads)

    def _snapshot_extra(self, vm: VM, sdir: Path, info: dict[str, Any]) -> None:
        self._device_tree(sdir / "root")
        info["arch"] = "ppc64le"
        info["device_tree_files"] = self.dt_files
        info["kexec_segments"] = self.kexec.get("kexec_segments")
        info["kexec_flags"] = self.kexec.get("kexec_flags")
        info["kdump_fdt_extra_size"] = self.kexec.get("kdump_fdt_extra_size")
        dt_offset = self.kexec.get("dt_offset")
        seg = next((s for s in self.kexec.get("kexec_segments", []) if s.get("mem") == dt_offset), None)
        if dt_offset is None or seg is None:
            info["crash_fdt"] = None
            return
        tmp = sdir / ".fdt.bin"
        with vm.paused():
            raw = vm.pmemsave(dt_offset, seg["memsz"], tmp)
        tmp.unlink()
        if raw[:4] != b"\xd0\x0d\xfe\xed":
            raise ScenarioError(f"no FDT at the kexec FDT segment {dt_offset:#x} (magic {raw[:4].hex()})")
        fdt = raw[: int.from_bytes(raw[4:8], "big")]
        (sdir / "crash-fdt.dtb").write_bytes(fdt)
        info["crash_fdt"] = {
            "addr": hex(dt_offset),
            "segment_memsz": seg["memsz"],
            "totalsize": len(fdt),
            "sha256": hashlib.sha256(fdt).hexdigest(),
            "cpus": _fdt_cpus(fdt),
        }
        info["crash_fdt_changed_vs_previous_step"] = None if self.prev_fdt is None else fdt != self.prev_fdt
        self.prev_fdt = fdt

    def _capture(self, con: SerialConsole, pinned: int, banner: re.Match[str] | None, boot_s: float) -> None:
        """The amd64 capture, plus the FDT node the capture kernel booted on (it must be the
        panicking CPU's: ``Renumbered boot core /cpus/...``)."""
        super()._capture(con, pinned, banner, boot_s)
        _rc, log = con.run("dmesg | grep -E 'boot core|Booting Linux via|boot cpu'", check=False)
        cap = self.out / "capture.json"
        info = json.loads(cap.read_text())
        m = re.search(r"boot core (\S+)", log)
        info["capture_boot_cpu_node"] = m[1] if m else None
        info["capture_boot_log"] = [ln.split("] ", 1)[-1].strip() for ln in log.splitlines() if ln.strip()]
        cap.write_text(json.dumps(info, indent=1) + "\n")

    @staticmethod
    def _prstatus_pid_ip(desc: bytes) -> tuple[int, int]:
        pr = ElfPrstatusPpc64.unpack(desc)
        return pr.pr_pid, pr.ip


def _fdt_cpus(fdt: bytes) -> list[str]:
    from crash_hotplug.fdt.tree import fdt_parse

    cpus = fdt_parse(fdt, "crash FDT").root.find("/cpus")
    return [] if cpus is None else [f"/cpus/{c.name}" for c in cpus.children]


def _ppc64_usable(kernel: KernelPackage) -> tuple[str, KernelConfig | None]:
    """The crash-hotplug mode of a ppc64el kernel from its config; refuses one that cannot serve the lab
    (no CONFIG_CRASH_DUMP, or no CONFIG_KEXEC: kexec_load is the only way there)."""
    if kernel.config is None:
        return "unknown", None
    cfg = KernelConfig.read(kernel.config)
    if cfg.values.get("CONFIG_CRASH_DUMP") != "y":
        raise KernelFetchError(f"{kernel.release}: CONFIG_CRASH_DUMP is not set; there is no kdump to test")
    if cfg.values.get("CONFIG_KEXEC") != "y":
        raise KernelFetchError(f"{kernel.release}: CONFIG_KEXEC is not set; kexec-tools cannot load a crash kernel")
    if cfg.values.get("CONFIG_CRASH_HOTPLUG") == "y":
        return "in-kernel", cfg
    return "legacy", cfg


def scenario_summary(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "scenario.json").read_text())
    return data
