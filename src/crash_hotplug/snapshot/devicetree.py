"""The powerpc machine facts a snapshot's ``/proc/device-tree`` holds (``drivers/of/fdt.c``,
``arch/powerpc/kexec/core.c: export_crashk_values``, ``arch/powerpc/kernel/rtas.c``,
``arch/powerpc/include/asm/drmem.h``).

========================================  =============================================================
crashkernel region                        ``chosen/linux,crashkernel-base`` and ``-size`` (u64 each;
                                          ppc64 ``/proc/iomem`` has no ``Crash kernel`` line)
RTAS                                      ``rtas/linux,rtas-base``, ``rtas/rtas-size`` (u32 each)
LMBs                                      ``ibm,dynamic-reconfiguration-memory/ibm,lmb-size`` and
                                          ``ibm,dynamic-memory-v2`` (or v1 ``ibm,dynamic-memory``)
boot memory                               ``memory@*/reg`` (2 address cells, 2 size cells)
CPU nodes                                 ``cpus/<name>@<unit>/reg``, ``ibm,ppc-interrupt-server#s``
========================================  =============================================================

Property files are the raw big-endian bytes of the property. A file that is absent is *unknown*
(None), never zero; a file of the wrong size is an error naming it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from crash_hotplug.errors import SnapshotError
from crash_hotplug.snapshot.root import FsRoot

__all__ = [
    "DRCONF_MEM_ASSIGNED",
    "DRCONF_MEM_RESERVED",
    "DT",
    "DrmemLmb",
    "DtCpu",
    "PpcDeviceTree",
    "is_ppc64_root",
    "read_device_tree",
]

DT: Final = "proc/device-tree"
DRMEM: Final = f"{DT}/ibm,dynamic-reconfiguration-memory"
#: ``of_drconf_cell`` flags (``asm/drmem.h``)
DRCONF_MEM_ASSIGNED: Final = 0x00000008
DRCONF_MEM_AI_INVALID: Final = 0x00000040
DRCONF_MEM_RESERVED: Final = 0x00000080
#: ``struct of_drconf_cell_v2``: seq_lmbs, base_addr, drc_index, aa_index, flags
_DRCONF_V2: Final = struct.Struct(">IQIII")
#: ``struct of_drconf_cell_v1``: base_addr, drc_index, reserved, aa_index, flags
_DRCONF_V1: Final = struct.Struct(">QIIII")


@dataclass(frozen=True)
class DrmemLmb:
    """One LMB of ``ibm,dynamic-reconfiguration-memory`` (``struct drmem_lmb``)."""

    base_addr: int
    drc_index: int
    aa_index: int
    flags: int

    @property
    def assigned(self) -> bool:
        return bool(self.flags & DRCONF_MEM_ASSIGNED)


@dataclass(frozen=True)
class DtCpu:
    """A ``/cpus`` child as the snapshot shows it."""

    name: str
    reg: int | None
    interrupt_servers: tuple[int, ...]


@dataclass(frozen=True)
class PpcDeviceTree:
    """What the crash code of powerpc reads from the device tree; None where a file is absent."""

    crashk_res: tuple[int, int] | None
    rtas: tuple[int, int] | None
    lmb_size: int | None
    lmbs: tuple[DrmemLmb, ...]
    memory_reg: tuple[tuple[int, int], ...]
    cpus: tuple[DtCpu, ...]
    bootargs: str | None
    memory_limit: int | None

    def drmem_ranges(self) -> list[tuple[int, int]]:
        """Inclusive ranges of the assigned LMBs, adjacent ones merged."""
        if self.lmb_size is None:
            return []
        out: list[tuple[int, int]] = []
        for lmb in sorted(self.lmbs, key=lambda x: x.base_addr):
            if not lmb.assigned:
                continue
            start, end = lmb.base_addr, lmb.base_addr + self.lmb_size - 1
            if out and out[-1][1] + 1 == start:
                out[-1] = (out[-1][0], end)
            else:
                out.append((start, end))
        return out


def is_ppc64_root(root: FsRoot) -> bool:
    """Does the root come from a powerpc host (it has the ``/proc/device-tree`` a pseries or
    powernv kernel exports, with ``/cpus`` or ``/chosen``)?"""
    return root.exists(f"{DT}/cpus") or root.exists(f"{DT}/chosen/linux,crashkernel-base") \
        or root.exists(f"{DT}/rtas")


def _prop(root: FsRoot, rel: str, sizes: tuple[int, ...] | None = None) -> bytes | None:
    if not root.exists(rel):
        return None
    raw = root.read_bytes(rel)
    if sizes is not None and len(raw) not in sizes:
        want = " or ".join(str(s) for s in sizes)
        raise SnapshotError(root.display(rel), f"is {len(raw)} bytes, expected {want}")
    return raw


def _be(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _crashkernel(root: FsRoot) -> tuple[int, int] | None:
    base = _prop(root, f"{DT}/chosen/linux,crashkernel-base", (4, 8))
    size = _prop(root, f"{DT}/chosen/linux,crashkernel-size", (4, 8))
    if base is None and size is None:
        return None
    if base is None or size is None:
        missing = "base" if base is None else "size"
        raise SnapshotError(root.display(f"{DT}/chosen/linux,crashkernel-{missing}"),
                            "missing while the other half of the crashkernel region is present")
    if _be(size) == 0:
        return None
    return _be(base), _be(base) + _be(size) - 1


def _rtas(root: FsRoot) -> tuple[int, int] | None:
    base = _prop(root, f"{DT}/rtas/linux,rtas-base", (4,))
    size = _prop(root, f"{DT}/rtas/rtas-size", (4,))
    if base is None or size is None:
        return None
    return _be(base), _be(size)


def _lmbs(root: FsRoot) -> tuple[int | None, tuple[DrmemLmb, ...]]:
    size_raw = _prop(root, f"{DRMEM}/ibm,lmb-size", (8,))
    lmb_size = _be(size_raw) if size_raw is not None else None
    v2 = _prop(root, f"{DRMEM}/ibm,dynamic-memory-v2")
    out: list[DrmemLmb] = []
    if v2 is not None:
        rel = f"{DRMEM}/ibm,dynamic-memory-v2"
        if len(v2) < 4 or (len(v2) - 4) != _be(v2[:4]) * _DRCONF_V2.size:
            raise SnapshotError(root.display(rel), f"{len(v2)} bytes do not hold the LMB sets its count announces")
        if lmb_size is None:
            raise SnapshotError(root.display(f"{DRMEM}/ibm,lmb-size"), "missing while ibm,dynamic-memory-v2 is present")
        for i in range(_be(v2[:4])):
            seq, base, drc, aa, flags = _DRCONF_V2.unpack_from(v2, 4 + i * _DRCONF_V2.size)
            out.extend(DrmemLmb(base + k * lmb_size, drc + k, aa, flags) for k in range(seq))
        return lmb_size, tuple(out)
    v1 = _prop(root, f"{DRMEM}/ibm,dynamic-memory")
    if v1 is not None:
        rel = f"{DRMEM}/ibm,dynamic-memory"
        if len(v1) < 4 or (len(v1) - 4) != _be(v1[:4]) * _DRCONF_V1.size:
            raise SnapshotError(root.display(rel), f"{len(v1)} bytes do not hold the LMBs its count announces")
        for i in range(_be(v1[:4])):
            base, drc, _res, aa, flags = _DRCONF_V1.unpack_from(v1, 4 + i * _DRCONF_V1.size)
            out.append(DrmemLmb(base, drc, aa, flags))
    return lmb_size, tuple(out)


def _memory_reg(root: FsRoot) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    dt = root.file(DT)
    if not dt.is_dir():
        return ()
    for node in sorted(p.name for p in dt.iterdir() if p.name == "memory" or p.name.startswith("memory@")):
        raw = _prop(root, f"{DT}/{node}/reg")
        if raw is None:
            continue
        if len(raw) % 16:
            raise SnapshotError(root.display(f"{DT}/{node}/reg"),
                                f"is {len(raw)} bytes, not (2 address + 2 size cells) pairs")
        for i in range(0, len(raw), 16):
            base, size = struct.unpack_from(">QQ", raw, i)
            if size:
                out.append((base, base + size - 1))
    return tuple(sorted(out))


def _cpus(root: FsRoot) -> tuple[DtCpu, ...]:
    d = root.file(f"{DT}/cpus")
    if not d.is_dir():
        return ()
    out: list[DtCpu] = []
    for name in sorted(p.name for p in d.iterdir() if p.is_dir()):
        reg = _prop(root, f"{DT}/cpus/{name}/reg", (4,))
        srv = _prop(root, f"{DT}/cpus/{name}/ibm,ppc-interrupt-server#s")
        if srv is not None and len(srv) % 4:
            raise SnapshotError(root.display(f"{DT}/cpus/{name}/ibm,ppc-interrupt-server#s"),
                                f"is {len(srv)} bytes, not a list of u32")
        servers = struct.unpack(f">{len(srv) // 4}I", srv) if srv else ()
        out.append(DtCpu(name, _be(reg) if reg is not None else None, servers))
    return tuple(out)


def read_device_tree(root: FsRoot) -> PpcDeviceTree:
    """The powerpc device-tree facts under ``root``; :class:`SnapshotError` on malformed files."""
    bootargs = _prop(root, f"{DT}/chosen/bootargs")
    limit = _prop(root, f"{DT}/chosen/linux,memory-limit", (4, 8))
    lmb_size, lmbs = _lmbs(root)
    return PpcDeviceTree(
        crashk_res=_crashkernel(root),
        rtas=_rtas(root),
        lmb_size=lmb_size,
        lmbs=lmbs,
        memory_reg=_memory_reg(root),
        cpus=_cpus(root),
        bootargs=bootargs.rstrip(b"\0").decode("utf-8", "replace") if bootargs is not None else None,
        memory_limit=_be(limit) if limit is not None else None,
    )
