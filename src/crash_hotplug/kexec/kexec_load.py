"""``kexec_load`` of a crash image: the kernel side (``kernel/kexec.c: do_kexec_load``,
``kexec_load_check``, ``kernel/kexec_core.c: sanity_check_segment_list``) and what kexec-tools
``kexec -p [--hotplug]`` does before calling it (``kexec/crashdump-elf.c``,
``kexec/arch/i386/crashdump-x86.c``, ``kexec/kexec.c: update_purgatory``).

kexec-tools builds the elfcorehdr itself from what userspace sees: a PT_NOTE for each CPU that has
``cpuN/crash_notes`` (present CPUs), the VMCOREINFO note, the kernel-text LOAD, and a LOAD for each
``System RAM`` line of ``/proc/iomem`` minus ``Crash kernel``; the first 640 KiB range is copied to
a backup segment and its LOAD points there. The header is aligned to 1024 bytes; its segment is at
least 16 KiB, or, with ``--hotplug``, ``ALIGN(/sys/kernel/crash_elfcorehdr_size, 1024)``. The
purgatory digest (symbols ``sha256_regions``/``sha256_digest``) covers every segment but the
purgatory and, with ``--hotplug``, the elfcorehdr; ``--hotplug`` also passes
``KEXEC_UPDATE_ELFCOREHDR`` so the kernel sets ``hotplug_support``.

Userspace places the segments (``add_buffer`` -> ``locate_hole`` with ``hole_end = -1``: as high
as possible in the crashkernel region) in the order ``do_bzImage64_load`` adds them: backup,
elfcorehdr, purgatory, setup data with the command line, kernel, initrd. No vector records a
``kexec_load`` placement to check the addresses against.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Final

from crash_hotplug.crash.x86_64 import arch_crash_get_elfcorehdr_size
from crash_hotplug.elf.constants import PF_R, PF_W, PF_X, PT_LOAD, PT_NOTE
from crash_hotplug.elf.structs import PHDR, Elf64_Ehdr
from crash_hotplug.kexec.kexec_core import Kexec
from crash_hotplug.kexec.kexec_file import BOOT_PARAMS_BUFSZ, KexecPayload, boot_params_buffer
from crash_hotplug.kexec.kimage import (
    KEXEC_ARCH_MASK,
    KEXEC_CRASH_HOTPLUG_SUPPORT,
    KEXEC_ON_CRASH,
    KEXEC_PRESERVE_CONTEXT,
    KEXEC_SEGMENT_MAX,
    KEXEC_TYPE_CRASH,
    KEXEC_UPDATE_ELFCOREHDR,
    KexecError,
    KexecSegment,
    Kimage,
)
from crash_hotplug.kexec.lock import KexecBusyError
from crash_hotplug.kexec.purgatory import (
    KEXEC_TOOLS_SYMBOLS,
    PurgatoryInfo,
    PurgatoryObject,
    build_purgatory,
    pack_sha_regions,
    sha256_segments,
)
from crash_hotplug.kexec.segments import kimage_load_segment
from crash_hotplug.machine.kernel import KernelVersion
from crash_hotplug.machine.machine import Machine
from crash_hotplug.machine.physmem import PAGE_SIZE, zeros
from crash_hotplug.machine.resource import system_ram_ranges

__all__ = [
    "KEXEC_TOOLS_ELF_CORE_HEADER_ALIGN",
    "KexecToolsLoad",
    "crash_create_elf64_headers",
    "kexec_load",
    "kexec_load_unload",
    "kexec_tools_load",
]

#: kexec-tools ``kexec/crashdump.h``
KEXEC_TOOLS_ELF_CORE_HEADER_ALIGN: Final = 1024
#: x86 kexec-tools pads a small elfcorehdr segment to 16 KiB
MIN_ELFCOREHDR_MEMSZ: Final = 16 * 1024
BACKUP_SRC_END: Final = 0xA0000
#: first release that knows the generic ``KEXEC_CRASH_HOTPLUG_SUPPORT`` flag
GENERIC_HOTPLUG_FLAG: Final = KernelVersion(6, 10)
_RWX: Final = PF_R | PF_W | PF_X


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def _crash_memory_ranges(m: Machine) -> list[tuple[int, int]]:
    """``get_crash_memory_ranges`` + ``exclude_region``: System RAM lines minus ``Crash kernel``."""
    rams = system_ram_ranges(m.iomem)
    last = _RANGES.get("last")
    if last is not None and last[0] is rams and last[1] == m.crashk_res:
        return list(last[2])
    ranges = _exclude_crashkernel(list(rams), m.crashk_res)
    _RANGES["last"] = (rams, m.crashk_res, tuple(ranges))
    return ranges


#: the last System RAM ranges (the tree's cached tuple, held so it cannot be reused), crashkernel
#: region and what :func:`_crash_memory_ranges` made of them
_RANGES: dict[str, tuple[tuple[tuple[int, int], ...], tuple[int, int] | None, tuple[tuple[int, int], ...]]] = {}


def _exclude_crashkernel(ranges: list[tuple[int, int]], crashk: tuple[int, int] | None) -> list[tuple[int, int]]:
    if crashk is None:
        return ranges
    cs, ce = crashk
    out: list[tuple[int, int]] = []
    for s, e in ranges:
        if cs < e and ce > s:
            if cs != s and ce != e:
                out += [(s, cs - 1), (ce + 1, e)]
            elif cs != s:
                out.append((s, cs - 1))
            else:
                out.append((ce + 1, e))
        else:
            out.append((s, e))
    return out


def crash_create_elf64_headers(m: Machine, backup: tuple[int, int, int] | None = None) -> bytes:
    """kexec-tools' elfcorehdr (``crash_create_elf64_headers``) for the machine as userspace sees
    it now, padded to 1024 bytes. ``backup`` is (source start, source size, backup address).

    The same inputs give the same bytes object: the last header is handed out again while the
    System RAM tuple of the iomem tree is the same object (the tree did not change) and the rest
    is equal; else the last few headers are looked up by value."""
    cpus = tuple([(m.cpus.cpu(c).crash_notes, m.crash_notes_size) for c in m.cpus.present])
    rams = system_ram_ranges(m.iomem)
    rest = (cpus, m.crashk_res, backup, m.vmcoreinfo_paddr, m.vmcoreinfo_size, m.text_paddr, m.text_vaddr,
            m.text_size, m.page_offset)
    last = _LAST_HEADER.get("last")
    if last is not None and last[0] is rams and last[1] == rest:
        return last[2]
    ranges = _crash_memory_ranges(m)
    key = (cpus, tuple(ranges), *rest[1:])
    hit = _HEADERS.get(key)
    if hit is None:
        hit = _build_elf64_headers(m, list(cpus), ranges, backup)
        if len(_HEADERS) >= 8:
            del _HEADERS[next(iter(_HEADERS))]
        _HEADERS[key] = hit
    # the tuple is held with the header, so a later tree's tuple can never be taken for it
    _LAST_HEADER["last"] = (rams, rest, hit)
    return hit


#: the last few headers :func:`crash_create_elf64_headers` built, by everything they were built
#: from (a reload during a storm often sees the same memory as the last one)
_HEADERS: dict[tuple[object, ...], bytes] = {}
#: the last header handed out, with the System RAM tuple and the other inputs it was made from
_LAST_HEADER: dict[str, tuple[tuple[tuple[int, int], ...], tuple[object, ...], bytes]] = {}


def _build_elf64_headers(m: Machine, cpus: list[tuple[int, int]], ranges: list[tuple[int, int]],
                         backup: tuple[int, int, int] | None) -> bytes:
    text_size = _align(m.text_size, PAGE_SIZE)
    nr = len(cpus) + 1 + 1 + len(ranges)
    size = _align(Elf64_Ehdr.SIZE + nr * PHDR.size, KEXEC_TOOLS_ELF_CORE_HEADER_ALIGN)
    buf = bytearray(size)
    off = Elf64_Ehdr.SIZE
    for addr, length in [*cpus, (m.vmcoreinfo_paddr, m.vmcoreinfo_size)]:
        PHDR.pack_into(buf, off, PT_NOTE, 0, addr, 0, addr, length, length, 0)
        off += PHDR.size
    PHDR.pack_into(buf, off, PT_LOAD, _RWX, m.text_paddr, m.text_vaddr, m.text_paddr, text_size, text_size, 0)
    off += PHDR.size
    for s, e in ranges:
        p_offset = s
        if backup is not None and s == backup[0] and e - s + 1 == backup[1]:
            p_offset = backup[2]
        PHDR.pack_into(buf, off, PT_LOAD, _RWX, p_offset, (m.page_offset + s) & ((1 << 64) - 1), s,
                       e - s + 1, e - s + 1, 0)
        off += PHDR.size
    buf[: Elf64_Ehdr.SIZE] = Elf64_Ehdr.core(phnum=(off - Elf64_Ehdr.SIZE) // PHDR.size).pack()
    return bytes(buf)


@dataclass
class KexecToolsLoad:
    """What kexec-tools prepared for ``kexec_load``: segments, entry, flags, and where things are."""

    segments: list[KexecSegment]
    entry: int
    flags: int
    elfcorehdr: int
    purgatory: PurgatoryInfo
    purgatory_index: int
    cmdline: str


class _Placer:
    """kexec-tools ``add_buffer`` / ``locate_hole`` with ``hole_end = -1``: the highest aligned hole
    among the crashkernel region's free ranges (the region minus the segments placed so far)."""

    def __init__(self, window: tuple[int, int]) -> None:
        self.window = window
        self.used: list[tuple[int, int]] = []

    def _free(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        start = self.window[0]
        for s, e in sorted(self.used):
            if start < s:
                out.append((start, s - 1))
            start = max(start, e + 1)
        if start < self.window[1]:
            out.append((start, self.window[1]))
        return out

    def place(self, memsz: int, align: int, hole_min: int = 0) -> int:
        memsz = _align(memsz, PAGE_SIZE)
        align = max(align, PAGE_SIZE)
        # the hole is a function of the window, what is placed and the request: every reload of
        # a storm places the same segments in the same order
        key = (self.window, tuple(self.used), memsz, align, hole_min)
        base = _PLACED.get(key)
        if base is None:
            base = self._locate(memsz, align, hole_min)
            if len(_PLACED) >= _PLACED_MAX:
                _PLACED.clear()
            _PLACED[key] = base
        self.used.append((base, base + memsz - 1))
        return base

    def _locate(self, memsz: int, align: int, hole_min: int) -> int:
        base: int | None = None
        for start, end in self._free():
            start = _align(max(start, hole_min), align)
            if start >= end or end - start < memsz - 1:
                continue
            cand = (end - memsz + 1) // align * align
            if cand >= start:
                base = cand
        if base is None:
            raise KexecError(f"kexec-tools: could not find a free area of memory of {memsz:#x} bytes", 99)
        return base


#: holes found by :meth:`_Placer.place`, by (window, placed so far, memsz, align, hole_min)
_PLACED: dict[tuple[tuple[int, int], tuple[tuple[int, int], ...], int, int, int], int] = {}
_PLACED_MAX: Final = 256


def _userspace_prepare(m: Machine, payload: KexecPayload, hotplug: bool, purgatory: bytes) -> KexecToolsLoad:
    """What ``kexec -p [--hotplug]`` does before the system call (``my_load``, ``do_bzImage64_load``,
    ``update_purgatory``): place and fill the segments, relocate and patch purgatory.

    Everything it produces is a function of the crashkernel region, the backup source, the header
    bytes, ``--hotplug`` (with the segment size it reads), the payload and the purgatory object:
    a prepared load is kept by those (the header by identity: :func:`crash_create_elf64_headers`
    hands out the same bytes object while the machine it describes is the same), and a reload
    that finds one gets fresh segments and a fresh :class:`PurgatoryInfo` made from it."""
    crashk = m.crashk_res
    if crashk is None:
        raise KexecError("kexec-tools: no 'Crash kernel' in /proc/iomem", 99)
    low = next(((s, e) for s, e in system_ram_ranges(m.iomem) if e <= BACKUP_SRC_END), None)
    backup_src = (low[0], low[1] - low[0] + 1) if low else (0, BACKUP_SRC_END)
    bsz = (backup_src[1] + 1024) & ~1023
    backup_mem = _Placer(crashk).place(_align(bsz, PAGE_SIZE), 1024)
    hdr = crash_create_elf64_headers(m, (backup_src[0], backup_src[1], backup_mem))
    size = arch_crash_get_elfcorehdr_size(m.config) if hotplug else 0
    key = (crashk, backup_src, hdr, hotplug, size, payload, purgatory)
    hit = _PREPARED.get(key)
    if hit is None:
        hit = _prepare(crashk, payload, hotplug, size, purgatory, backup_src, backup_mem, hdr)
        if len(_PREPARED) >= 8:
            del _PREPARED[next(iter(_PREPARED))]
        _PREPARED[key] = hit
    return hit.load()


@dataclass(frozen=True)
class _Prepared:
    """A prepared load as immutable values: each segment's (buf, bufsz, mem, memsz, name), and the
    relocated, patched purgatory with where its sections went."""

    segments: tuple[tuple[bytes, int, int, int, str], ...]
    entry: int
    flags: int
    elfcorehdr: int
    purgatory_obj: PurgatoryObject
    purgatory_mem: int
    purgatory_bufsz: int
    purgatory_memsz: int
    purgatory_align: int
    purgatory_placed: tuple[tuple[int, tuple[int, int]], ...]
    purgatory_index: int
    cmdline: str

    def load(self) -> KexecToolsLoad:
        """The prepared load as new, mutable objects."""
        segs = [KexecSegment(*s) for s in self.segments]
        pi = PurgatoryInfo(self.purgatory_obj, mem=self.purgatory_mem,
                           purgatory_buf=bytearray(self.segments[self.purgatory_index][0]),
                           bufsz=self.purgatory_bufsz, memsz=self.purgatory_memsz, buf_align=self.purgatory_align,
                           placed=dict(self.purgatory_placed), start=self.entry)
        return KexecToolsLoad(segs, self.entry, self.flags, self.elfcorehdr, pi, self.purgatory_index, self.cmdline)


#: prepared loads by (crashkernel region, backup source, header, --hotplug, its size, payload,
#: purgatory), the last few (see :func:`_userspace_prepare`)
_PREPARED: dict[tuple[object, ...], _Prepared] = {}


def _prepare(crashk: tuple[int, int], payload: KexecPayload, hotplug: bool, hotplug_size: int, purgatory: bytes,
             backup_src: tuple[int, int], backup_mem: int, hdr: bytes) -> _Prepared:
    flags = KEXEC_ON_CRASH
    placer = _Placer(crashk)
    segs: list[KexecSegment] = []

    def add(buf: bytes, memsz: int, align: int, name: str, hole_min: int = 0) -> KexecSegment:
        memsz = _align(max(memsz, len(buf)), PAGE_SIZE)
        seg = KexecSegment(buf, len(buf), placer.place(memsz, align, hole_min), memsz, name)
        segs.append(seg)
        return seg

    bsz = (backup_src[1] + 1024) & ~1023
    # zeros that purgatory fills at panic: the same object every reload, so the digest's prefix
    # and the segment copy see it unchanged at once
    backup = add(zeros(bsz), bsz, 1024, "backup")
    # the header was built for the backup address the first placement gives
    assert backup.mem == backup_mem
    if hotplug:
        if hotplug_size == 0:
            raise KexecError("kexec-tools --hotplug: the kernel needs CONFIG_CRASH_HOTPLUG "
                             "(/sys/kernel/crash_elfcorehdr_size missing or 0)")
        memsz = _align(hotplug_size, KEXEC_TOOLS_ELF_CORE_HEADER_ALIGN)
        flags |= KEXEC_UPDATE_ELFCOREHDR
    else:
        memsz = max(len(hdr), MIN_ELFCOREHDR_MEMSZ)
    elfhdr = add(hdr, memsz, KEXEC_TOOLS_ELF_CORE_HEADER_ALIGN, "elfcorehdr")
    pi = PurgatoryInfo.setup_kbuf(PurgatoryObject.parse(purgatory))
    pseg = add(bytes(pi.bufsz), pi.memsz, pi.buf_align, "purgatory", 0x3000)
    entry = pi.setup_sechdrs(pseg.mem)
    purgatory_index = len(segs) - 1
    cmdline = f"{payload.cmdline} elfcorehdr={elfhdr.mem // 1024}K"
    add(boot_params_buffer(cmdline), BOOT_PARAMS_BUFSZ, 16, "boot_params", 0x3000)
    add(payload.kernel, payload.kernel_memsz, payload.kernel_alignment, "kernel", 0x100000)
    if payload.initrd:
        add(payload.initrd, len(payload.initrd), PAGE_SIZE, "initrd")
    # update_purgatory: digest all but the purgatory (and the elfcorehdr with --hotplug)
    chosen = [(s.buf, s.mem, s.memsz) for i, s in enumerate(segs)
              if i != purgatory_index and not (hotplug and s.mem == elfhdr.mem)]
    regions, digest = sha256_segments(chosen)
    pi.set_symbol(KEXEC_TOOLS_SYMBOLS[0], pack_sha_regions(regions))
    pi.set_symbol(KEXEC_TOOLS_SYMBOLS[1], digest)
    segs[purgatory_index].buf = bytes(pi.purgatory_buf)
    segs[purgatory_index].bufsz = pi.bufsz
    return _Prepared(tuple((s.buf, s.bufsz, s.mem, s.memsz, s.name) for s in segs), entry, flags, elfhdr.mem,
                     pi.obj, pi.mem, pi.bufsz, pi.memsz, pi.buf_align, tuple(pi.placed.items()), purgatory_index,
                     cmdline)


def kexec_load(kx: Kexec, entry: int, segments: list[KexecSegment], flags: int) -> Kimage | None:
    """The ``kexec_load`` system call for a crash image (no segments: unload).

    Refuses unknown flags (``KEXEC_UPDATE_ELFCOREHDR`` is known only with ``CONFIG_CRASH_HOTPLUG``,
    ``KEXEC_CRASH_HOTPLUG_SUPPORT`` only from 6.10, which is why kexec-tools passes 0x4 on x86),
    more than 16 segments, unaligned, overlapping or out-of-crashkernel segments;
    ``KexecBusyError`` when the kexec lock is taken.
    """
    known = KEXEC_ON_CRASH | KEXEC_PRESERVE_CONTEXT
    config = kx.machine.config
    if config.crash_hotplug:
        known |= KEXEC_UPDATE_ELFCOREHDR
        if config.version >= GENERIC_HOTPLUG_FLAG:
            known |= KEXEC_CRASH_HOTPLUG_SUPPORT
    if flags & ~(known | KEXEC_ARCH_MASK):
        raise KexecError(f"kexec_load: unknown flags {flags & ~(known | KEXEC_ARCH_MASK):#x}")
    if len(segments) > KEXEC_SEGMENT_MAX:
        raise KexecError(f"kexec_load: {len(segments)} segments, more than {KEXEC_SEGMENT_MAX}")
    if not flags & KEXEC_ON_CRASH:
        raise KexecError("only crash images (KEXEC_ON_CRASH) are modelled")
    if not kx.kexec_trylock():
        raise KexecBusyError("kexec_load")
    try:
        if kx.kexec_crash_image is not None:
            kx.arch_kexec_unprotect_crashkres()
        if not segments:
            kx.kexec_crash_image = None
            return None
        _sanity_check_segment_list(kx, segments)
        image = Kimage(type=KEXEC_TYPE_CRASH, file_mode=False, segments=list(segments), start=entry,
                       digest_symbols=KEXEC_TOOLS_SYMBOLS, flags=flags)
        # arch_crash_hotplug_support (x86): either flag will do for a kexec_load image
        if flags & (KEXEC_UPDATE_ELFCOREHDR | KEXEC_CRASH_HOTPLUG_SUPPORT):
            image.hotplug_support = True
        for seg in image.segments:
            kimage_load_segment(kx.machine.mem, seg)
        kx.kexec_crash_image = image
        return image
    finally:
        if kx.kexec_crash_image is not None:
            kx.arch_kexec_protect_crashkres()
        kx.kexec_unlock()


def _sanity_check_segment_list(kx: Kexec, segments: list[KexecSegment]) -> None:
    lo, hi = kx.crash_windows()[0]
    # no two segments overlap when, in order of address, each ends before the next begins (one
    # sort instead of every pair; the pairs are walked only to name the first overlap found)
    spans = sorted([(s.mem, s.mem + s.memsz - 1) for s in segments])
    disjoint = all(a[1] < b[0] for a, b in pairwise(spans))
    for i, s in enumerate(segments):
        mem, memsz = s.mem, s.memsz
        if mem % PAGE_SIZE or memsz % PAGE_SIZE:
            raise KexecError(f"segment {i} at {mem:#x} size {memsz:#x} is not page aligned", 99)
        if s.bufsz > memsz:
            raise KexecError(f"segment {i}: bufsz {s.bufsz:#x} > memsz {memsz:#x}")
        if mem < lo or mem + memsz - 1 > hi:
            raise KexecError(f"segment {i} [{mem:#x}-{s.end:#x}] lies outside crashk_res", 99)
        if disjoint:
            continue
        for j, t in enumerate(segments[:i]):
            if s.overlaps(t.mem, t.end):
                raise KexecError(f"segments {j} and {i} overlap")


def kexec_tools_load(kx: Kexec, payload: KexecPayload, *, hotplug: bool = False,
                     purgatory: bytes | None = None) -> Kimage:
    """``kexec -p [--hotplug]``: kexec-tools prepares the segments and calls :func:`kexec_load`."""
    prep = _userspace_prepare(kx.machine, payload, hotplug,
                              build_purgatory(symbols=KEXEC_TOOLS_SYMBOLS) if purgatory is None else purgatory)
    image = kexec_load(kx, prep.entry, prep.segments, prep.flags)
    assert image is not None
    image.purgatory = prep.purgatory
    image.purgatory_index = prep.purgatory_index
    image.cmdline = prep.cmdline
    return image


def kexec_load_unload(kx: Kexec) -> None:
    """``kexec -p -u``: ``kexec_load`` with no segments."""
    kexec_load(kx, 0, [], KEXEC_ON_CRASH)
