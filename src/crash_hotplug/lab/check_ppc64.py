"""``lab check`` of a pseries run: every header and every crash FDT the real kernel and kexec-tools
left in memory, against the ppc64 model.

Headers. The load step's header is kexec-tools' (``kexec_load``): the model is
``crash_create_elf64_headers_ppc64`` on that step's snapshot. After it, the header is the
kernel's: ``prepare_elf_headers_ppc64`` on the snapshot of the last step at which the kernel
rebuilt it (a CPU hot-add leaves it alone), with ``[0, 64K)`` pointed at the backup segment, and,
for a block offlined through sysfs, that block cut out with ``remove_mem_range`` (one LMB event:
the header of a single LMB's removal, which a DIMM's ``device_del`` only shows for its last LMB).

Crash FDTs. The load step's FDT is rebuilt from that step's whole ``/proc/device-tree`` with the
fs2dt model (``kexec.fs2dt``), kexec-tools' inputs taken from the load (``kexec -d``'s segments,
the crashkernel and RTAS ranges of the tree), then ``fixup_dt`` with ``kdump_fdt_extra_size`` and
the FDT's own reservation entry. Every later step's FDT is the previous step's real FDT with what
the kernel does for that step's events: nothing for memory, ``update_cpus_node`` once per CPU
hot-add, with the ``/cpus`` children in the kernel's order (each hot-added node at the head, as
``of_attach_node`` links it) and each node's property values read from that step's
``/proc/device-tree``. ``/proc/device-tree`` does not show the order of a live node's property list
(sysfs lists files in its own order); it is taken from the real FDT (reversed: ``fdt_setprop``
puts each new property first), and the check says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crash_hotplug.crash.ppc64 import prepare_elf_headers_ppc64, update_cpus_node
from crash_hotplug.elf.compare import first_difference
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.fdt.blob import FdtBlob
from crash_hotplug.fdt.tree import fdt_parse
from crash_hotplug.kexec.fs2dt import (
    Fs2dtInput,
    add_usable_mem_rgns,
    comparefunc_key,
    create_flatten_tree,
    patch_dt_reserve,
)
from crash_hotplug.kexec.kexec_load_ppc64 import crash_create_elf64_headers_ppc64, fixup_dt, kdump_fdt_extra_size
from crash_hotplug.lab.check import CheckReport, StepResult, _audit_hook, _used_size, rebuild_sources
from crash_hotplug.lab.errors import LabError, RunDirError
from crash_hotplug.lab.rundir import RunDir, Step, parse_cpulist
from crash_hotplug.machine.pseries import OfNode
from crash_hotplug.snapshot.model_ppc64 import pseries_from_snapshot
from crash_hotplug.snapshot.reader_ppc64 import read_kernel_state_ppc64

__all__ = ["check_run_ppc64", "first_crash_fdt", "is_ppc64_run"]

PAGE = 4096
KDUMP_BACKUP_LIMIT = 0x10000


def is_ppc64_run(run_dir: Path) -> bool:
    try:
        data: dict[str, Any] = json.loads((run_dir / "scenario.json").read_text())
    except (OSError, ValueError):
        return False
    return data.get("arch") == "ppc64le"


def _be(path: Path) -> int:
    try:
        return int.from_bytes(path.read_bytes(), "big")
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read ({exc.strerror})") from exc


def _segments(st: Step) -> list[dict[str, int]]:
    segs = st.info.get("kexec_segments")
    if not isinstance(segs, list) or len(segs) < 6:
        raise RunDirError(f"{st.path}/step.json: no kexec_segments of a ppc64 kexec -p load (6 segments)")
    return segs


def _node(path: Path, order: list[str] | None) -> OfNode:
    """A live CPU node from its ``/proc/device-tree`` directory; properties in ``order`` (their
    list order in the kernel) where known, else in the directory's name order."""
    names = order if order is not None else sorted(p.name for p in path.iterdir() if p.is_file())
    props = []
    for name in names:
        f = path / name
        if not f.is_file():
            raise LabError(f"{f}: property of the crash FDT's node is not in the snapshot's /proc/device-tree")
        props.append((name, f.read_bytes()))
    return OfNode(path.name, props)


def first_crash_fdt(st: Step, capture_cmdline: str) -> bytes:
    """kexec-tools' crash FDT for the load step ``st``: fs2dt on its whole ``/proc/device-tree``,
    ``fixup_dt``, and the FDT's own reservation entry (``kexec -d``'s segment 5)."""
    dt = st.root / "proc/device-tree"
    segs = _segments(st)
    backup, hdr, initrd, fdt_seg = segs[1], segs[2], segs[4], segs[5]
    crash_base, crash_size = _be(dt / "chosen/linux,crashkernel-base"), _be(dt / "chosen/linux,crashkernel-size")
    usable: list[tuple[int, int]] = []
    if (dt / "rtas/linux,rtas-base").is_file():
        add_usable_mem_rgns(usable, _be(dt / "rtas/linux,rtas-base"), _be(dt / "rtas/rtas-size"))
    add_usable_mem_rgns(usable, 0, crash_base + crash_size)
    inp = Fs2dtInput(
        cmdline=f"{capture_cmdline} elfcorehdr={hdr['mem'] // 1024}K",
        initrd=(initrd["mem"], initrd["bufsz"]),
        usable=usable,
        # kexec-ppc64.c (crash region below the kernel), then crashdump-ppc64.c (backup, elfcorehdr:
        # kexec-tools 2.0.32 reserves the header's buffer size, not its --hotplug segment size)
        reserves=[(KDUMP_BACKUP_LIMIT, crash_base - KDUMP_BACKUP_LIMIT), (backup["mem"], backup["bufsz"]),
                  (hdr["mem"], hdr["bufsz"])],
    )
    blob = create_flatten_tree(dt, inp)
    cpus = sorted((d for d in (dt / "cpus").iterdir() if d.is_dir()), key=lambda d: comparefunc_key(d.name))
    nodes = [_node(d, None) for d in cpus]
    cpu = st.root / "sys/devices/system/cpu"
    counts = [len(parse_cpulist((cpu / f).read_text())) for f in ("possible", "present", "online")]
    extra = kdump_fdt_extra_size(counts[0], counts[1], counts[2], nodes)
    return patch_dt_reserve(fixup_dt(blob, extra), fdt_seg["mem"])


def _fdt_difference(model: bytes, real: bytes) -> str | None:
    if model == real:
        return None
    if len(model) != len(real):
        return f"totalsize {len(model)} (model) vs {len(real)} (real)"
    at = next(i for i in range(len(model)) if model[i] != real[i])
    return f"first differing byte at {at:#x} of {len(real)}"


def _cpu_update(prev: bytes, st: Step, earlier: list[int], added_order: list[int]) -> bytes:
    """The kernel's FDT after this step's CPU hot-adds: ``update_cpus_node`` per add (``earlier``:
    the cores hot-added before, oldest first; one thread per core, so a CPU's number is its ``reg``)."""
    real = fdt_parse(st.path.joinpath("crash-fdt.dtb").read_bytes(), f"{st.path}/crash-fdt.dtb").root.find("/cpus")
    dt_cpus = st.root / "proc/device-tree/cpus"
    order = {c.name: [p.name for p in reversed(c.props)] for c in (real.children if real is not None else [])}

    def by_reg(d: Path) -> int:
        raw = (d / "reg").read_bytes()
        return int.from_bytes(raw[:4], "big")

    dirs = {by_reg(d): d for d in dt_cpus.iterdir() if d.is_dir() and (d / "reg").is_file()}
    blob = FdtBlob(prev)
    boot = [r for r in sorted(dirs) if r not in added_order and r not in earlier]
    for i in range(1, len(added_order) + 1):
        live = [*reversed(earlier + added_order[:i]), *boot]
        nodes = [_node(dirs[r], order.get(dirs[r].name)) for r in live if r in dirs]
        update_cpus_node(blob, nodes)
    return blob.data()


def _offlined(st: Step) -> tuple[int, int] | None:
    """The block a sysfs ``offline_block`` step took offline, as (base, size): the kernel's header
    for that event is memblock's memory (which still holds the block) with it cut out
    (``remove_mem_range``); after a DIMM's removal memblock has dropped it, so nothing is cut."""
    op = st.info.get("op", {})
    if op.get("op") != "offline_block":
        return None
    size = int((st.root / "sys/devices/system/memory/block_size_bytes").read_text().strip(), 16)
    return int(op["block"]) * size, size


def check_run_ppc64(run_dir: Path) -> CheckReport:
    """Check every step and the capture of a pseries run directory against the ppc64 model."""
    run = RunDir(run_dir)
    report = CheckReport(run_dir, run.kernel)
    steps = [s for s in run.steps() if (s.path / "elfcorehdr.bin").is_file()]
    if not steps:
        raise RunDirError(f"{run_dir} has no step with an elfcorehdr.bin")
    scen: dict[str, Any] = json.loads((run_dir / "scenario.json").read_text())
    capture_cmdline = str(scen.get("capture_cmdline_given") or "console=hvc0 nr_cpus=1 reset_devices")
    sources = rebuild_sources(steps)
    load_steps = {st.name for st in steps if st.info.get("op", {}).get("op") == "load"}

    def model_of(src: Step) -> bytes:
        backup = _segments(src)[1]["mem"]
        try:
            if src.name in load_steps:
                built = crash_create_elf64_headers_ppc64(pseries_from_snapshot(src.root), backup)
                return built + bytes(-len(built) % PAGE)
            state, dt = read_kernel_state_ppc64(src.root)
            return prepare_elf_headers_ppc64(state, dt.rtas, backup, _offlined(src))[0]
        except LabError:
            raise
        except Exception as exc:  # the model's own error, reported per run
            raise LabError(f"the ppc64 model failed on {src.root}: {exc}") from exc

    prev_fdt: bytes | None = None
    hot_added: list[int] = []
    for st in steps:
        src = sources[st.name]
        real = st.elfcorehdr
        built = model_of(src)
        diff = first_difference(built, real)
        own = None if src is st else first_difference(model_of(st), real) is not None
        report.steps.append(StepResult(st.name, str(st.info.get("action", "")), src.name, diff, own,
                                       real_size=_used_size(real, st.name), model_size=_used_size(built, src.name)))
        fdt_path = st.path / "crash-fdt.dtb"
        if not fdt_path.is_file():
            report.fdt.append((f"{st.name} crash FDT", None, "not captured"))
            continue
        fdt = fdt_path.read_bytes()
        op = st.info.get("op", {}).get("op")
        whole_dt = "device_tree_files" in st.info
        if not whole_dt and (st.name in load_steps or op == "add_cpus"):
            changed = None if prev_fdt is None else fdt != prev_fdt
            report.fdt.append((f"{st.name} crash FDT ({len(fdt)} B)", None,
                               f"not modelled: this snapshot holds only part of /proc/device-tree "
                               f"(changed vs previous step: {changed})"))
            prev_fdt = fdt
            continue
        if st.name in load_steps:
            model_fdt = first_crash_fdt(st, capture_cmdline)
            how = "fs2dt of the whole /proc/device-tree + fixup_dt"
        elif prev_fdt is None:
            report.fdt.append((f"{st.name} crash FDT", None, "no earlier FDT to start from"))
            prev_fdt = fdt
            continue
        elif op == "add_cpus" and st.info.get("cpus_added"):
            added = [int(c) for c in st.info["cpus_added"]]
            model_fdt = _cpu_update(prev_fdt, st, hot_added, added)
            hot_added += added
            how = (f"update_cpus_node for cpu {', '.join(map(str, st.info['cpus_added']))}; values from "
                   "/proc/device-tree, property order from the real FDT")
        else:
            model_fdt = prev_fdt
            how = "unchanged (the kernel rewrites the FDT on CPU hot-add only)"
        fdiff = _fdt_difference(model_fdt, fdt)
        report.fdt.append((f"{st.name} crash FDT ({len(fdt)} B) = model: {how}", fdiff is None, fdiff or "same bytes"))
        prev_fdt = fdt
    report.vmcore.extend(_vmcore_checks_ppc64(run, steps[-1]))
    return report


def _vmcore_checks_ppc64(run: RunDir, last: Step) -> list[tuple[str, bool | None, str]]:
    headers, capture = run.vmcore_headers(), run.capture()
    if headers is None or capture is None:
        return [("vmcore", None, "no capture in this run")]
    vm_loads = [(p.p_paddr, p.p_memsz) for p in ElfCore.parse(headers, "vmcore-headers.bin").load_phdrs]
    hdr_loads = [(p.p_paddr, p.p_memsz) for p in ElfCore.parse(last.elfcorehdr, last.name).load_phdrs]
    same = sorted(vm_loads) == sorted(hdr_loads)
    out: list[tuple[str, bool | None, str]] = [(
        f"vmcore PT_LOADs = {last.name} elfcorehdr PT_LOADs",
        same,
        f"{len(vm_loads)} PT_LOAD" if same else f"vmcore {vm_loads} vs header {hdr_loads}",
    )]
    cpu, boot = capture.get("panic_cpu"), capture.get("capture_boot_cpu_node")
    if cpu is not None:
        # one thread per core here: the panicking CPU's node is the one whose unit address is its number
        ok = None if not boot else str(boot).rsplit("@", 1)[-1] == f"{int(cpu):x}"
        out.append(("the capture kernel booted on the panicking CPU's FDT node", ok,
                    f"cpu{cpu}: {boot or 'no boot-core line in the capture kernel log'}"))
    out.append(_audit_hook(run, last))
    return out
