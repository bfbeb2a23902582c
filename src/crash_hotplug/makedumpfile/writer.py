"""Writing a kdump-compressed file laid out as makedumpfile lays it out (``write_kdump_header``,
``write_kdump_bitmap``, ``write_kdump_pages``): for tests that need files makedumpfile cannot make
(snappy, zstd, header versions, broken fields) and for the benchmark's 512 GiB machine.

Streams: page descriptors and page data go out in batches, so a dump of any size needs only
the two bitmaps in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import BinaryIO, Final

from crash_hotplug.makedumpfile.codecs import compress_page
from crash_hotplug.makedumpfile.diskdump import (
    COMPRESSION_FLAGS,
    KDUMP_SIGNATURE,
    DiskDumpHeader,
    KdumpSubHeader,
    NewUtsname,
    PageDesc,
)

__all__ = ["write_kdump_compressed"]

Run = tuple[int, int]
_FLAG: Final = {name: bit for bit, name in COMPRESSION_FLAGS.items()}
_BATCH: Final = 4096


def _bitmap(runs: Iterable[Run], nbytes: int) -> bytearray:
    bm = bytearray(nbytes)
    for s, e in runs:
        while s <= e and s % 8:
            bm[s // 8] |= 1 << (s % 8)
            s += 1
        full = (e + 1 - s) // 8
        if full > 0:
            bm[s // 8 : s // 8 + full] = b"\xff" * full
            s += 8 * full
        while s <= e:
            bm[s // 8] |= 1 << (s % 8)
            s += 1
    return bm


def write_kdump_compressed(
    out: BinaryIO,
    *,
    max_mapnr: int,
    present: Iterable[Run],
    page: Callable[[int], bytes],
    dumped: Iterable[Run] | None = None,
    compression: str | None = "zlib",
    notes: bytes = b"",
    vmcoreinfo: bytes = b"",
    utsname: NewUtsname | None = None,
    dump_level: int = 0,
    nr_cpus: int = 1,
    block_size: int = 4096,
    header_version: int = 6,
    phys_base: int = 0,
    shared_zero_page: bool = True,
) -> int:
    """Write the file; ``present`` and ``dumped`` are ascending pfn runs (``dumped`` defaults to
    ``present``), ``page(pfn)`` gives a dumped page's bytes. Returns the file's size."""
    bs = block_size
    present = list(present)
    dumped_runs = present if dumped is None else list(dumped)
    half_blocks = -(-max_mapnr // (8 * bs))
    first = _bitmap(present, half_blocks * bs)
    second = _bitmap(dumped_runs, half_blocks * bs)
    n_dumped = sum(e - s + 1 for s, e in dumped_runs)
    vmci_off = bs + KdumpSubHeader.SIZE
    note_off = vmci_off + len(vmcoreinfo)
    sub_hdr_size = -(-(KdumpSubHeader.SIZE + len(vmcoreinfo) + len(notes)) // bs)
    sub = KdumpSubHeader(
        phys_base, dump_level, 0, 0, min(max_mapnr, 0xFFFFFFFF), vmci_off if vmcoreinfo else 0, len(vmcoreinfo),
        note_off if notes else 0, len(notes), 0, 0, 0, max_mapnr, max_mapnr,
    )
    status = _FLAG[compression] if compression else 0
    header = DiskDumpHeader(
        KDUMP_SIGNATURE, header_version, utsname or NewUtsname(), 0, 0, status, bs, sub_hdr_size, 2 * half_blocks,
        min(max_mapnr, 0xFFFFFFFF), 0, 0, 0, 0, nr_cpus,
    )
    out.seek(0)
    out.write(header.pack().ljust(bs, b"\0"))
    out.write((sub.pack() + vmcoreinfo + notes).ljust(sub_hdr_size * bs, b"\0"))
    out.write(first)
    out.write(second)
    pd_pos = (1 + sub_hdr_size + 2 * half_blocks) * bs
    data_pos = pd_pos + n_dumped * PageDesc.SIZE
    zero = bytes(bs)
    zero_off: int | None = None
    if shared_zero_page:
        out.seek(data_pos)
        out.write(zero)
        zero_off, data_pos = data_pos, data_pos + bs
    descs = bytearray()
    data = bytearray()

    def flush() -> None:
        nonlocal pd_pos, data_pos
        out.seek(pd_pos)
        out.write(descs)
        pd_pos += len(descs)
        out.seek(data_pos)
        out.write(data)
        data_pos += len(data)
        descs.clear()
        data.clear()

    for s, e in dumped_runs:
        for pfn in range(s, e + 1):
            raw = page(pfn)
            if zero_off is not None and raw == zero:
                descs += PageDesc(zero_off, bs, 0, 0).pack()
                continue
            flags, body = 0, raw
            if compression:
                packed = compress_page(compression, raw)
                if len(packed) < bs:
                    flags, body = _FLAG[compression], packed
            descs += PageDesc(data_pos + len(data), len(body), flags, 0).pack()
            data += body
            if len(descs) >= _BATCH * PageDesc.SIZE:
                flush()
    flush()
    return data_pos
