"""``kexec_file_load`` of a crash image on x86_64 (``kernel/kexec_file.c``,
``arch/x86/kernel/kexec-bzimage64.c: bzImage64_load``, ``arch/x86/kernel/crash.c:
crash_load_segments``).

The kernel builds everything: the elfcorehdr from the machine's state (sized for hotplug with
``CONFIG_CRASH_HOTPLUG``), the purgatory, the boot parameters with ``elfcorehdr=`` on the command
line, the kernel and the initrd, in that order. Segments are placed in ``crashk_res``: the
elfcorehdr bottom-up (so it lands at the start of the region, 0x6f000000 in the vectors), the rest
top-down. The SHA-256 digest covers every segment but the purgatory and, with
``CONFIG_CRASH_HOTPLUG``, the elfcorehdr; ``digest_bug_6_6`` reproduces the 6.6 index mix-up
(``j`` for ``i``) fixed in 2024. :func:`kexec_purgatory_repatch` is the RFC v1 alternative: digest
everything, elfcorehdr included, and patch purgatory again after each rewrite.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from crash_hotplug.crash.core import ELF_CORE_HEADER_ALIGN
from crash_hotplug.crash.x86_64 import crash_load_segments_memsz, prepare_elf_headers
from crash_hotplug.kexec.kexec_core import Kexec
from crash_hotplug.kexec.kimage import (
    KEXEC_FILE_DEBUG,
    KEXEC_FILE_NO_INITRAMFS,
    KEXEC_FILE_ON_CRASH,
    KEXEC_FILE_UNLOAD,
    KEXEC_TYPE_CRASH,
    KexecError,
    Kimage,
)
from crash_hotplug.kexec.lock import KexecBusyError
from crash_hotplug.kexec.purgatory import (
    KERNEL_SYMBOLS,
    PurgatoryInfo,
    PurgatoryObject,
    build_purgatory,
    pack_sha_regions,
    sha256_segments,
)
from crash_hotplug.kexec.segments import KexecBuf, kexec_add_buffer, kimage_load_segment
from crash_hotplug.machine.kernel import KernelVersion

__all__ = [
    "BOOT_PARAMS_BUFSZ",
    "KexecPayload",
    "boot_params_buffer",
    "bzimage64_load",
    "crash_load_segments",
    "kexec_calculate_store_digests",
    "kexec_file_load",
    "kexec_file_unload",
    "kexec_purgatory_repatch",
]

KEXEC_FILE_FLAGS: Final = KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH | KEXEC_FILE_NO_INITRAMFS | KEXEC_FILE_DEBUG
MIN_PURGATORY_ADDR: Final = 0x3000
MIN_BOOTPARAM_ADDR: Final = 0x3000
MIN_KERNEL_LOAD_ADDR: Final = 0x100000
MIN_INITRD_LOAD_ADDR: Final = 0x1000000
#: ``sizeof(struct boot_params)`` + command line + setup_data as the 6.x kernels load them
#: (``bufsz=0x1100`` in the vectors' debug log)
BOOT_PARAMS_BUFSZ: Final = 0x1100
BOOT_PARAMS_SIZE: Final = 0x1000
PAGE_SIZE: Final = 4096
#: first release with the top-down placement fix (see :mod:`crash_hotplug.kexec.segments`)
TOP_DOWN_FIX: Final = KernelVersion(6, 8)


def _pattern(tag: bytes, size: int) -> bytes:
    block = b"".join(hashlib.sha256(tag + bytes([i])).digest() for i in range(128))
    return (block * (size // len(block) + 1))[:size]


@dataclass(frozen=True)
class KexecPayload:
    """What ``kexec -p`` hands over: the bzImage's protected-mode kernel (``kernel``) with its
    ``init_size`` and ``kernel_alignment``, the initrd and the capture command line."""

    kernel: bytes
    kernel_memsz: int
    initrd: bytes = b""
    cmdline: str = "console=ttyS0 nr_cpus=1 irqpoll reset_devices nokaslr"
    kernel_alignment: int = 0x200000

    @classmethod
    def synthetic(cls, *, kernel_size: int = 0x20000, kernel_memsz: int = 0x80000, initrd_size: int = 0x8000,
                  tag: bytes = b"capture") -> KexecPayload:
        """Deterministic small contents (fast tests)."""
        return cls(_pattern(tag + b"/kernel", kernel_size), kernel_memsz, _pattern(tag + b"/initrd", initrd_size))

    @classmethod
    def debian(cls, kernel: str = "6.12.43") -> KexecPayload:
        """Contents of the sizes the vectors' kernels loaded (``bufsz``/``memsz`` from the debug log)."""
        sizes = {"6.12.43": (0xB707C0, 0x37EE000), "6.12": (0xB96200, 0x37EF000), "6.1": (0x7D2200, 0x3F97000)}
        ksize, kmem = sizes[kernel]
        return cls(_pattern(b"vmlinuz/" + kernel.encode(), ksize), kmem, _pattern(b"initrd", 0xFC01F))


def crash_load_segments(kx: Kexec, image: Kimage) -> None:
    """``crash_load_segments``: build the elfcorehdr from the machine's state now and place it."""
    m = kx.machine
    buf, nr_ranges = prepare_elf_headers(m.kernel_state())
    bufsz = len(buf)
    memsz = crash_load_segments_memsz(m.config, bufsz, nr_ranges)
    if image.elfcorehdr_slots > 1:
        # room for two complete headers; the capture kernel is pointed at the first
        memsz = -(-memsz // PAGE_SIZE) * PAGE_SIZE * image.elfcorehdr_slots
    image.elf_headers = buf
    image.elf_headers_sz = bufsz
    if m.config.crash_hotplug and memsz != bufsz:
        image.elfcorehdr_index = image.nr_segments
        image.elf_headers_sz = memsz
    kbuf = KexecBuf(buf, bufsz, memsz, buf_align=ELF_CORE_HEADER_ALIGN, top_down=False, name="elfcorehdr")
    kexec_add_buffer(image, kbuf, kx.crash_windows())
    image.elf_load_addr = kbuf.mem
    _dbg(kx, image, f"kexec: Loaded ELF headers at {kbuf.mem:#x} bufsz={bufsz:#x} memsz={kbuf.memsz:#x}")


def _dbg(kx: Kexec, image: Kimage, msg: str) -> None:
    if image.flags & KEXEC_FILE_DEBUG:
        kx.machine.printk(msg)


@functools.lru_cache(maxsize=16)
def boot_params_buffer(cmdline: str) -> bytes:
    """A ``struct boot_params`` (only the setup header magic filled) followed by the command line
    (a function of the command line: the same object for the same line)."""
    bp = bytearray(BOOT_PARAMS_SIZE)
    bp[0x202:0x206] = b"HdrS"
    struct.pack_into("<I", bp, 0x228, 0)  # cmd_line_ptr: filled by the loader at run time
    raw = cmdline.encode() + b"\0"
    if BOOT_PARAMS_SIZE + len(raw) > BOOT_PARAMS_BUFSZ:
        raise KexecError(f"command line of {len(raw)} bytes too long for the model's boot parameters")
    return bytes(bp + raw).ljust(BOOT_PARAMS_BUFSZ, b"\0")


def bzimage64_load(kx: Kexec, image: Kimage, payload: KexecPayload, purgatory: bytes) -> None:
    """``bzImage64_load``: elfcorehdr (crash), purgatory, boot params + command line, kernel, initrd."""
    windows = kx.crash_windows()
    obo = kx.machine.config.version < TOP_DOWN_FIX
    if image.type == KEXEC_TYPE_CRASH:
        crash_load_segments(kx, image)
    pi = PurgatoryInfo.setup_kbuf(PurgatoryObject.parse(purgatory))
    pbuf = KexecBuf(b"", pi.bufsz, pi.memsz, buf_align=pi.buf_align, buf_min=MIN_PURGATORY_ADDR,
                    name="purgatory", top_down_off_by_one=obo)
    kexec_add_buffer(image, pbuf, windows)
    image.start = pi.setup_sechdrs(pbuf.mem)
    image.purgatory = pi
    image.purgatory_index = image.nr_segments - 1
    _dbg(kx, image, f"kexec-bzImage64: Loaded purgatory at {pbuf.mem:#x}")
    cmdline = (f"elfcorehdr={image.elf_load_addr:#x} " if image.type == KEXEC_TYPE_CRASH else "") + payload.cmdline
    image.cmdline = cmdline
    params = boot_params_buffer(cmdline)
    kbuf = KexecBuf(params, len(params), len(params), buf_align=16, buf_min=MIN_BOOTPARAM_ADDR,
                    name="boot_params", top_down_off_by_one=obo)
    seg = kexec_add_buffer(image, kbuf, windows)
    _dbg(kx, image, f"kexec-bzImage64: Loaded boot_param, command line and misc at {seg.mem:#x} "
                    f"bufsz={seg.bufsz:#x} memsz={seg.memsz:#x}")
    kbuf = KexecBuf(payload.kernel, len(payload.kernel), payload.kernel_memsz, buf_align=payload.kernel_alignment,
                    buf_min=MIN_KERNEL_LOAD_ADDR, name="kernel", top_down_off_by_one=obo)
    seg = kexec_add_buffer(image, kbuf, windows)
    _dbg(kx, image, f"kexec-bzImage64: Loaded 64bit kernel at {seg.mem:#x} bufsz={seg.bufsz:#x} memsz={seg.memsz:#x}")
    if payload.initrd and not image.flags & KEXEC_FILE_NO_INITRAMFS:
        kbuf = KexecBuf(payload.initrd, len(payload.initrd), len(payload.initrd), buf_align=PAGE_SIZE,
                        buf_min=MIN_INITRD_LOAD_ADDR, name="initrd", top_down_off_by_one=obo)
        seg = kexec_add_buffer(image, kbuf, windows)
        _dbg(kx, image, f"kexec-bzImage64: Loaded initrd at {seg.mem:#x} bufsz={seg.bufsz:#x} "
                        f"memsz={len(payload.initrd):#x}")
    _dbg(kx, image, f"kexec-bzImage64: Final command line is: {cmdline}")


def kexec_calculate_store_digests(image: Kimage, *, crash_hotplug: bool, digest_bug_6_6: bool = False) -> None:
    """``kexec_calculate_store_digests``: hash every segment but the purgatory (and, with
    ``CONFIG_CRASH_HOTPLUG``, the elfcorehdr) and patch the table and digest into purgatory.

    ``digest_bug_6_6`` compares the output slot ``j`` instead of the segment index ``i`` with
    ``elfcorehdr_index``, as 6.6 to mid-2024 kernels did: once ``j`` equals the index, every later
    segment is skipped.
    """
    pi = image.purgatory
    if pi is None:
        raise KexecError("image has no purgatory")
    chosen: list[tuple[bytes, int, int]] = []
    for i, seg in enumerate(image.segments):
        if crash_hotplug:
            k = len(chosen) if digest_bug_6_6 else i
            if k == image.elfcorehdr_index:
                continue
        if i == image.purgatory_index:
            continue
        chosen.append((seg.buf[: seg.bufsz], seg.mem, seg.memsz))
    regions, digest = sha256_segments(chosen)
    regions_sym, digest_sym = image.digest_symbols
    pi.set_symbol(regions_sym, pack_sha_regions(regions))
    pi.set_symbol(digest_sym, digest)


def kexec_file_load(kx: Kexec, payload: KexecPayload | None = None, flags: int = KEXEC_FILE_ON_CRASH, *,
                    purgatory: bytes | None = None, digest_bug_6_6: bool = False,
                    elfcorehdr_in_digest: bool = False, elfcorehdr_slots: int = 1) -> Kimage | None:
    """The ``kexec_file_load`` system call. Raises :class:`KexecBusyError` when the kexec lock is
    taken, :class:`KexecError` on bad flags or no room. Returns the loaded image (None on unload).

    ``elfcorehdr_in_digest`` digests the elfcorehdr even with ``CONFIG_CRASH_HOTPLUG``, as the RFC v1
    design did (its handler re-digests after every rewrite). ``elfcorehdr_slots=2`` reserves room
    for two headers (the ``ours`` design's double buffer)."""
    if flags & ~KEXEC_FILE_FLAGS:
        raise KexecError(f"unknown kexec_file_load flags {flags & ~KEXEC_FILE_FLAGS:#x}")
    crash = bool(flags & KEXEC_FILE_ON_CRASH)
    if not kx.kexec_trylock():
        raise KexecBusyError("kexec_file_load")
    try:
        if crash and kx.kexec_crash_image is not None:
            kx.arch_kexec_unprotect_crashkres()
        if flags & KEXEC_FILE_UNLOAD:
            if crash:
                kx.kexec_crash_image = None
            else:
                kx.kexec_image = None
            return None
        if not crash:
            raise KexecError("only crash images (KEXEC_FILE_ON_CRASH) are modelled")
        if payload is None:
            raise KexecError("kexec_file_load needs a kernel")
        image = Kimage(type=KEXEC_TYPE_CRASH, file_mode=True, digest_symbols=KERNEL_SYMBOLS, flags=flags,
                       elfcorehdr_slots=elfcorehdr_slots)
        if kx.machine.config.crash_hotplug:
            image.hotplug_support = True
        bzimage64_load(kx, image, payload, build_purgatory() if purgatory is None else purgatory)
        kexec_calculate_store_digests(image, crash_hotplug=kx.machine.config.crash_hotplug and not elfcorehdr_in_digest,
                                      digest_bug_6_6=digest_bug_6_6)
        pi = image.purgatory
        assert pi is not None
        image.segments[image.purgatory_index].buf = bytes(pi.purgatory_buf)
        for i, seg in enumerate(image.segments):
            _dbg(kx, image, f"kexec_file: segment[{i}]: bufsz={seg.bufsz:#x} mem={seg.mem:#x} memsz={seg.memsz:#x}")
            kimage_load_segment(kx.machine.mem, seg)
        kx.kexec_crash_image = image
        return image
    finally:
        if crash and kx.kexec_crash_image is not None:
            kx.arch_kexec_protect_crashkres()
        kx.kexec_unlock()


def kexec_file_unload(kx: Kexec) -> None:
    """``kexec -s -p -u``: ``kexec_file_load`` with ``KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH``."""
    kexec_file_load(kx, None, KEXEC_FILE_UNLOAD | KEXEC_FILE_ON_CRASH)


def kexec_purgatory_repatch(kx: Kexec, image: Kimage) -> bytes:
    """The RFC v1 design: after the elfcorehdr was rewritten in memory, digest every segment but the
    purgatory *as it is in memory now* (elfcorehdr included) and patch the table and digest into
    the loaded purgatory. The crashkernel region must be writable (the handler unprotects it).
    Returns the new digest."""
    pi = image.purgatory
    if pi is None:
        raise KexecError("image has no purgatory")
    mem = kx.machine.mem
    read = mem.read
    skip = image.purgatory_index
    chosen = [(read(s.mem, s.memsz), s.mem, s.memsz) for i, s in enumerate(image.segments) if i != skip]
    regions, digest = sha256_segments(chosen)
    regions_sym, digest_sym = image.digest_symbols
    table = pack_sha_regions(regions)
    pi.set_symbol(regions_sym, table)
    pi.set_symbol(digest_sym, digest)
    mem.write(pi.symbol_addr(regions_sym), table)
    mem.write(pi.symbol_addr(digest_sym), digest)
    image.segments[image.purgatory_index].buf = bytes(pi.purgatory_buf)
    return digest
