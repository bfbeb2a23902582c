"""The guest side without a VM: the snapshot stream, the cpio writer, the QEMU command line."""

from __future__ import annotations

import base64
import gzip
import json
import socket
import time
from pathlib import Path

import pytest

from crash_hotplug.lab.errors import GuestPanicked, QemuError
from crash_hotplug.lab.guest import SerialConsole, oops_summary, parse_snapshot_stream
from crash_hotplug.lab.initramfs import Cpio
from crash_hotplug.lab.qemu import MachineConfig, qemu_argv
from crash_hotplug.lab.scenario import _kexec_tools_elfcorehdr


def test_snapshot_stream_keeps_bytes_exact() -> None:
    blob = b"0-1\n"
    binary = bytes(range(256)) * 3
    b64 = base64.encodebytes(binary).decode()
    text = (
        f"@@F /sys/devices/system/cpu/online\n{base64.b64encode(blob).decode()}\n@@E ok\n"
        f"@@F /proc/kcore\n{b64}@@E ok\n@@F /sys/kernel/vmcoreinfo\n@@E err\n@@SNAP-END\n"
    )
    files, unreadable = parse_snapshot_stream(text)
    assert files == {"/sys/devices/system/cpu/online": blob, "/proc/kcore": binary}
    assert unreadable == ["/sys/kernel/vmcoreinfo"]


def _read_newc(blob: bytes) -> dict[str, tuple[int, bytes]]:
    out, off = {}, 0
    while True:
        assert blob[off : off + 6] == b"070701"
        f = [int(blob[off + 6 + 8 * i : off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = blob[off + 110 : off + 110 + namesize - 1].decode()
        off += 110 + namesize
        off += -off % 4
        data = blob[off : off + size]
        off += size
        off += -off % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data)


def test_cpio_newc_round_trip() -> None:
    c = Cpio()
    c.dir("bin")
    c.file("bin/x", b"abcde")
    c.symlink("bin/y", "x")
    c.chardev("dev/console", 5, 1)
    raw = gzip.decompress(c.gzip())
    assert len(raw) % 512 == 0
    entries = _read_newc(raw)
    assert entries["bin/x"] == (0o100755, b"abcde")
    assert entries["bin/y"] == (0o120777, b"x")
    assert entries["dev/console"][0] == 0o020600


def test_qemu_argv_is_the_vectors_command_line(vectors: Path) -> None:
    """The vectors' machine, but for the TCG threading (the vectors ran ``thread=multi``)."""
    real = json.loads((vectors / "6.12.43" / "base" / "scenario.json").read_text())["qemu_argv"]
    argv = qemu_argv(MachineConfig(), "tcg", real[real.index("-kernel") + 1],
                     real[real.index("-initrd") + 1], "<socket>", "<socket>")
    assert real[real.index("-accel") + 1] == "tcg,thread=multi"
    real[real.index("-accel") + 1] = "tcg,thread=single"
    assert argv == real


def test_machine_config_rejects_unknown_keys() -> None:
    assert MachineConfig.from_plan({"memory": "4G"}).memory == "4G"
    with pytest.raises(QemuError, match="unknown machine keys"):
        MachineConfig.from_plan({"ram": "4G"})
    with pytest.raises(QemuError, match="unknown accelerator"):
        qemu_argv(MachineConfig(), "hvf", "k", "i", "s", "q")


def test_kexec_load_elfcorehdr_from_kexec_debug_output() -> None:
    # as kexec-tools 2.0.25 `kexec -p -d` prints it (captured from a 6.12 guest)
    out = (
        "nr_segments = 3\n"
        "segment[0].buf   = 0x55708f7906b0\nsegment[0].bufsz = 0x30\n"
        "segment[0].mem   = 0x6f000000\nsegment[0].memsz = 0x1000\n"
        "segment[1].buf   = 0x55708f76b480\nsegment[1].bufsz = 0x400\n"
        "segment[1].mem   = 0x7ef5d000\nsegment[1].memsz = 0x4000\n"
        "Command line: elfcorehdr=2080116K console=ttyS0\n"
    )
    assert _kexec_tools_elfcorehdr(out) == (0x7EF5D000, 0x4000)


# The end of the oops a 7.3.4 kernel printed at boot under QEMU 7.2 TCG (thread=multi), as CI's
# serial log had it.
_OOPS_AT_BOOT = (
    "[    2.432219] RIP: 0010:enqueue_timer+0xa9/0x100\r\n"
    "[    2.432219] Call Trace:\r\n"
    "[    2.432219]  <TASK>\r\n"
    "[    2.432219]  __mod_timer+0x272/0x330\r\n"
    "[    2.432219]  </TASK>\r\n"
    "[    2.432219] Kernel panic - not syncing: Fatal exception in interrupt\r\n"
    "[    2.432219] ---[ end Kernel panic - not syncing: Fatal exception in interrupt ]---\r\n"
)


def _console_fed(tmp_path: Path, text: str) -> tuple[SerialConsole, socket.socket]:
    path = tmp_path / "serial.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    con = SerialConsole(path, tmp_path / "serial.log")
    peer, _ = srv.accept()
    srv.close()
    peer.sendall(text.encode())
    return con, peer


def test_an_unasked_panic_ends_the_wait_at_once_with_the_oops_lines(tmp_path: Path) -> None:
    con, peer = _console_fed(tmp_path, "[    0.000000] Linux version 7.3.4\r\n" + _OOPS_AT_BOOT)
    t0 = time.monotonic()
    try:
        with pytest.raises(GuestPanicked) as info:
            con.wait_for(r"^@@READY main", 120)
    finally:
        peer.close()
        con.close()
    assert time.monotonic() - t0 < 10
    assert info.value.summary == [
        "RIP: 0010:enqueue_timer+0xa9/0x100",
        "Kernel panic - not syncing: Fatal exception in interrupt",
    ]
    assert "enqueue_timer" in str(info.value) and "\n" not in str(info.value)


def test_an_asked_for_panic_is_waited_through(tmp_path: Path) -> None:
    con, peer = _console_fed(tmp_path, _OOPS_AT_BOOT + "@@READY capture\r\n")
    try:
        m = con.wait_for(r"^@@READY capture", 30, 0, panic_ok=True)
    finally:
        peer.close()
        con.close()
    assert m.group(0) == "@@READY capture"


def test_oops_summary_keeps_the_lines_that_say_what_happened() -> None:
    text = "[ 1.0] Oops: int3: 0000 [#1] SMP NOPTI\n[ 1.0] CPU: 1 UID: 0\n" + _OOPS_AT_BOOT
    assert oops_summary(text) == [
        "Oops: int3: 0000 [#1] SMP NOPTI",
        "RIP: 0010:enqueue_timer+0xa9/0x100",
        "Kernel panic - not syncing: Fatal exception in interrupt",
    ]


def test_tcg_runs_the_vcpus_on_one_thread() -> None:
    argv = qemu_argv(MachineConfig(), "tcg", "k", "i", "s", "q")
    assert argv[argv.index("-accel") + 1] == "tcg,thread=single"
