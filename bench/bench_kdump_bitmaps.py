"""Benchmark: the audit of a kdump-compressed file of a 512 GiB machine, bitmaps only (no page reads).

The file is what ``makedumpfile -d 31`` leaves of a mostly idle machine: the 1st bitmap maps all
System RAM, the 2nd keeps 16 of every 1024 pages (131,072 runs). The audit's snapshot has no
``machine.json`` and no ``crash_notes``, so no page is read: opening the file (one pass over both
bitmaps) and the memory check (runs of the 1st bitmap, and of the pages it filtered) are all it does.

Prints, in CPU time, the median audit time at 128 GiB and 512 GiB, the ratio to reading the
bitmap bytes alone (the same reads, no work), the ratio between the two sizes (4 when the time is
proportional to the bitmap size) and the audit's peak Python memory. Run: ``bash tasks bench``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crash_hotplug.audit import audit_vmcore, read_machine_at_panic
from crash_hotplug.crash.vmcore import read_vmcore_file
from crash_hotplug.elf.constants import NT_PRSTATUS
from crash_hotplug.elf.notes import append_elf_note
from crash_hotplug.elf.prstatus import ElfPrstatus
from crash_hotplug.elf.vmcoreinfo import build_vmcoreinfo_note
from crash_hotplug.makedumpfile.bitmap import CHUNK
from crash_hotplug.makedumpfile.diskdump import NewUtsname
from crash_hotplug.makedumpfile.writer import write_kdump_compressed

GiB = 1 << 30
PS = 4096
ROUNDS = 5
CPUS = 4


def machine(root: Path, gib: int) -> list[tuple[int, int]]:
    """A snapshot root of a ``gib`` GiB machine (RAM below 2 GiB, the rest from 4 GiB); its RAM ranges."""
    ram = [(0x100000, 2 * GiB - 1), (4 * GiB, (gib + 2) * GiB - 1)]
    iomem = "".join(f"{s:08x}-{e:08x} : System RAM\n" for s, e in ram)
    files = {
        "proc/iomem": "00001000-0009ffff : System RAM\n" + iomem,
        "sys/devices/system/cpu/online": f"0-{CPUS - 1}\n",
        "sys/devices/system/cpu/present": f"0-{CPUS - 1}\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return ram


def write_dump(path: Path, ram: list[tuple[int, int]]) -> None:
    present = [(s // PS, e // PS) for s, e in ram]
    dumped = [(p, p + 15) for s, e in present for p in range(s, e + 1, 1024)]
    notes = b"".join(append_elf_note("CORE", NT_PRSTATUS, ElfPrstatus(pr_pid=c).pack()) for c in range(CPUS))
    notes += build_vmcoreinfo_note({"OSRELEASE": "6.12.43+deb12-amd64", "PAGESIZE": "4096"})
    zero = bytes(PS)
    with path.open("wb") as f:
        write_kdump_compressed(
            f, max_mapnr=present[-1][1] + 1, present=present, dumped=dumped, page=lambda pfn: zero,
            compression="zlib", notes=notes, vmcoreinfo=b"OSRELEASE=6.12.43+deb12-amd64\n",
            utsname=NewUtsname("Linux", "big", "6.12.43+deb12-amd64", "#1 SMP", "x86_64", "(none)"),
            dump_level=31, nr_cpus=CPUS,
        )


def read_bitmaps(path: Path) -> None:
    """The bitmap bytes alone, read the way the reader reads them (by offset, CHUNK at a time)."""
    vf = read_vmcore_file(path)
    assert vf.kdump is not None
    bm = vf.kdump.first
    start, end = bm.offset, vf.kdump.second.offset + vf.kdump.second.nbytes
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(2):  # the audit passes over the bitmaps twice (open, then the memory check)
            for pos in range(start, end, CHUNK):
                os.pread(fd, min(CHUNK, end - pos), pos)
    finally:
        os.close(fd)


def run_audit(path: Path, root: Path) -> int:
    report = audit_vmcore(read_vmcore_file(path), read_machine_at_panic(root), samples=0)
    assert report.complete, report.findings
    return report.memory.filtered_bytes


def cpu_median(fn: object) -> float:
    times = []
    for _ in range(ROUNDS):
        t0 = time.process_time()
        fn()  # type: ignore[operator]
        times.append(time.process_time() - t0)
    return statistics.median(times)


def main() -> None:
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-kdump-") as tmp:
        for gib in (128, 512):
            d = Path(tmp) / str(gib)
            root = d / "root"
            ram = machine(root, gib)
            dump = d / "vmcore.kd"
            write_dump(dump, ram)
            filtered = run_audit(dump, root)
            t_audit = cpu_median(lambda dump=dump, root=root: run_audit(dump, root))
            t_read = cpu_median(lambda dump=dump: read_bitmaps(dump))
            tracemalloc.start()
            run_audit(dump, root)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            vf = read_vmcore_file(dump)
            assert vf.kdump is not None
            bitmap_bytes = 2 * vf.kdump.first.nbytes
            results[gib] = t_audit
            print(f"{gib} GiB: bitmaps {bitmap_bytes >> 20} MiB, file {dump.stat().st_size >> 20} MiB, "
                  f"{filtered // PS} pages filtered; audit median {t_audit * 1e3:.1f} ms CPU, "
                  f"bitmap bytes alone {t_read * 1e3:.1f} ms: ratio {t_audit / t_read:.1f}x; "
                  f"peak Python memory {peak / (1 << 20):.1f} MiB")
            for p in (dump,):
                p.unlink()
    print(f"512 GiB / 128 GiB audit time: {results[512] / results[128]:.2f} (bitmaps 4x larger)")


if __name__ == "__main__":
    main()
