"""kdump-compressed and flattened files made from an ELF vmcore the way makedumpfile makes them,
written with the project's own writer: for codecs, header versions and broken fields Debian's
makedumpfile does not produce (its own output is tested in tests/makedumpfile/test_real_tool.py)."""

from __future__ import annotations

import random
from pathlib import Path

from crash_hotplug.crash.vmcore import VmcoreFile, read_vmcore_file
from crash_hotplug.elf.constants import PT_NOTE
from crash_hotplug.makedumpfile.diskdump import NewUtsname
from crash_hotplug.makedumpfile.flattened import write_flattened
from crash_hotplug.makedumpfile.writer import write_kdump_compressed

__all__ = ["flatten", "kdump_from_elf", "pfn_runs"]

PS = 4096


def pfn_runs(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive byte ranges as merged pfn runs (partial pages count, as makedumpfile's 1st bitmap does)."""
    out: list[tuple[int, int]] = []
    for s, e in sorted((s // PS, e // PS) for s, e in ranges):
        if out and s <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def kdump_from_elf(elf: Path, out: Path, *, compression: str | None = "zlib", dump_level: int = 0,
                   header_version: int = 6, exclude: tuple[tuple[int, int], ...] = ()) -> Path:
    """``makedumpfile -d LEVEL -c|-l|-p|-z ELF OUT``: at -d 1 zero pages stay in the 2nd bitmap and
    point at one shared zero page, as makedumpfile writes them; the pfn runs in ``exclude`` leave the
    2nd bitmap, as the page kinds of the higher levels do (makedumpfile finds those in struct page)."""
    vf = read_vmcore_file(elf)
    assert vf.core is not None
    present = pfn_runs([(s.paddr, s.end) for s in vf.loads if s.size])
    max_mapnr = present[-1][1] + 1
    zero = bytes(PS)

    def page(pfn: int) -> bytes:
        data = vf.read_phys(pfn * PS, PS)
        return zero if data is None else data

    dumped = present
    for xs, xe in exclude:
        dumped = [r for s, e in dumped for r in ((s, min(e, xs - 1)), (max(s, xe + 1), e)) if r[0] <= r[1]]
    note = next(p for p in vf.core.phdrs if p.p_type == PT_NOTE)
    notes = elf.read_bytes()[note.p_offset : note.p_offset + note.p_filesz]
    info = "".join(f"{k}={v}\n" for k, v in vf.vmcoreinfo.items()).encode()
    uts = NewUtsname("Linux", "small", vf.vmcoreinfo.get("OSRELEASE", ""), "#1 SMP", "x86_64", "(none)")
    with out.open("wb") as f:
        write_kdump_compressed(
            f, max_mapnr=max_mapnr, present=present, dumped=dumped, page=page, compression=compression,
            notes=notes, vmcoreinfo=info, utsname=uts, dump_level=dump_level, nr_cpus=len(vf.prstatus),
            header_version=header_version,
        )
    return out


def flatten(src: Path, out: Path, *, piece: int = 64 << 10, shuffle: int | None = 1) -> Path:
    """``makedumpfile -F``'s stream of ``src``: pieces of ``piece`` bytes, in an order shuffled by
    ``shuffle`` (None keeps file order)."""
    data = src.read_bytes()
    pieces = [(off, data[off : off + piece]) for off in range(0, len(data), piece)]
    if shuffle is not None:
        random.Random(shuffle).shuffle(pieces)
    with out.open("wb") as f:
        write_flattened(pieces, f)
    return out


def open_both(elf: Path, other: Path) -> tuple[VmcoreFile, VmcoreFile]:
    return read_vmcore_file(elf), read_vmcore_file(other)
