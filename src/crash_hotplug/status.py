"""Will kdump on this machine survive CPU and memory hotplug? The verdict behind ``crash-hotplug status``.

Read from a root (a live host, a snapshot, an extracted sosreport): whether a crash kernel is
loaded (``/sys/kernel/kexec_crash_loaded``), whether the kernel updates the elfcorehdr itself
(``cpu/crash_hotplug`` and ``memory/crash_hotplug``, ``crash_check_hotplug_support`` in
``kernel/crash_core.c``), what the installed udev rules do on each hotplug uevent
(:mod:`crash_hotplug.legacy.udev`), and how much room the header segment has left
(``arch_crash_get_elfcorehdr_size``, ``crash_load_segments``).

Every fact is known or unknown, never guessed: a file the root does not have is *absent* on a
live host or snapshot (the kernel does not provide it) and *unknown* in a sosreport that did not
collect it. The verdict is ``safe`` only when every fact it needs is known and none is a risk;
each risk is one line naming its cause and what fixes it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crash_hotplug.crash.x86_64 import (
    arch_crash_get_elfcorehdr_size,
    crash_load_segments_memsz,
    prepare_elf_headers,
)
from crash_hotplug.elf.core import ElfCore
from crash_hotplug.errors import CrashHotplugError, SnapshotError
from crash_hotplug.facts import ABSENT, Lookup
from crash_hotplug.legacy.udev import HotplugEvent, Probe, RuleSet, evaluate, load_rules
from crash_hotplug.machine.kernel import KernelVersion
from crash_hotplug.machine.sysfs_values import parse_decimal, parse_flag
from crash_hotplug.snapshot.reader import CPU_DIR, MEM_DIR
from crash_hotplug.snapshot.sos import HostRoot, open_root

__all__ = [
    "EXIT_AT_RISK",
    "EXIT_SAFE",
    "HOTPLUG_EVENTS",
    "KdumpStatus",
    "Risk",
    "UdevVerdict",
    "kdump_status",
]

PAGE_SIZE = 4096
EXIT_SAFE = 0
EXIT_AT_RISK = 1

#: (subsystem, action, device) of the uevents a hotplug produces
HOTPLUG_EVENTS = (
    ("cpu", "add", "cpu4"),
    ("cpu", "remove", "cpu4"),
    ("cpu", "online", "cpu4"),
    ("cpu", "offline", "cpu4"),
    ("memory", "add", "memory40"),
    ("memory", "online", "memory40"),
    ("memory", "offline", "memory40"),
    ("memory", "remove", "memory40"),
)
#: events that must reload kdump for a header the kernel does not update: (new resource, gone resource)
_COVERS = {"cpu": (("add", "online"), ("remove", "offline")), "memory": (("add", "online"), ("remove", "offline"))}
#: x86_64 kernels whose header keeps a hot-removed DIMM until the next memory event
STALE_REMOVE_KERNELS = ("x86_64 kernels with CONFIG_CRASH_HOTPLUG, 6.6 and later (measured on 6.12.43 and "
                        "6.12.117; unchanged in source through 7.3)")
_SRAT = re.compile(r"SRAT: Node [0-9]+ PXM [0-9]+ \[mem (0x[0-9a-f]+)-(0x[0-9a-f]+)\] hotplug")
_CRASH_HP = re.compile(r"crash hp: hp_action ([0-9]+)")


@dataclass
class UdevVerdict:
    subsystem: str
    action: str
    #: True: the rules reload kdump on this event; False: they do not; None: it depends on what is listed
    reloads: bool | None
    by: list[str]
    depends_on: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Risk:
    """One reason kdump may not dump a panic: its cause and what fixes it."""

    code: str
    cause: str
    fix: str

    def line(self) -> str:
        return f"{self.cause} -- fix: {self.fix}"


@dataclass
class KdumpStatus:
    root: str
    root_kind: str
    kernel_release: str | None
    crash_loaded: bool | None
    crash_size: int | None
    #: value of the sysfs attribute; "absent" when the kernel has none; None when unknown
    cpu_crash_hotplug: int | str | None
    memory_crash_hotplug: int | str | None
    kernel_has_crash_hotplug: bool | None = None
    header_used: int | None = None
    header_bufsz: int | None = None
    header_ranges: int | None = None
    segment_memsz: int | None = None
    sysfs_elfcorehdr_size: int | None = None
    hot_addable_ranges: int | None = None
    udev: list[UdevVerdict] = field(default_factory=list)
    udev_rule_files: list[str] = field(default_factory=list)
    udev_overridden: list[str] = field(default_factory=list)
    risks: list[Risk] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def headroom_phdrs(self) -> int | None:
        if self.header_used is None or self.segment_memsz is None:
            return None
        return (self.segment_memsz - self.header_used) // 56

    @property
    def verdict(self) -> str:
        if self.risks:
            return "at risk"
        return "unknown" if self.unknown else "safe"

    @property
    def exit_status(self) -> int:
        """0 safe, 1 at risk or not known to be safe."""
        return EXIT_SAFE if self.verdict == "safe" else EXIT_AT_RISK

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["headroom_phdrs"] = self.headroom_phdrs
        d["verdict"] = self.verdict
        d["exit_status"] = self.exit_status
        d["risks"] = [{"code": r.code, "cause": r.cause, "fix": r.fix} for r in self.risks]
        return d


def _flag(host: HostRoot, rel: str) -> int | str | None:
    """A 0/1 attribute: its value, "absent", or None when unknown. A value that is neither 0 nor 1
    (``0x1``, ``1\\0``, garbage) is not a kernel's: :class:`SnapshotError`, never a guessed "no"."""
    got = host.lookup(rel)
    if got is None:
        return None
    if got is ABSENT:
        return "absent"
    assert isinstance(got, str)
    try:
        return int(parse_flag(got))
    except ValueError as e:
        raise SnapshotError(host.fs.display(rel), str(e).removeprefix("flag: ")) from None


def _int(host: HostRoot, rel: str) -> int | None:
    """An unsigned decimal attribute (``%zu``/``%u``), or None when absent or unknown; ``-1`` or
    anything else that is not a kernel's is :class:`SnapshotError`."""
    got = host.lookup(rel)
    if not isinstance(got, str):
        return None
    try:
        return parse_decimal(got)
    except ValueError as e:
        raise SnapshotError(host.fs.display(rel), str(e).removeprefix("value: ")) from None


def _probe(host: HostRoot) -> Probe:
    def read(path: str) -> Lookup:
        return host.lookup(path.lstrip("/"))

    def exists(path: str) -> bool | None:
        got = host.lookup_exists(path.lstrip("/"))
        return got

    cmdline = host.lookup("proc/cmdline")
    return Probe(read=read, exists=exists, cmdline=cmdline if isinstance(cmdline, str) else None)


def _event(subsystem: str, action: str, dev: str, flag: int | str | None) -> HotplugEvent:
    parent: dict[str, str | None] = {}
    if flag is None:
        parent["crash_hotplug"] = None
    elif isinstance(flag, int):
        parent["crash_hotplug"] = str(flag)
    devpath = f"/devices/system/{subsystem}/{dev}"
    return HotplugEvent(subsystem, action, dev, parent, devpath=devpath)


def kdump_status(root_dir: Path) -> KdumpStatus:
    """Collect the facts and the verdict; what cannot be read becomes unknown, not an exception
    (except a root that is not a directory at all)."""
    host = open_root(Path(root_dir))
    release = host.kernel_release()
    st = KdumpStatus(
        root=str(root_dir),
        root_kind=host.kind,
        kernel_release=release,
        crash_loaded=None,
        crash_size=_int(host, "sys/kernel/kexec_crash_size"),
        cpu_crash_hotplug=_flag(host, f"{CPU_DIR}/crash_hotplug"),
        memory_crash_hotplug=_flag(host, f"{MEM_DIR}/crash_hotplug"),
        sysfs_elfcorehdr_size=_int(host, "sys/kernel/crash_elfcorehdr_size"),
    )
    loaded = _flag(host, "sys/kernel/kexec_crash_loaded")
    st.crash_loaded = None if not isinstance(loaded, int) else bool(loaded)
    if loaded == "absent":
        st.crash_loaded = False
        st.risks.append(Risk("no-kexec", "the kernel has no /sys/kernel/kexec_crash_loaded (no CONFIG_KEXEC_CORE): "
                             "no crash kernel can be loaded, a panic is never dumped",
                             "run a kernel built with CONFIG_KEXEC_CORE and CONFIG_CRASH_DUMP"))
    elif loaded is None:
        st.unknown.append(f"whether a crash kernel is loaded: {host.why_unknown('sys/kernel/kexec_crash_loaded')}")
    st.kernel_has_crash_hotplug = _has_crash_hotplug(host, st, release)
    _header(host, st)
    _udev(host, st)
    _risks(host, st)
    return st


def _has_crash_hotplug(host: HostRoot, st: KdumpStatus, release: str | None) -> bool | None:
    flags = (st.cpu_crash_hotplug, st.memory_crash_hotplug)
    if any(isinstance(f, int) for f in flags) or st.sysfs_elfcorehdr_size is not None:
        return True
    if release is not None:
        try:
            if KernelVersion.parse(release) < KernelVersion(6, 6):
                return False  # CONFIG_CRASH_HOTPLUG came with 6.6
        except ValueError:
            pass
    if all(f == "absent" for f in flags) and host.lookup("sys/kernel/crash_elfcorehdr_size") is ABSENT:
        return False
    st.unknown.append("whether the kernel updates the header on hotplug: "
                      + host.why_unknown(f"{MEM_DIR}/crash_hotplug"))
    return None


def _header(host: HostRoot, st: KdumpStatus) -> None:
    try:
        state = host.kernel_state()
        buf, nr = prepare_elf_headers(state)
    except CrashHotplugError as e:
        st.notes.append(f"the header cannot be built from this root: {e}")
        return
    st.header_used = ElfCore.parse(buf).used_size
    st.header_bufsz = len(buf)
    st.header_ranges = nr
    memsz = crash_load_segments_memsz(state.config, len(buf), nr)
    st.segment_memsz = -(-memsz // PAGE_SIZE) * PAGE_SIZE
    if state.config.crash_hotplug and st.sysfs_elfcorehdr_size is None:
        st.sysfs_elfcorehdr_size = arch_crash_get_elfcorehdr_size(state.config)


def _udev(host: HostRoot, st: KdumpStatus) -> None:
    try:
        rules = load_rules(host.path)
    except CrashHotplugError as e:
        st.unknown.append(f"what udev does on hotplug: {e}")
        rules = RuleSet(())
    st.udev_rule_files = [f.path for f in rules.files]
    st.udev_overridden = list(rules.overridden)
    st.notes.extend(rules.warnings)
    for path in rules.unreadable:
        st.unknown.append(f"what udev does on hotplug: {path} could not be read")
    if not host.has_rule_dirs():
        st.unknown.append(f"what udev does on hotplug: {host.why_unknown('usr/lib/udev/rules.d')}")
    probe = _probe(host)
    for subsystem, action, dev in HOTPLUG_EVENTS:
        flag = st.cpu_crash_hotplug if subsystem == "cpu" else st.memory_crash_hotplug
        res = evaluate(rules, _event(subsystem, action, dev, flag), probe)
        st.udev.append(UdevVerdict(subsystem, action, res.reload_verdict, res.reloaders, res.deciding_assumptions))


def _verdicts(st: KdumpStatus, subsystem: str) -> dict[str, bool | None]:
    return {v.action: v.reloads for v in st.udev if v.subsystem == subsystem}


def _risks(host: HostRoot, st: KdumpStatus) -> None:
    if st.crash_loaded is False and not any(r.code == "no-kexec" for r in st.risks):
        st.risks.append(Risk("not-loaded", "no crash kernel is loaded (/sys/kernel/kexec_crash_loaded is 0): a panic "
                             "now is not dumped", "load one: kdumpctl start, kdump-config load, or systemctl start "
                             "kdump"))
    for v in st.udev:
        if v.reloads is None and v.by:
            st.unknown.append(f"whether udev reloads kdump on {v.subsystem} {v.action}: it does when "
                              + "; ".join(v.depends_on))
    reloading = [v for v in st.udev if v.reloads]
    if reloading:
        by = reloading[0].by[0] if reloading[0].by else "?"
        events = ", ".join(f"{v.subsystem} {v.action}" for v in reloading)
        updates = isinstance(st.memory_crash_hotplug, int) and st.memory_crash_hotplug == 1
        cause = (f"udev unloads then reloads kdump on {events} ({by}): a panic between the unload and the load is "
                 f"not dumped")
        if updates:
            cause += ", and this kernel already updates the header itself (crash_hotplug is 1)"
            fix = ("make the rule skip when ATTRS{crash_hotplug}==\"1\" (as kdump-utils 98-kexec.rules does), or mask "
                   "it with a symlink to /dev/null of the same name in /etc/udev/rules.d")
        else:
            fix = ("run a kernel with CONFIG_CRASH_HOTPLUG (6.6+) and load kdump with kexec -s (kexec_file_load) "
                   "or kexec --hotplug, with a rule that skips the reload when crash_hotplug is 1")
        st.risks.append(Risk("reload-races", cause, fix))
    for subsystem in ("cpu", "memory"):
        _stale_header(st, subsystem)
    if (st.kernel_has_crash_hotplug and st.crash_loaded
            and any(isinstance(f, int) and f == 0 for f in (st.cpu_crash_hotplug, st.memory_crash_hotplug))):
        st.risks.append(Risk(
            "kexec-load-without-hotplug",
            "the crash kernel was loaded with kexec_load without --hotplug: crash_hotplug reads 0 although the kernel "
            "supports it, so hotplug leaves this image's header stale (or reloads it, where a rule checks "
            "crash_hotplug)",
            "reload kdump with kexec -s (kexec_file_load), or with kexec-tools 2.0.28+ and --hotplug"))
    dmesg = host.lookup("var/log/dmesg")
    log = dmesg if isinstance(dmesg, str) else host.dmesg()
    _buffer(host, st, log)
    _stale_removal(st, log)


def _stale_header(st: KdumpStatus, subsystem: str) -> None:
    flag = st.cpu_crash_hotplug if subsystem == "cpu" else st.memory_crash_hotplug
    if isinstance(flag, int) and flag == 1:
        return
    if flag is None and st.kernel_has_crash_hotplug is not False:
        return  # unknown; said already
    if st.crash_loaded is False:
        return
    verdicts = _verdicts(st, subsystem)
    for group in _COVERS[subsystem]:
        got = [verdicts.get(a) for a in group]
        if any(g is True for g in got):
            continue
        if any(g is None for g in got):
            return  # unknown; said already
        why = ("the kernel has no crash hotplug (no /sys/devices/system/"
               f"{subsystem}/crash_hotplug)" if flag == "absent" or st.kernel_has_crash_hotplug is False
               else f"the kernel does not update this image ({subsystem}/crash_hotplug reads 0)")
        st.risks.append(Risk(
            f"stale-{subsystem}",
            f"{subsystem} {'/'.join(group)} leaves the header stale: {why} and no udev rule reloads kdump on "
            f"{subsystem} {' or '.join(group)}, so a panic after it dumps without the change",
            "install the distribution's kdump udev rule (kdump-utils or kexec-tools 98-kexec.rules, kdump-tools "
            "50-kdump-tools.rules), or run a kernel with CONFIG_CRASH_HOTPLUG (6.6+) and load with kexec -s"))


def _buffer(host: HostRoot, st: KdumpStatus, log: str | None) -> None:
    if not (isinstance(st.memory_crash_hotplug, int) and st.memory_crash_hotplug == 1):
        return
    headroom = st.headroom_phdrs
    if headroom is None:
        return
    if log is None:
        st.notes.append("hot-addable memory unknown (no kernel log): the header's room for "
                        f"{headroom} more memory ranges is not checked against it")
        return
    spans = [(int(a, 16), int(b, 16)) for a, b in _SRAT.findall(log)]
    block = host.lookup(f"{MEM_DIR}/block_size_bytes")
    if not spans or not isinstance(block, str):
        st.notes.append("hot-addable memory unknown (no ACPI SRAT hotplug range in the kernel log): the header's "
                        f"room for {headroom} more memory ranges is not checked against it")
        return
    try:
        block_size = int(block.strip(), 16)
    except ValueError:
        return
    hot = sum(b - a + 1 for a, b in spans)
    st.hot_addable_ranges = -(-hot // block_size) if block_size else None
    if st.hot_addable_ranges is not None and st.hot_addable_ranges > headroom:
        st.risks.append(Risk(
            "buffer-too-small",
            f"the elfcorehdr segment has room for {headroom} more memory ranges but up to {st.hot_addable_ranges} "
            f"can be hot-added (ACPI SRAT hotplug ranges, one per {block_size >> 20} MiB block): past that the kernel "
            "refuses the update and keeps the stale header",
            "a kernel with a larger CONFIG_CRASH_MAX_MEMORY_RANGES, or larger memory blocks/DIMMs"))


def _stale_removal(st: KdumpStatus, log: str | None) -> None:
    if not (isinstance(st.memory_crash_hotplug, int) and st.memory_crash_hotplug == 1):
        return
    actions = [int(a) for a in _CRASH_HP.findall(log or "") if a in ("3", "4")]
    if actions and actions[-1] == 4:
        st.risks.append(Risk(
            "removed-dimm-in-header",
            f"the last memory event was a removal (kernel log: crash hp: hp_action 4), and {STALE_REMOVE_KERNELS} "
            "keep the removed range in the header until the next memory event: a panic now dumps a range that is "
            "gone",
            "cause one memory event (offline, then online, one hot-pluggable memory block) or reload kdump once"))
    elif not actions:
        st.notes.append(f"{STALE_REMOVE_KERNELS} keep a hot-removed DIMM in the header until the next memory "
                        "event; whether one is pending cannot be seen here (no 'crash hp' debug lines in the "
                        "kernel log)")

