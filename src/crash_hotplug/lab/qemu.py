"""One QEMU guest: command line, lifecycle, QMP (``qemu.qmp``) and the serial console.

``VM`` is a context manager with an explicit lifecycle, after ``qemu.qmp``'s own: ``start()``
launches QEMU stopped (``-S``), connects QMP and the serial socket, then ``cont``; ``close()``
asks QEMU to quit and kills it if it does not, and runs on every exit path (error, timeout,
KeyboardInterrupt). Every QMP exchange and event goes to ``qmp.log``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from crash_hotplug.lab.errors import QemuError
from crash_hotplug.lab.guest import SerialConsole
from crash_hotplug.lab.quirks import MachineQuirk

__all__ = [
    "ACCELS",
    "DUMP_PORT",
    "KERNEL_CMDLINE",
    "KVM_FAILURE_MARKS",
    "VM",
    "MachineConfig",
    "boot_and_console_args",
    "kvm_probe",
    "kvm_usable",
    "qemu_argv",
]

KERNEL_CMDLINE = "console=ttyS0 crashkernel=256M nokaslr memhp_default_state=online_movable panic=0 loglevel=7"
ACCELS: dict[str, list[str]] = {
    # One TCG thread runs the vCPUs in turn. With thread=multi, QEMU 7.2 once oopsed a 7.3 kernel at
    # boot with RIP one byte into a jump the kernel patches at run time (a jump label), as if one vCPU
    # ran a stale translation of code another was patching; in turn, a patch is always seen whole.
    "tcg": ["-accel", "tcg,thread=single", "-cpu", "max,la57=off"],
    # arch-capabilities off: some nested hosts refuse MSR 0x10a (IA32_ARCH_CAPABILITIES) at start.
    "kvm": ["-accel", "kvm", "-cpu", "host,la57=off,-arch-capabilities"],
}
# What QEMU prints when KVM cannot run the guest (PVM: the decompressor's emulation failure).
KVM_FAILURE_MARKS = ("KVM internal error", "kvm run failed", "failed to initialize", "error:")

Log = Callable[[str], None]


@dataclass(frozen=True)
class MachineConfig:
    """The guest machine of the vectors: ``pc``, 2 GiB + 8 DIMM slots up to 16 GiB, 2 of 8 CPUs."""

    memory: str = "2G"
    slots: int = 8
    maxmem: str = "16G"
    cpus: int = 2
    maxcpus: int = 8
    machine: str = "pc"
    cmdline: str = KERNEL_CMDLINE
    extra_args: tuple[str, ...] = field(default=())

    @classmethod
    def from_plan(cls, machine: dict[str, Any]) -> MachineConfig:
        """Overrides from a plan's ``machine`` object (keys as the field names)."""
        known = set(cls.__dataclass_fields__)
        bad = set(machine) - known
        if bad:
            raise QemuError(f"unknown machine keys in plan: {sorted(bad)} (known: {sorted(known)})")
        kw = dict(machine)
        if "extra_args" in kw:
            kw["extra_args"] = tuple(kw["extra_args"])
        return cls(**kw)


#: the ``isa-debugcon`` port the capture kernel writes its dump file to (``labtool out``)
DUMP_PORT = 0xE9


def qemu_argv(
    cfg: MachineConfig,
    accel: str,
    kernel: str,
    initrd: str,
    serial_sock: str,
    qmp_sock: str,
    quirks: Sequence[MachineQuirk] = (),
) -> list[str]:
    """The QEMU command line, in the order of the vectors' ``scenario.json``, with the machine
    quirks' CPU flags, machine options and arguments added."""
    if accel not in ACCELS:
        raise QemuError(f"unknown accelerator {accel!r} (known: {', '.join(ACCELS)})")
    accel_args = list(ACCELS[accel])
    cpu_i = accel_args.index("-cpu") + 1
    accel_args[cpu_i] = ",".join([accel_args[cpu_i], *(f for q in quirks for f in q.cpu_flags)])
    machine = ",".join([cfg.machine, *(o for q in quirks for o in q.machine_opts)])
    return [
        "qemu-system-x86_64",
        *accel_args,
        "-machine",
        machine,
        "-m",
        f"{cfg.memory},slots={cfg.slots},maxmem={cfg.maxmem}",
        "-smp",
        f"{cfg.cpus},maxcpus={cfg.maxcpus},sockets={cfg.maxcpus},cores=1,threads=1",
        *boot_and_console_args(kernel, initrd, cfg.cmdline, serial_sock, qmp_sock),
        *cfg.extra_args,
        *(a for q in quirks for a in q.extra_args),
    ]


def boot_and_console_args(kernel: str, initrd: str, cmdline: str, serial_sock: str, qmp_sock: str) -> list[str]:
    """What every lab guest has, whatever the machine: no default devices or display, stopped at
    start, the kernel and initramfs given directly, the serial console and QMP on Unix sockets."""
    return [
        "-nodefaults",
        "-display",
        "none",
        "-vga",
        "none",
        "-no-reboot",
        "-S",
        "-kernel",
        kernel,
        "-initrd",
        initrd,
        "-append",
        cmdline,
        "-chardev",
        f"socket,id=ser0,path={serial_sock},server=on,wait=off",
        "-serial",
        "chardev:ser0",
        "-qmp",
        f"unix:{qmp_sock},server=on,wait=off",
    ]


def kvm_usable() -> bool:
    """``/dev/kvm`` exists and this process may open it read-write."""
    return os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)


KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00), include/uapi/linux/kvm.h
KVM_CREATE_VM = 0xAE01  # _IO(KVMIO, 0x01)
KVM_API_VERSION = 12


def kvm_probe(dev: str = "/dev/kvm") -> tuple[bool, str]:
    """Whether KVM works here: ``dev`` opens read-write, speaks API 12 and creates a VM; with why.

    A host can pass this and still fail to run a guest (PVM hosts: the decompressor's emulation
    failure), which the runner's boot probe then catches.
    """
    if not os.path.exists(dev):
        return False, f"no {dev}"
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"{dev} does not open read-write ({exc.strerror})"
    try:
        api = fcntl.ioctl(fd, KVM_GET_API_VERSION)
        if api != KVM_API_VERSION:
            return False, f"{dev} speaks KVM API {api}, not {KVM_API_VERSION}"
        vm_fd = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        os.close(vm_fd)
    except OSError as exc:
        return False, f"{dev} refuses to create a VM ({exc.strerror})"
    finally:
        os.close(fd)
    return True, f"{dev} opens, API {KVM_API_VERSION}, creates a VM"


class VM:
    """A running QEMU guest with its QMP monitor and serial console; use as a context manager."""

    def __init__(
        self,
        cfg: MachineConfig,
        kernel: Path,
        initrd: Path,
        run_dir: Path,
        accel: str = "tcg",
        log: Log | None = None,
        quirks: Sequence[MachineQuirk] = (),
        argv: Callable[[str, str], list[str]] | None = None,
        binary: tuple[str, str] = ("qemu-system-x86_64", "qemu-system-x86"),
    ) -> None:
        """``argv``, when given, builds another machine's command line from the two socket paths
        (the pseries lab); ``binary`` is (the QEMU program, its Debian package)."""
        if shutil.which(binary[0]) is None:
            raise QemuError(f"{binary[0]} is not installed (Debian package {binary[1]})")
        self.cfg = cfg
        self.accel = accel
        self.run_dir = run_dir
        self._log = log or (lambda _msg: None)
        self._sockdir = Path(tempfile.mkdtemp(prefix="chp-"))  # short path: unix sockets max 107 bytes
        self.serial_sock = self._sockdir / "serial.sock"
        self.qmp_sock = self._sockdir / "qmp.sock"
        self.quirks = tuple(quirks)
        #: bytes the guest writes to I/O port DUMP_PORT (``isa-debugcon``) land in this file: the way
        #: a dump file comes back from the capture kernel (the console's base64 is too slow for it)
        self.dump_path = run_dir / "capture-debugcon.bin"
        if argv is not None:
            self.argv = argv(str(self.serial_sock), str(self.qmp_sock))
        else:
            self.argv = qemu_argv(
                cfg, accel, str(kernel), str(initrd), str(self.serial_sock), str(self.qmp_sock), self.quirks
            )
            self.argv += ["-chardev", f"file,id=dump0,path={self.dump_path}",
                          "-device", f"isa-debugcon,iobase={DUMP_PORT:#x},chardev=dump0"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: Any = None
        self.serial: SerialConsole | None = None
        self._qmp_log = (run_dir / "qmp.log").open("a")
        self._stderr_path = run_dir / "qemu-stderr.log"
        self.events: list[dict[str, Any]] = []
        self.started_at = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> VM:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:
        """Launch QEMU stopped, connect QMP and the serial console, then let the CPUs run."""
        from qemu.qmp.legacy import QEMUMonitorProtocol

        names = "".join(f", {q.name}" for q in self.quirks)
        self._log(f"starting QEMU ({self.accel}{names})")
        with self._stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + 15
        while not self.qmp_sock.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise QemuError(f"QEMU made no QMP socket in 15 s: {self.stderr_tail()}")
            time.sleep(0.05)
        self.qmp = QEMUMonitorProtocol(str(self.qmp_sock))
        try:
            self.qmp.connect(negotiate=True)
        except Exception as exc:
            raise QemuError(f"QMP connect failed: {exc}; {self.stderr_tail()}") from exc
        self.serial = SerialConsole(self.serial_sock, self.run_dir / "serial.log")
        self.started_at = time.monotonic()
        self.cmd("cont")

    def close(self) -> None:
        """Stop QEMU (QMP ``quit``, then SIGKILL after 5 s) and release sockets; safe to call twice."""
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                self.qmp.settimeout(3)
                self.qmp.cmd("quit")
            with contextlib.suppress(Exception):
                self.qmp.close()
            self.qmp = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
            self.proc = None
        if self.serial is not None:
            self.serial.close()
            self.serial = None
        if not self._qmp_log.closed:
            self._qmp_log.close()
        shutil.rmtree(self._sockdir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL QEMU at once (used when the guest must not run on)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise QemuError(f"QEMU exited with status {self.proc.returncode}: {self.stderr_tail()}")

    def stderr_tail(self, n: int = 1500) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    @property
    def console(self) -> SerialConsole:
        if self.serial is None:
            raise QemuError("the VM is not running")
        return self.serial

    # -- QMP -----------------------------------------------------------------------------

    def _record(self, kind: str, obj: Any) -> None:
        self._qmp_log.write(json.dumps({"t": round(time.monotonic() - self.started_at, 4), kind: obj}) + "\n")
        self._qmp_log.flush()

    def _drain_events(self) -> None:
        for ev in self.qmp.get_events(wait=False):
            self._record("event", ev)
            self.events.append(ev)
        self.qmp.clear_events()

    def cmd(self, name: str, timeout: float = 30.0, **args: Any) -> Any:
        """Execute a QMP command; raises ``QemuError`` with QEMU's error text on failure."""
        if self.qmp is None:
            raise QemuError(f"QMP {name}: the VM is not running")
        self._check_alive()
        self._record("execute", {"execute": name, "arguments": args})
        self.qmp.settimeout(timeout)
        try:
            resp = self.qmp.cmd_raw(name, args or None)
        except Exception as exc:
            raise QemuError(f"QMP {name} failed: {exc!r}; {self.stderr_tail()}") from exc
        self._record("response", resp)
        self._drain_events()
        if "error" in resp:
            raise QemuError(f"QMP {name} {args}: {resp['error'].get('desc', resp['error'])}")
        return resp.get("return")

    def wait_event(
        self, name: str, timeout: float, match: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """Wait for a QMP event (already received ones included), e.g. ``DEVICE_DELETED``."""
        deadline = time.monotonic() + timeout
        while True:
            for i, seen in enumerate(self.events):
                if seen.get("event") == name and (match is None or match(seen)):
                    return self.events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QemuError(f"no QMP event {name} within {timeout:g} s")
            self._check_alive()
            ev: dict[str, Any] | None
            try:
                ev = self.qmp.pull_event(wait=min(remaining, 1.0))
            except Exception:
                ev = None
            if ev:
                self._record("event", ev)
                self.events.append(ev)

    def pmemsave(self, addr: int, size: int, dest: Path) -> bytes:
        """Guest-physical memory ``[addr, addr+size)`` read with QMP ``pmemsave``."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.cmd("pmemsave", val=addr, size=size, filename=str(dest.resolve()))
        return dest.read_bytes()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The guest's CPUs stopped for the duration (a consistent ``pmemsave``)."""
        self.cmd("stop")
        try:
            yield
        finally:
            self.cmd("cont")
