"""The pseries guest's initramfs images: busybox + kexec-tools (ppc64el) for the first kernel,
busybox for the capture kernel. Same ``newc`` writer and shell protocol as the amd64 lab
(``initramfs.Cpio``), with the console on ``hvc0`` and a snapshot that adds the whole
``/proc/device-tree`` (as a tar stream: kexec-tools flattens all of it into the crash FDT).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from crash_hotplug.lab.debian import KernelPackage
from crash_hotplug.lab.debian_ppc64 import Ppc64GuestTools
from crash_hotplug.lab.initramfs import _SNAP as _SNAP_AMD64
from crash_hotplug.lab.initramfs import READY_MARK, Cpio

__all__ = [
    "CAPTURE_CMDLINE_PPC64",
    "DT_TAR",
    "DYNDBG_FILES_PPC64",
    "build_capture_initramfs_ppc64",
    "build_main_initramfs_ppc64",
]

# The powerpc crash-hotplug files whose pr_debug() lines the guest turns on.
DYNDBG_FILES_PPC64 = (
    "crash_core.c",
    "crash_reserve.c",
    "crash_dump.c",
    "kexec_core.c",
    "kexec.c",
    "crash.c",
    "ranges.c",
    "core_64.c",
    "hotplug-memory.c",
    "hotplug-cpu.c",
)
#: the capture kernel's command line (kexec-tools appends ``elfcorehdr=<addr>K``), as in the vectors
CAPTURE_CMDLINE_PPC64 = "console=hvc0 nr_cpus=1 reset_devices"
#: the snapshot's name for the tar stream of ``/sys/firmware/devicetree/base``
DT_TAR = "/proc/device-tree.tar.gz"

_INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for f in {dyndbg}; do echo "file $f +p" > /proc/dynamic_debug/control 2>/dev/null; done
dmesg -n 1
if [ -e /proc/vmcore ]; then role=capture; else role=main; fi
export PS1= PS2=
exec setsid sh -c "stty -echo -onlcr; echo {ready} $role; exec sh 2>/dev/null" </dev/hvc0 >/dev/hvc0 2>&1
"""

# /bin/snap: the amd64 lab's file list, plus the whole device tree as one gzipped tar archive.
_DT_LINES = """tar -C /sys/firmware/devicetree -czf /tmp/dt.tar base
emit {dt_tar} /tmp/dt.tar
rm -f /tmp/dt.tar
"""
_SNAP = _SNAP_AMD64.replace("dmesg > /tmp/dmesg\n", _DT_LINES + "dmesg > /tmp/dmesg\n", 1)


def _base(cpio: Cpio, tools: Ppc64GuestTools) -> None:
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "usr", "usr/bin", "usr/sbin", "var", "var/log"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", tools.busybox.read_bytes())
    cpio.file("init", _INIT.format(dyndbg=" ".join(DYNDBG_FILES_PPC64), ready=READY_MARK).encode())


def _cached(out: Path, blob: bytes) -> Path:
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.partial")
        tmp.write_bytes(blob)
        tmp.replace(out)
    return out


def build_capture_initramfs_ppc64(cache: Path, tools: Ppc64GuestTools) -> Path:
    """The capture kernel's initramfs: busybox and the same ``/init``."""
    cpio = Cpio()
    _base(cpio, tools)
    blob = cpio.gzip()
    return _cached(cache / "initramfs" / f"capture-ppc64el-{hashlib.sha256(blob).hexdigest()[:16]}.cpio.gz", blob)


def build_main_initramfs_ppc64(cache: Path, kernel: KernelPackage, tools: Ppc64GuestTools) -> Path:
    """The first kernel's initramfs: busybox, kexec + its loader and libraries, ``/bin/snap``, and
    ``/kdump/{vmlinux,capture.cpio.gz}`` (the capture kernel is the same ELF vmlinux)."""
    capture = build_capture_initramfs_ppc64(cache, tools)
    h = hashlib.sha256()
    for part in (kernel.vmlinuz, capture, tools.kexec, *(host for _g, host in tools.kexec_libraries)):
        st = part.stat()
        h.update(f"{part}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update((_INIT + _SNAP).encode())
    out = cache / "initramfs" / f"rootfs-{kernel.release}-{h.hexdigest()[:16]}.cpio.gz"
    if out.exists():
        return out
    cpio = Cpio()
    _base(cpio, tools)
    dirs = {str(Path(g).parent) for g, _h in tools.kexec_libraries}
    for sub in sorted({p for d in dirs for p in _parents(d)}):
        cpio.dir(sub)
    cpio.dir("kdump")
    cpio.file("sbin/kexec", tools.kexec.read_bytes())
    for guest_path, host in tools.kexec_libraries:
        cpio.file(guest_path, host.resolve().read_bytes())
    cpio.file("bin/snap", _SNAP.replace("{dt_tar}", DT_TAR).encode())
    cpio.file("kdump/vmlinux", kernel.vmlinuz.read_bytes(), 0o644)
    cpio.file("kdump/capture.cpio.gz", capture.read_bytes(), 0o644)
    return _cached(out, cpio.gzip())


def _parents(d: str) -> list[str]:
    parts = Path(d).parts
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
