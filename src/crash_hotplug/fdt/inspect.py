"""What a crash kernel's FDT says, and what changed between two of them: the summary and diff
behind ``elfcorehdr show`` / ``diff`` for device tree blobs."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from crash_hotplug.fdt.blob import FDT_MAGIC, FdtBlob
from crash_hotplug.fdt.tree import FdtNode, fdt_parse

__all__ = ["FdtCpu", "FdtSummary", "fdt_diff", "is_fdt", "summarize_fdt"]


def is_fdt(head: bytes) -> bool:
    return len(head) >= 4 and int.from_bytes(head[:4], "big") == FDT_MAGIC


@dataclass(frozen=True)
class FdtCpu:
    path: str
    reg: int | None
    servers: tuple[int, ...]


@dataclass
class FdtSummary:
    totalsize: int
    used: int
    version: int
    boot_cpuid_phys: int
    mem_rsvmap: list[tuple[int, int]]
    cpus: list[FdtCpu]
    bootargs: str | None
    nodes: int
    properties: int
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return self.totalsize - self.used

    def to_json(self) -> dict[str, Any]:
        return {
            "totalsize": self.totalsize, "used": self.used, "free": self.free, "version": self.version,
            "boot_cpuid_phys": self.boot_cpuid_phys,
            "mem_rsvmap": [{"address": f"{a:#x}", "size": f"{s:#x}"} for a, s in self.mem_rsvmap],
            "cpus": [{"path": c.path, "reg": c.reg, "servers": list(c.servers)} for c in self.cpus],
            "bootargs": self.bootargs, "nodes": self.nodes, "properties": self.properties,
        }


def _u32s(raw: bytes | None) -> tuple[int, ...]:
    if not raw:
        return ()
    return struct.unpack(f">{len(raw) // 4}I", raw[: len(raw) // 4 * 4])


def summarize_fdt(raw: bytes, source: str = "<bytes>") -> FdtSummary:
    """The summary of the blob in ``raw``; :class:`~crash_hotplug.errors.FdtFormatError` on bad bytes."""
    fdt = fdt_parse(raw, source)
    h = FdtBlob(raw, source).header
    cpus: list[FdtCpu] = []
    node = fdt.root.find("/cpus")
    for c in node.children if node is not None else []:
        dt = c.prop("device_type")
        if dt is None or dt.value.split(b"\0", 1)[0] != b"cpu":
            continue
        rp = c.prop("reg")
        reg = _u32s(rp.value if rp is not None else None)
        srv = c.prop("ibm,ppc-interrupt-server#s")
        cpus.append(FdtCpu(f"/cpus/{c.name}", reg[0] if reg else None, _u32s(srv.value if srv else None)))
    chosen = fdt.root.find("/chosen")
    boot = chosen.prop("bootargs") if chosen is not None else None
    walked = list(fdt.root.walk())
    return FdtSummary(h.totalsize, h.off_dt_strings + h.size_dt_strings, h.version, h.boot_cpuid_phys,
                      fdt.mem_rsvmap, cpus, boot.as_str() if boot is not None else None,
                      len(walked), sum(len(n.props) for _, n in walked))


def _index(root: FdtNode) -> dict[str, FdtNode]:
    return dict(root.walk())


def fdt_diff(a: bytes, b: bytes, source_a: str = "A", source_b: str = "B") -> list[str]:
    """One line per difference from A to B (``+``/``-`` for nodes, properties and reservations,
    ``~`` for changed values, child order and header fields); empty when they say the same."""
    fa, fb = fdt_parse(a, source_a), fdt_parse(b, source_b)
    ha, hb = FdtBlob(a, source_a).header, FdtBlob(b, source_b).header
    out: list[str] = []
    for name in ("totalsize", "boot_cpuid_phys", "version"):
        va, vb = getattr(ha, name), getattr(hb, name)
        if va != vb:
            out.append(f"~ header {name}: {va:#x} -> {vb:#x}")
    ra, rb = set(fa.mem_rsvmap), set(fb.mem_rsvmap)
    out += [f"- reserve {x:#x}+{s:#x}" for x, s in sorted(ra - rb)]
    out += [f"+ reserve {x:#x}+{s:#x}" for x, s in sorted(rb - ra)]
    ia, ib = _index(fa.root), _index(fb.root)
    out += [f"- node {p}" for p in ia if p not in ib]
    out += [f"+ node {p}" for p in ib if p not in ia]
    for path, na in ia.items():
        nb = ib.get(path)
        if nb is None:
            continue
        pa, pb = {p.name: p.value for p in na.props}, {p.name: p.value for p in nb.props}
        out += [f"- property {path}:{n}" for n in pa if n not in pb]
        out += [f"+ property {path}:{n} ({len(pb[n])} bytes)" for n in pb if n not in pa]
        out += [f"~ property {path}:{n} ({len(pa[n])} -> {len(pb[n])} bytes)"
                for n in pa if n in pb and pa[n] != pb[n]]
        common = [n for n in pa if n in pb]
        if common != [n for n in pb if n in pa]:
            out.append(f"~ property order of {path}")
        ca, cb = [c.name for c in na.children], [c.name for c in nb.children]
        if [c for c in ca if c in cb] != [c for c in cb if c in ca]:
            out.append(f"~ child order of {path}: {', '.join(ca)} -> {', '.join(cb)}")
    return out
