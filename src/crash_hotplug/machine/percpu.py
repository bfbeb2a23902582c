"""Where each CPU's per-CPU data lies, from the first-chunk layout the kernel logs at boot
(``mm/percpu.c: pcpu_dump_alloc_info``), so that ``per_cpu_ptr_to_phys(per_cpu_ptr(crash_notes, cpu))``
can be found for CPUs that are possible but not present (sysfs shows ``crash_notes`` only for
present CPUs).

The embedding first-chunk allocator places each group's units in one contiguous allocation, so
within a group CPU ``n``'s copy lies ``(unit(n) - unit(m)) * unit_size`` from CPU ``m``'s.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["PcpuAllocInfo", "parse_pcpu_alloc", "place_per_cpu"]

_SUMMARY = re.compile(r"pcpu-alloc: s([0-9]+) r([0-9]+) d([0-9]+) u([0-9]+) alloc=([0-9]+)\*([0-9]+)")
_BODY = re.compile(r"pcpu-alloc: (\[[0-9]+\].*)$")
_PAGE_FC = re.compile(r"percpu: [0-9]+ [0-9]+K pages/cpu|PERCPU: [0-9]+ [0-9]+K pages/cpu", re.IGNORECASE)


@dataclass(frozen=True)
class PcpuAllocInfo:
    """``struct pcpu_alloc_info`` as logged: unit size and, per unit, its group and CPU (None if empty)."""

    static_size: int
    reserved_size: int
    dyn_size: int
    unit_size: int
    atom_size: int
    units: tuple[tuple[int, int | None], ...]
    embedded: bool = True

    def unit_of(self, cpu: int) -> tuple[int, int]:
        """(unit index, group) of ``cpu``; ``KeyError`` if the layout has no unit for it."""
        for i, (group, c) in enumerate(self.units):
            if c == cpu:
                return i, group
        raise KeyError(cpu)


def parse_pcpu_alloc(dmesg: str) -> PcpuAllocInfo | None:
    """The first-chunk layout from a kernel log, or None if the log does not have it."""
    summary = None
    body: list[str] = []
    for line in dmesg.splitlines():
        m = _SUMMARY.search(line)
        if m:
            summary = m
            body = []
            continue
        if summary is not None:
            b = _BODY.search(line)
            if b:
                body.append(b.group(1))
    if summary is None:
        return None
    s, r, d, u, _n, atom = (int(x) for x in summary.groups())
    units: list[tuple[int, int | None]] = []
    group = -1
    for token in " ".join(body).split():
        g = re.fullmatch(r"\[([0-9]+)\]", token)
        if g:
            group = int(g.group(1))
            continue
        if group < 0:
            raise ValueError(f"pcpu-alloc: unit {token!r} before any [group]")
        if set(token) == {"-"}:
            units.append((group, None))
        else:
            units.append((group, int(token, 10)))
    embedded = _PAGE_FC.search(dmesg) is None
    return PcpuAllocInfo(s, r, d, u, atom, tuple(units), embedded)


def place_per_cpu(info: PcpuAllocInfo, known: Mapping[int, int], cpus: list[int]) -> dict[int, int]:
    """Addresses of a per-CPU object for ``cpus``, from its known addresses on some CPUs.

    Raises ``ValueError`` saying which CPU cannot be placed (no known CPU in its group, or a layout
    that is not the embedding allocator's).
    """
    out: dict[int, int] = {}
    for cpu in cpus:
        if cpu in known:
            out[cpu] = known[cpu]
            continue
        if not info.embedded:
            raise ValueError(
                f"cpu{cpu}: per-CPU areas are page-mapped (percpu_alloc=page); no physical layout to infer"
            )
        try:
            unit, group = info.unit_of(cpu)
        except KeyError:
            raise ValueError(f"cpu{cpu}: not in the logged pcpu-alloc layout") from None
        ref = next(
            ((k, a) for k, a in sorted(known.items()) if _group_of(info, k) == group),
            None,
        )
        if ref is None:
            raise ValueError(f"cpu{cpu}: no CPU with a known address in its pcpu group {group}")
        ref_unit, _ = info.unit_of(ref[0])
        out[cpu] = ref[1] + (unit - ref_unit) * info.unit_size
    return out


def _group_of(info: PcpuAllocInfo, cpu: int) -> int | None:
    try:
        return info.unit_of(cpu)[1]
    except KeyError:
        return None
