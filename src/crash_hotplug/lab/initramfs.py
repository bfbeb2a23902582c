"""The guest initramfs images: busybox + kexec-tools for the first kernel, busybox for the capture kernel.

The archives are ``newc`` cpio (``usr/gen_init_cpio.c``'s format, which the kernel's
``init/initramfs.c`` unpacks), written here directly so no host ``cpio`` is needed, then gzipped.
Both ``/init`` scripts leave a plain ``sh`` on ``ttyS0`` with echo off, which ``guest.py`` drives.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from crash_hotplug.lab.debian import GuestTools, KernelPackage
from crash_hotplug.lab.errors import InitramfsError

__all__ = [
    "CAPTURE_CMDLINE",
    "DYNDBG_FILES",
    "Cpio",
    "build_capture_initramfs",
    "build_labtool",
    "build_main_initramfs",
    "kexec_libraries",
]

# Files whose pr_debug()/kexec_dprintk() lines the guest turns on (dynamic debug), so that dmesg
# has "crash hp: ..." and "Loaded ELF headers at ..." lines.
DYNDBG_FILES = (
    "crash_core.c",
    "crash_reserve.c",
    "crash_dump.c",
    "crash.c",
    "kexec_file.c",
    "kexec_core.c",
    "kexec.c",
    "kexec-bzimage64.c",
    "machine_kexec_64.c",
)
# acpi_no_memhotplug, as kdump-utils passes it: otherwise the capture kernel (6.12.43, 7.3) onlines
# the still-plugged DIMMs as its own RAM and overwrites the crashed kernel's pages there.
CAPTURE_CMDLINE = "console=ttyS0 nr_cpus=1 irqpoll reset_devices nokaslr acpi_no_memhotplug"
READY_MARK = "@@READY"

_INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for f in {dyndbg}; do echo "file $f +p" > /proc/dynamic_debug/control 2>/dev/null; done
dmesg -n 1
# Interrupt on every received byte: QEMU's 16550 receive-timeout interrupt can lag by seconds under TCG.
echo 1 > /sys/class/tty/ttyS0/rx_trig_bytes 2>/dev/null
if [ -e /proc/vmcore ]; then role=capture; else role=main; fi
# The driven shell's stderr is not a tty, so it is not interactive: no prompts, no line editing.
# (Each command's stderr is sent to the console by the driver's "2>&1".)
export PS1= PS2=
exec setsid sh -c "stty -echo -onlcr; echo {ready} $role; exec sh 2>/dev/null" </dev/ttyS0 >/dev/ttyS0 2>&1
"""

# /bin/snap: every file the vectors' snapshots hold, each as "@@F path", base64 lines, "@@E ok|err".
_SNAP = r"""#!/bin/sh
emit() {
  [ -e "$2" ] || return 0
  echo "@@F $1"
  if base64 "$2" 2>/dev/null; then echo "@@E ok"; else echo "@@E err"; fi
}
one() { emit "$1" "$1"; }
one /proc/iomem
one /proc/cmdline
one /proc/sys/kernel/osrelease
grep -E ' (_text|_stext|_etext|_end)$' /proc/kallsyms > /tmp/kallsyms
emit /proc/kallsyms /tmp/kallsyms
head -c 65536 /proc/kcore > /tmp/kcore
emit /proc/kcore /tmp/kcore
c=/sys/devices/system/cpu
for f in possible present online offline kernel_max crash_hotplug; do one $c/$f; done
for d in $c/cpu[0-9]*; do
  for f in online crash_notes crash_notes_size; do one $d/$f; done
done
m=/sys/devices/system/memory
for f in block_size_bytes crash_hotplug auto_online_blocks; do one $m/$f; done
for d in $m/memory[0-9]*; do
  for f in state phys_index valid_zones; do one $d/$f; done
done
for f in vmcoreinfo kexec_crash_loaded kexec_crash_size crash_elfcorehdr_size kexec_loaded; do
  one /sys/kernel/$f
done
dmesg > /tmp/dmesg
emit /var/log/dmesg /tmp/dmesg
echo "@@SNAP-END"
"""


@dataclass
class Cpio:
    """An in-memory ``newc`` archive (the format of ``usr/gen_init_cpio.c``)."""

    _chunks: list[bytes] = field(default_factory=list)
    _ino: int = 721

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        namez = name.encode() + b"\0"
        fields = [
            self._ino,
            mode,
            0,
            0,
            1,
            0,
            len(data),
            0,
            0,
            rdev[0],
            rdev[1],
            len(namez),
            0,
        ]
        hdr = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        blob = hdr + namez
        blob += b"\0" * (-len(blob) % 4)
        blob += data
        blob += b"\0" * (-len(blob) % 4)
        self._chunks.append(blob)

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def to_bytes(self) -> bytes:
        trailer = Cpio(_ino=0)
        trailer._entry("TRAILER!!!", 0)
        blob = b"".join(self._chunks) + trailer._chunks[0]
        return blob + b"\0" * (-len(blob) % 512)

    def gzip(self) -> bytes:
        return gzip.compress(self.to_bytes(), compresslevel=6, mtime=0)


def _base(cpio: Cpio, tools: GuestTools, labtool: Path) -> None:
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "usr", "usr/bin", "usr/sbin", "var", "var/log"):
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", tools.busybox.read_bytes())
    cpio.file("bin/labtool", labtool.read_bytes())
    cpio.file("init", _INIT.format(dyndbg=" ".join(DYNDBG_FILES), ready=READY_MARK).encode())


def kexec_libraries(tools: GuestTools) -> list[tuple[str, Path]]:
    """(guest path, host file) for every shared object kexec loads, found with ``ldd`` in the sysroot."""
    return shared_libraries(tools.kexec, tools.sysroot)


def shared_libraries(binary: Path, sysroot: Path) -> list[tuple[str, Path]]:
    """(guest path, host file) for every shared object ``binary`` loads, found with ``ldd`` in ``sysroot``."""
    libdirs = [sysroot / "lib/x86_64-linux-gnu", sysroot / "usr/lib/x86_64-linux-gnu"]
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(str(d) for d in libdirs))
    proc = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or "not found" in proc.stdout:
        raise InitramfsError(f"cannot resolve {binary.name}'s libraries: {proc.stdout}{proc.stderr}")
    out: list[tuple[str, Path]] = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if "=>" in parts:
            host = Path(parts[parts.index("=>") + 1])
            out.append((f"lib/x86_64-linux-gnu/{parts[0]}", host))
        elif parts and parts[0].startswith("/lib64/"):
            loader = sysroot / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
            out.append(("lib64/ld-linux-x86-64.so.2", loader if loader.exists() else Path(parts[0])))
    return out


def build_labtool(cache: Path) -> Path:
    """Compile ``data/lab/labtool.c`` with ``gcc -static`` into the cache (once per source hash)."""
    src = resources.files("crash_hotplug").joinpath("data/lab/labtool.c").read_bytes()
    out = cache / "bin" / f"labtool-{hashlib.sha256(src).hexdigest()[:12]}"
    if out.exists():
        return out
    if shutil.which("gcc") is None:
        raise InitramfsError("gcc is needed to build the guest helper (labtool)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_src = out.with_suffix(".c")
    tmp_src.write_bytes(src)
    proc = subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-o", str(out), str(tmp_src)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise InitramfsError(f"gcc -static labtool.c failed (is libc6-dev installed?): {proc.stderr[-800:]}")
    return out


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def _cached(out: Path, blob: bytes) -> Path:
    """Write ``blob`` to ``out`` in the cache unless it is there already (names carry a digest)."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(blob)
    return out


def build_capture_initramfs(cache: Path, tools: GuestTools, labtool: Path) -> Path:
    """The capture kernel's initramfs: busybox, labtool, the same ``/init`` and, as a distribution's
    kdump initramfs has it, makedumpfile with its shared libraries (the core collector)."""
    cpio = Cpio()
    _base(cpio, tools, labtool)
    if tools.makedumpfile is not None and tools.makedumpfile_sysroot is not None:
        for d in ("lib", "lib/x86_64-linux-gnu", "lib64"):
            cpio.dir(d)
        cpio.file("sbin/makedumpfile", tools.makedumpfile.read_bytes())
        for guest_path, host in shared_libraries(tools.makedumpfile, tools.makedumpfile_sysroot):
            cpio.file(guest_path, host.resolve().read_bytes())
    blob = cpio.gzip()
    out = cache / "initramfs" / f"capture-{_digest([blob])}.cpio.gz"
    return _cached(out, blob)


def build_main_initramfs(cache: Path, kernel: KernelPackage, tools: GuestTools, labtool: Path) -> Path:
    """The first kernel's initramfs: busybox, kexec + its libraries, labtool, ``/bin/snap``, and
    ``/kdump/{vmlinuz,capture.cpio.gz}`` (the capture kernel is the same kernel)."""
    capture = build_capture_initramfs(cache, tools, labtool)
    cpio = Cpio()
    _base(cpio, tools, labtool)
    for d in ("lib", "lib/x86_64-linux-gnu", "lib64", "kdump"):
        cpio.dir(d)
    cpio.file("sbin/kexec", tools.kexec.read_bytes())
    for guest_path, host in kexec_libraries(tools):
        cpio.file(guest_path, host.resolve().read_bytes())
    cpio.file("bin/snap", _SNAP.encode())
    cpio.file("kdump/vmlinuz", kernel.vmlinuz.read_bytes(), 0o644)
    cpio.file("kdump/capture.cpio.gz", capture.read_bytes(), 0o644)
    blob = cpio.gzip()
    out = cache / "initramfs" / f"rootfs-{kernel.release}-{_digest([blob])}.cpio.gz"
    return _cached(out, blob)
