"""The guest side without a VM: the snapshot stream, the cpio writer, the QEMU command line."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest

from crash_hotplug.lab.errors import QemuError
from crash_hotplug.lab.guest import parse_snapshot_stream
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
    real = json.loads((vectors / "6.12.43" / "base" / "scenario.json").read_text())["qemu_argv"]
    argv = qemu_argv(MachineConfig(), "tcg", real[real.index("-kernel") + 1],
                     real[real.index("-initrd") + 1], "<socket>", "<socket>")
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
