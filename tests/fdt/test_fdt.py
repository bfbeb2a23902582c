"""The FDT reader/writer and libfdt's in-place edits, against the crash FDTs a real ppc64le kernel
and kexec-tools left in memory (../shared/vectors-ppc64, read in place) and against dtc."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from crash_hotplug.errors import FdtFormatError
from crash_hotplug.fdt.blob import FdtBlob, FdtHeader, FdtNoSpaceError
from crash_hotplug.fdt.tree import Fdt, FdtNode, FdtProperty, fdt_parse, fdt_write
from tests.conftest import needs_ppc64_vectors, ppc64_steps

STEPS = ppc64_steps()


@needs_ppc64_vectors
@pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])
def test_round_trip_is_byte_exact(step: object) -> None:
    from tests.conftest import Ppc64Step

    assert isinstance(step, Ppc64Step)
    raw = step.fdt
    fdt = fdt_parse(raw, str(step.path / "crash-fdt.dtb"))
    assert fdt_write(fdt) == raw
    meta = step.meta["crash_fdt"]
    assert FdtBlob(raw).totalsize == meta["totalsize"]
    cpus = fdt.root.find("/cpus")
    assert cpus is not None
    assert [f"/cpus/{c.name}" for c in cpus.children] == meta["cpus"]
    chosen = fdt.root.find("/chosen")
    assert chosen is not None and chosen.prop("bootargs") is not None
    assert chosen.prop("bootargs").as_str() == meta["chosen"]["bootargs"].rstrip("\0")  # type: ignore[union-attr]
    assert fdt.boot_cpuid_phys == meta["boot_cpuid_phys"]


@needs_ppc64_vectors
def test_load_fdt_reservations_and_header() -> None:
    s0 = STEPS[0]
    blob = FdtBlob(s0.fdt)
    h = blob.header
    assert (h.version, h.last_comp_version, h.off_mem_rsvmap) == (17, 17, 0x28)
    segs = s0.meta["kexec_segments"]
    rsv = dict(blob.mem_rsvmap())
    # kexec-tools reserves the backup, the elfcorehdr (its used 1 KiB), the initrd and the FDT itself
    assert rsv[segs[1]["mem"]] == segs[1]["bufsz"]
    assert rsv[segs[2]["mem"]] == segs[2]["bufsz"]
    assert rsv[segs[5]["mem"]] == h.totalsize


@pytest.mark.skipif(shutil.which("dtc") is None, reason="dtc (device-tree-compiler) not installed")
def test_built_tree_is_read_by_dtc(tmp_path: Path) -> None:
    """A blob our writer builds from scratch is what dtc reads back (dtc -I dtb -O dtb is canonical)."""
    root = FdtNode("", [FdtProperty("#address-cells", struct.pack(">I", 2)),
                        FdtProperty("model", b"IBM pSeries (emulated by qemu)\0")],
                   [FdtNode("cpus", [FdtProperty("#size-cells", struct.pack(">I", 0))],
                            [FdtNode("PowerPC,POWER9@0", [FdtProperty("device_type", b"cpu\0"),
                                                          FdtProperty("reg", struct.pack(">I", 0))])]),
                    FdtNode("chosen", [FdtProperty("bootargs", b"console=hvc0\0")])])
    blob = fdt_write(Fdt.build(root, [(0x2289F000, 0x10000)]))
    src = tmp_path / "a.dtb"
    src.write_bytes(blob)
    out = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dtb", "-o", "-", str(src)], capture_output=True,
                         check=True).stdout
    again = fdt_parse(out)
    assert again.root == root and again.mem_rsvmap == [(0x2289F000, 0x10000)]
    dts = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts", str(src)], capture_output=True, text=True,
                         check=True).stdout
    assert "PowerPC,POWER9@0" in dts and 'bootargs = "console=hvc0";' in dts


@pytest.mark.skipif(shutil.which("dtc") is None, reason="dtc (device-tree-compiler) not installed")
def test_reads_what_dtc_writes(tmp_path: Path) -> None:
    src = tmp_path / "t.dts"
    src.write_text('/dts-v1/;\n/memreserve/ 0x10000 0x1000;\n/ { a = <1 2>; n@1 { s = "x", "yz"; e; }; };\n')
    blob = subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", "-", str(src)], capture_output=True,
                          check=True).stdout
    fdt = fdt_parse(blob)
    assert fdt.mem_rsvmap == [(0x10000, 0x1000)]
    assert fdt.root.prop("a") == FdtProperty("a", struct.pack(">II", 1, 2))
    n = fdt.root.find("/n@1")
    assert n is not None and n.prop("s") == FdtProperty("s", b"x\0yz\0") and n.prop("e") == FdtProperty("e", b"")
    assert fdt_write(fdt) == blob


def _small() -> bytes:
    root = FdtNode("", [], [FdtNode("cpus", [FdtProperty("#address-cells", struct.pack(">I", 1))],
                                    [FdtNode("c@0", [FdtProperty("device_type", b"cpu\0")])])])
    return fdt_write(Fdt.build(root, [], extra=256))


def test_libfdt_edits_in_place() -> None:
    blob = FdtBlob(_small())
    total = blob.totalsize
    cpus = blob.path_offset("/cpus")
    assert cpus is not None
    blob.del_node(blob.subnodes(cpus)[0])
    a = blob.add_subnode(cpus, "c@1")
    blob.setprop(a, "reg", struct.pack(">I", 1))
    blob.setprop(a, "device_type", b"cpu\0")
    b = blob.add_subnode(blob.path_offset("/cpus") or 0, "c@2")
    assert blob.totalsize == total
    tree = fdt_parse(blob.data())
    node = tree.root.find("/cpus")
    assert node is not None
    # a new subnode goes before the existing ones, a new property before the node's others
    assert [c.name for c in node.children] == ["c@2", "c@1"]
    c1 = node.child("c@1")
    assert c1 is not None and [p.name for p in c1.props] == ["device_type", "reg"]
    assert b > cpus
    # "reg" was new to the strings block, "device_type" was found there
    assert tree.strings.count(b"device_type\0") == 1 and tree.strings.endswith(b"reg\0")


def test_libfdt_no_space() -> None:
    blob = FdtBlob(fdt_write(Fdt.build(FdtNode(""), [])))
    with pytest.raises(FdtNoSpaceError):
        blob.add_subnode(0, "x")


@pytest.mark.parametrize(("cut", "what"), [
    (lambda b: b[:20], "shorter than"),
    (lambda b: b"\0\0\0\0" + b[4:], "bad magic"),
    (lambda b: b[:4] + struct.pack(">I", 1 << 20) + b[8:], "exceeds"),
    (lambda b: b[:36] + struct.pack(">I", 1 << 20) + b[40:], "outside"),
])
def test_bad_blobs_name_the_problem(cut: object, what: str) -> None:
    raw = _small()
    assert callable(cut)
    with pytest.raises(FdtFormatError, match=what):
        fdt_parse(cut(raw), "x.dtb")


def test_unknown_tag_is_an_error() -> None:
    raw = bytearray(_small())
    h = FdtHeader.unpack(raw)
    struct.pack_into(">I", raw, h.off_dt_struct, 7)
    with pytest.raises(FdtFormatError, match="unknown structure tag 0x7"):
        fdt_parse(bytes(raw), "x.dtb")
