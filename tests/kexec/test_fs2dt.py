"""kexec-tools' fs2dt (``kexec/fs2dt.c``) on a small device tree, read back by dtc (the independent
oracle) and by our FDT parser: node order, skipped and added properties, usable-memory clipping,
reservations, and the blob layout kexec-tools writes (reserve-map slack, header fields)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from crash_hotplug.fdt.tree import fdt_parse
from crash_hotplug.kexec.fs2dt import (
    Fs2dtError,
    Fs2dtInput,
    add_usable_mem_rgns,
    comparefunc_key,
    create_flatten_tree,
    patch_dt_reserve,
)
from crash_hotplug.kexec.kexec_load_ppc64 import fixup_dt

LMB = 0x10000000


def _w(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _tree(root: Path) -> Path:
    dt = root / "device-tree"
    _w(dt / "#address-cells", struct.pack(">I", 2))
    _w(dt / "name", b"\0")
    _w(dt / "model", b"IBM pSeries (emulated by qemu)\0")
    _w(dt / "chosen/name", b"chosen\0")
    _w(dt / "chosen/bootargs", b"console=hvc0 root=/dev/sda2 quiet\0")
    _w(dt / "chosen/linux,crashkernel-base", struct.pack(">Q", 0x20000000))
    _w(dt / "chosen/linux,crashkernel-size", struct.pack(">Q", 0x20000000))
    _w(dt / "chosen/linux,initrd-start", struct.pack(">Q", 0x5000000))
    _w(dt / "chosen/linux,kernel-end", struct.pack(">Q", 0x3000000))
    _w(dt / "chosen/stdout-path", b"/vdevice/vty@71000000\0")
    for unit, base in (("0", 0), ("f000000", 0xF000000), ("10000000", 0x10000000), ("80000000", 0x80000000)):
        _w(dt / f"memory@{unit}/reg", struct.pack(">QQ", base, 0x1000000 if base else 0x50000000))
        _w(dt / f"memory@{unit}/device_type", b"memory\0")
    _w(dt / "rtas/linux,rtas-base", struct.pack(">I", 0x2FFFF000))
    _w(dt / "rtas/rtas-size", struct.pack(">I", 0x89C))
    drconf = dt / "ibm,dynamic-reconfiguration-memory"
    _w(drconf / "ibm,lmb-size", struct.pack(">Q", LMB))
    # two LMB sets (v2): 2 LMBs at 0x30000000, 1 at 0x80000000
    sets = struct.pack(">IQIII", 2, 0x30000000, 0x80000010, 0, 8)
    sets += struct.pack(">IQIII", 1, 0x80000000, 0x80000020, 0, 8)
    _w(drconf / "ibm,dynamic-memory-v2", struct.pack(">I", 2) + sets)
    return dt


def _dts(blob: bytes, tmp: Path) -> str:
    if shutil.which("dtc") is None:
        pytest.skip("dtc (device-tree-compiler) is not installed")
    f = tmp / "t.dtb"
    f.write_bytes(blob)
    proc = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(f)], capture_output=True, text=True, check=True)
    return proc.stdout


def _flatten(dt: Path) -> bytes:
    usable: list[tuple[int, int]] = []
    add_usable_mem_rgns(usable, 0x2FFFF000, 0x89C)
    add_usable_mem_rgns(usable, 0, 0x40000000)
    assert usable == [(0, 0x40000000)]  # RTAS page-aligned, then widened to the crash region's end
    inp = Fs2dtInput(cmdline="console=hvc0 elfcorehdr=565948K", initrd=(0x22924000, 0x12A3C9), usable=usable,
                     reserves=[(0x10000, 0x1FFF0000), (0x2289F000, 0x10000), (0x228AF000, 0x400)])
    return create_flatten_tree(dt, inp)


def test_comparefunc_sorts_unit_addresses_by_length_first() -> None:
    names = ["memory@10000000", "memory@f000000", "memory@0", "chosen", "#size-cells", "cpus"]
    assert sorted(names, key=comparefunc_key) == [
        "#size-cells", "chosen", "cpus", "memory@0", "memory@f000000", "memory@10000000"]


def test_flattened_tree_as_dtc_reads_it(tmp_path: Path) -> None:
    blob = _flatten(_tree(tmp_path))
    dts = _dts(blob, tmp_path)
    # reservations: the three made before, initrd (/chosen), RTAS (/rtas), then the FDT's own (0, size)
    rsv = [ln.split()[1:] for ln in dts.splitlines() if ln.startswith("/memreserve/")]
    assert [(int(a, 16), int(s.rstrip(";"), 16)) for a, s in rsv] == [
        (0x10000, 0x1FFF0000), (0x2289F000, 0x10000), (0x228AF000, 0x400), (0x22924000, 0x12A3C9),
        (0x2FFFF000, 0x89C), (0, len(blob))]
    tree = fdt_parse(blob)
    assert [c.name for c in tree.root.children] == [
        "chosen", "ibm,dynamic-reconfiguration-memory", "memory@0", "memory@f000000", "memory@10000000",
        "memory@80000000", "rtas"]
    chosen = tree.root.find("/chosen")
    assert chosen is not None
    # left out: name, crashkernel (no crashkernel= on the new command line), kernel-end, old initrd, bootargs;
    # added after the files: the new initrd and the new command line with the old root=
    assert [p.name for p in chosen.props] == ["stdout-path", "linux,initrd-start", "linux,initrd-end", "bootargs"]
    assert chosen.props[-1].value == b"console=hvc0 elfcorehdr=565948K root=/dev/sda2 \0"
    assert chosen.props[2].value == struct.pack(">Q", 0x22924000 + 0x12A3C9)
    assert tree.root.prop("name") is None and tree.root.prop("model") is not None
    # linux,usable-memory right after reg, clipped to [0, 1 GiB); (0, 0) where nothing is usable
    mem = {c.name: c for c in tree.root.children if c.name.startswith("memory@")}
    assert [p.name for p in mem["memory@0"].props] == ["device_type", "reg", "linux,usable-memory"]
    assert mem["memory@0"].props[2].value == struct.pack(">QQ", 0, 0x40000000)
    assert mem["memory@f000000"].props[2].value == struct.pack(">QQ", 0xF000000, 0x1000000)
    assert mem["memory@10000000"].props[2].value == struct.pack(">QQ", 0x10000000, 0x1000000)
    assert mem["memory@80000000"].props[2].value == struct.pack(">QQ", 0, 0)
    # per LMB of the v2 sets: a count, then (base, size) pairs; 0x30000000 is usable, the others not
    drconf = tree.root.find("/ibm,dynamic-reconfiguration-memory")
    assert drconf is not None
    usable = drconf.prop("linux,drconf-usable-memory")
    assert usable is not None and struct.unpack(">5Q", usable.value) == (1, 0x30000000, LMB, 0, 0)
    assert "linux,drconf-usable-memory" in dts


def test_blob_layout_is_kexec_tools(tmp_path: Path) -> None:
    blob = _flatten(_tree(tmp_path))
    (magic, total, off_struct, off_strings, off_rsv, version, last, physid, size_strings,
     size_struct) = struct.unpack(">10I", blob[:40])
    assert (magic, version, last, physid, off_rsv) == (0xD00DFEED, 17, 17, 0, 40)
    assert total == len(blob) == off_strings + -(-size_strings // 4) * 4
    assert off_strings == off_struct + size_struct
    # room for the 5 reservations + the FDT's own + the terminator + 3 spare u64 (one left over, zero)
    assert off_struct - off_rsv == (2 * 5 + 5) * 8
    assert blob[off_struct - 8 : off_struct] == bytes(8)
    strings = blob[off_strings : off_strings + size_strings].split(b"\0")[:-1]
    assert strings[:3] == [b"#address-cells", b"model", b"stdout-path"]  # interned in order of first use


def test_fixup_and_own_reservation(tmp_path: Path) -> None:
    fdt = patch_dt_reserve(fixup_dt(_flatten(_tree(tmp_path)), 691), 0x3FFF9000)
    dts = _dts(fdt, tmp_path)
    assert f"/memreserve/\t0x000000003fff9000 {len(fdt):#018x};" in dts
    assert "linux,booted-from-kexec;" in dts


def test_crashkernel_kept_when_the_new_command_line_has_one(tmp_path: Path) -> None:
    """``crash_param`` is set while /chosen is written, so /chosen's own crashkernel files are already
    skipped; a later node's are kept."""
    dt = _tree(tmp_path)
    _w(dt / "zzz/linux,crashkernel-base", struct.pack(">Q", 1))
    blob = create_flatten_tree(dt, Fs2dtInput(cmdline="crashkernel=256M"))
    tree = fdt_parse(blob)
    chosen, zzz = tree.root.find("/chosen"), tree.root.find("/zzz")
    assert chosen is not None and chosen.prop("linux,crashkernel-base") is None
    assert zzz is not None and zzz.prop("linux,crashkernel-base") is not None


def test_unusable_trees_are_one_error(tmp_path: Path) -> None:
    with pytest.raises(Fs2dtError, match="no device tree"):
        create_flatten_tree(tmp_path / "missing", Fs2dtInput(cmdline=""))
    dt = _tree(tmp_path)
    (dt / "rtas/rtas-size").unlink()
    with pytest.raises(Fs2dtError, match="rtas"):
        create_flatten_tree(dt, Fs2dtInput(cmdline=""))
