"""The purgatory: a small ELF64 relocatable object (``ET_REL``, ``EM_X86_64``) the loader places in
the crashkernel region, whose job at panic is to check the SHA-256 of the loaded segments before
jumping to the capture kernel (``arch/x86/purgatory/purgatory.c: verify_sha256_digest``).

:func:`build_purgatory` generates the object (``.text``, ``.data``, ``.bss``, ``.symtab``,
``.strtab``, ``.shstrtab``); its ``.data`` holds the digest table (16 x {u64 start, u64 len}) and
the 32-byte digest under the kernel's names (``purgatory_sha_regions``,
``purgatory_sha256_digest``) or kexec-tools' (``sha256_regions``, ``sha256_digest``).
:class:`PurgatoryInfo` loads it as ``kexec_load_purgatory`` does and gets or sets symbols as
``kexec_purgatory_get_set_symbol`` does. :func:`verify_sha256_digest` is the check purgatory runs.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.machine.physmem import MemoryReader

__all__ = [
    "KERNEL_SYMBOLS",
    "KEXEC_TOOLS_SYMBOLS",
    "SHA256_DIGEST_SIZE",
    "SHA_REGIONS_SIZE",
    "PurgatoryDigestMismatch",
    "PurgatoryError",
    "PurgatoryInfo",
    "PurgatoryObject",
    "Section",
    "Symbol",
    "build_purgatory",
    "pack_sha_regions",
    "sha256_segments",
    "unpack_sha_regions",
    "verify_sha256_digest",
]

SHA256_DIGEST_SIZE: Final = 32
#: ``KEXEC_SEGMENT_MAX`` entries of ``struct kexec_sha_region`` {unsigned long start, len}
SHA_REGIONS_MAX: Final = 16
SHA_REGION: Final = struct.Struct("<QQ")
SHA_REGIONS_SIZE: Final = SHA_REGIONS_MAX * SHA_REGION.size

#: (regions symbol, digest symbol) of the kernel's purgatory and of kexec-tools' purgatory
KERNEL_SYMBOLS: Final = ("purgatory_sha_regions", "purgatory_sha256_digest")
KEXEC_TOOLS_SYMBOLS: Final = ("sha256_regions", "sha256_digest")

ET_REL: Final = 1
EM_X86_64: Final = 62
SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS = 0, 1, 2, 3, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
STB_LOCAL, STB_GLOBAL = 0, 1
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION = 0, 1, 2, 3
SHN_UNDEF: Final = 0

_EHDR: Final = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR: Final = struct.Struct("<IIQQQQIIQQ")
_SYM: Final = struct.Struct("<IBBHQQ")


class PurgatoryError(CrashHotplugError):
    """A purgatory object that cannot be used, or a symbol access the kernel refuses (``-EINVAL``)."""


class PurgatoryDigestMismatch(CrashHotplugError):
    """At panic, the SHA-256 of the listed regions differs from the stored digest: purgatory spins."""

    def __init__(self, expected: bytes, actual: bytes, regions: Sequence[tuple[int, int]]) -> None:
        self.expected = expected
        self.actual = actual
        self.regions = tuple(regions)
        super().__init__(
            f"purgatory digest mismatch over {len(self.regions)} regions: stored {expected.hex()[:16]}..., "
            f"computed {actual.hex()[:16]}...")


@dataclass(frozen=True)
class Section:
    """``Elf64_Shdr`` with its name."""

    name: str
    sh_type: int
    sh_flags: int
    sh_addr: int
    sh_offset: int
    sh_size: int
    sh_link: int
    sh_info: int
    sh_addralign: int
    sh_entsize: int


@dataclass(frozen=True)
class Symbol:
    """``Elf64_Sym`` with its name."""

    name: str
    st_info: int
    st_other: int
    st_shndx: int
    st_value: int
    st_size: int

    @property
    def bind(self) -> int:
        return self.st_info >> 4


def _strtab(names: Iterable[str]) -> tuple[bytes, dict[str, int]]:
    out = bytearray(b"\0")
    index: dict[str, int] = {"": 0}
    for n in names:
        if n not in index:
            index[n] = len(out)
            out += n.encode() + b"\0"
    return bytes(out), index


def _align(n: int, a: int) -> int:
    return -(-n // a) * a if a > 1 else n


@functools.lru_cache(maxsize=16)
def build_purgatory(*, symbols: tuple[str, str] = KERNEL_SYMBOLS, text_size: int = 0x3000,
                    data_size: int = 0x1000, bss_size: int = 0x1000, entry: int = 0x160) -> bytes:
    """A purgatory object. Its loaded image is ``text_size + data_size`` bytes of buffer and
    ``bss_size`` more of memory (0x4000 and 0x5000 by default, the kernel's sizes on 6.12);
    ``e_entry`` is ``entry`` inside ``.text`` (``purgatory_start``)."""
    regions_sym, digest_sym = symbols
    if data_size < SHA_REGIONS_SIZE + SHA256_DIGEST_SIZE or not 0 <= entry < text_size - 3:
        raise PurgatoryError("sections too small for the digest table or the entry point")
    text = bytearray(b"\xcc" * text_size)
    text[entry : entry + 3] = b"\xf4\xeb\xfd"  # hlt; jmp back to the hlt: spin, as purgatory does on a mismatch
    data = bytes(data_size)
    # section indices: 1 .text, 2 .data, 3 .bss, 4 .symtab, 5 .strtab, 6 .shstrtab
    syms = [
        ("", 0, 0, 0, 0),
        ("", STB_LOCAL << 4 | STT_SECTION, 1, 0, 0),
        ("", STB_LOCAL << 4 | STT_SECTION, 2, 0, 0),
        ("", STB_LOCAL << 4 | STT_SECTION, 3, 0, 0),
        ("purgatory_start", STB_GLOBAL << 4 | STT_FUNC, 1, entry, 3),
        (regions_sym, STB_GLOBAL << 4 | STT_OBJECT, 2, 0, SHA_REGIONS_SIZE),
        (digest_sym, STB_GLOBAL << 4 | STT_OBJECT, 2, SHA_REGIONS_SIZE, SHA256_DIGEST_SIZE),
        ("purgatory_stack", STB_GLOBAL << 4 | STT_OBJECT, 3, 0, bss_size),
    ]
    strtab, sidx = _strtab(s[0] for s in syms)
    symtab = b"".join(_SYM.pack(sidx[n], info, 0, shndx, value, size) for n, info, shndx, value, size in syms)
    sec_names = ["", ".text", ".data", ".bss", ".symtab", ".strtab", ".shstrtab"]
    shstrtab, nidx = _strtab(sec_names)
    body = bytearray(_EHDR.size)
    offsets: dict[str, int] = {}
    for name, blob, align in ((".text", bytes(text), 16), (".data", data, 16), (".symtab", symtab, 8),
                              (".strtab", strtab, 1), (".shstrtab", shstrtab, 1)):
        body += bytes(_align(len(body), align) - len(body))
        offsets[name] = len(body)
        body += blob
    body += bytes(_align(len(body), 8) - len(body))
    shoff = len(body)
    shdrs = [
        (0, SHT_NULL, 0, 0, 0, 0, 0, 0, 0, 0),
        (nidx[".text"], SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, 0, offsets[".text"], text_size, 0, 0, 16, 0),
        (nidx[".data"], SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, 0, offsets[".data"], data_size, 0, 0, 16, 0),
        (nidx[".bss"], SHT_NOBITS, SHF_ALLOC | SHF_WRITE, 0, offsets[".symtab"], bss_size, 0, 0, 16, 0),
        (nidx[".symtab"], SHT_SYMTAB, 0, 0, offsets[".symtab"], len(symtab), 5, 4, 8, _SYM.size),
        (nidx[".strtab"], SHT_STRTAB, 0, 0, offsets[".strtab"], len(strtab), 0, 0, 1, 0),
        (nidx[".shstrtab"], SHT_STRTAB, 0, 0, offsets[".shstrtab"], len(shstrtab), 0, 0, 1, 0),
    ]
    for sh in shdrs:
        body += _SHDR.pack(*sh)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    body[: _EHDR.size] = _EHDR.pack(ident, ET_REL, EM_X86_64, 1, entry, 0, shoff, 0, _EHDR.size, 0, 0,
                                    _SHDR.size, len(shdrs), 6)
    return bytes(body)


@dataclass(frozen=True)
class PurgatoryObject:
    """A parsed purgatory object (``kexec_purgatory``): header, sections, symbols."""

    data: bytes
    e_entry: int
    sections: tuple[Section, ...]
    symbols: tuple[Symbol, ...]

    @classmethod
    def parse(cls, data: bytes) -> PurgatoryObject:
        """Check that ``data`` is an x86_64 ELF64 relocatable object and read its tables (an object
        parsed before is handed out again: it is immutable, and a reload parses the same bytes)."""
        data = bytes(data)
        hit = _PARSED.get(data)
        if hit is None:
            hit = cls._parse(data)
            if len(_PARSED) >= 8:
                del _PARSED[next(iter(_PARSED))]
            _PARSED[data] = hit
        return hit

    @classmethod
    def _parse(cls, data: bytes) -> PurgatoryObject:
        if len(data) < _EHDR.size or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise PurgatoryError("purgatory: not a little-endian ELF64 object")
        (_, e_type, e_machine, _, e_entry, _, e_shoff, _, _, _, _, e_shentsize, e_shnum,
         e_shstrndx) = _EHDR.unpack_from(data)
        if e_type != ET_REL or e_machine != EM_X86_64:
            raise PurgatoryError(f"purgatory: e_type {e_type}, e_machine {e_machine}; need ET_REL, EM_X86_64")
        if e_shentsize != _SHDR.size or e_shoff + e_shnum * _SHDR.size > len(data) or e_shstrndx >= e_shnum:
            raise PurgatoryError("purgatory: section header table out of bounds")
        raw = [_SHDR.unpack_from(data, e_shoff + i * _SHDR.size) for i in range(e_shnum)]
        shstr = raw[e_shstrndx]

        def cstr(table_off: int, off: int) -> str:
            end = data.index(b"\0", table_off + off)
            return data[table_off + off : end].decode()

        sections = tuple(Section(cstr(shstr[4], r[0]), *r[1:]) for r in raw)
        symbols: list[Symbol] = []
        for s in sections:
            if s.sh_type != SHT_SYMTAB or s.sh_link >= len(sections):
                continue
            stroff = sections[s.sh_link].sh_offset
            for k in range(s.sh_size // _SYM.size):
                name_off, info, other, shndx, value, size = _SYM.unpack_from(data, s.sh_offset + k * _SYM.size)
                symbols.append(Symbol(cstr(stroff, name_off), info, other, shndx, value, size))
        return cls(data, e_entry, sections, tuple(symbols))

    def find_symbol(self, name: str) -> Symbol:
        """``kexec_purgatory_find_symbol``: a global symbol of that name in a real section (the
        first global of that name in table order, as the kernel's walk meets it)."""
        sym = self._globals.get(name)
        if sym is None:
            raise PurgatoryError(f"purgatory has no global symbol {name}")
        if sym.st_shndx == SHN_UNDEF or sym.st_shndx >= len(self.sections):
            raise PurgatoryError(f"symbol {name} has bad section index {sym.st_shndx}")
        return sym

    @functools.cached_property
    def _globals(self) -> dict[str, Symbol]:
        """The first global symbol of each name (the object is immutable: made once per object)."""
        out: dict[str, Symbol] = {}
        for sym in self.symbols:
            if sym.bind == STB_GLOBAL:
                out.setdefault(sym.name, sym)
        return out


#: objects parsed by :meth:`PurgatoryObject.parse`, by their bytes
_PARSED: dict[bytes, PurgatoryObject] = {}


@dataclass
class PurgatoryInfo:
    """``struct purgatory_info`` after ``kexec_load_purgatory``: the object, the buffer that becomes
    its segment, and each allocated section's load address and offset in that buffer."""

    obj: PurgatoryObject
    mem: int = 0
    purgatory_buf: bytearray = field(default_factory=bytearray)
    bufsz: int = 0
    memsz: int = 0
    buf_align: int = 1
    #: section index -> (sh_addr after loading, offset in purgatory_buf; -1 for NOBITS)
    placed: dict[int, tuple[int, int]] = field(default_factory=dict)
    start: int = 0

    @classmethod
    def setup_kbuf(cls, obj: PurgatoryObject) -> PurgatoryInfo:
        """``kexec_purgatory_setup_kbuf``: buffer size (allocated PROGBITS sections, aligned),
        memory size (plus NOBITS) and the largest alignment."""
        buf_align = bss_align = 1
        bufsz = bss_sz = 0
        for s in obj.sections:
            if not s.sh_flags & SHF_ALLOC:
                continue
            a = max(1, s.sh_addralign)
            if s.sh_type != SHT_NOBITS:
                buf_align = max(buf_align, a)
                bufsz = _align(bufsz, a) + s.sh_size
            else:
                bss_align = max(bss_align, a)
                bss_sz = _align(bss_sz, a) + s.sh_size
        bufsz = _align(bufsz, bss_align)
        return cls(obj, purgatory_buf=bytearray(bufsz), bufsz=bufsz, memsz=bufsz + bss_sz,
                   buf_align=max(buf_align, bss_align))

    def setup_sechdrs(self, mem: int) -> int:
        """``kexec_purgatory_setup_sechdrs``: copy sections into the buffer for load address ``mem``;
        returns ``image->start`` (the entry point's load address)."""
        self.mem = mem
        offset = 0
        bss_addr = mem + self.bufsz
        start = self.obj.e_entry
        for i, s in enumerate(self.obj.sections):
            if not s.sh_flags & SHF_ALLOC:
                continue
            a = max(1, s.sh_addralign)
            if s.sh_type == SHT_NOBITS:
                bss_addr = _align(bss_addr, a)
                self.placed[i] = (bss_addr, -1)
                bss_addr += s.sh_size
                continue
            offset = _align(offset, a)
            if s.sh_flags & SHF_EXECINSTR and s.sh_addr <= self.obj.e_entry < s.sh_addr + s.sh_size \
                    and start == self.obj.e_entry:
                start = start - s.sh_addr + mem + offset
            self.purgatory_buf[offset : offset + s.sh_size] = self.obj.data[s.sh_offset : s.sh_offset + s.sh_size]
            self.placed[i] = (mem + offset, offset)
            offset += s.sh_size
        self.start = start
        return start

    def _locate(self, name: str, size: int, verb: str) -> int:
        sym = self.obj.find_symbol(name)
        if sym.st_size != size:
            raise PurgatoryError(f"symbol {name} size mismatch: expected {sym.st_size} actual {size}")
        sec = self.obj.sections[sym.st_shndx]
        if sec.sh_type == SHT_NOBITS:
            raise PurgatoryError(f"symbol {name} is in a bss section. Cannot {verb}")
        return self.placed[sym.st_shndx][1] + sym.st_value

    def get_symbol(self, name: str, size: int) -> bytes:
        """``kexec_purgatory_get_set_symbol(..., get_value=true)``"""
        off = self._locate(name, size, "get")
        return bytes(self.purgatory_buf[off : off + size])

    def set_symbol(self, name: str, value: bytes) -> None:
        """``kexec_purgatory_get_set_symbol(..., get_value=false)``: the symbol's size must equal
        ``len(value)`` and it may not live in ``.bss``."""
        off = self._locate(name, len(value), "set")
        self.purgatory_buf[off : off + len(value)] = value

    def symbol_addr(self, name: str) -> int:
        """``kexec_purgatory_get_symbol_addr``: where the symbol lies once loaded."""
        sym = self.obj.find_symbol(name)
        return self.placed[sym.st_shndx][0] + sym.st_value


def pack_sha_regions(regions: Sequence[tuple[int, int]]) -> bytes:
    """The 256-byte table: (start, len) pairs, unused entries zero."""
    if len(regions) > SHA_REGIONS_MAX:
        raise PurgatoryError(f"{len(regions)} digest regions; the table holds {SHA_REGIONS_MAX}")
    return _pack_sha_regions(tuple([(s, n) for s, n in regions]))


@functools.lru_cache(maxsize=16)
def _pack_sha_regions(regions: tuple[tuple[int, int], ...]) -> bytes:
    # a function of the regions alone: every re-digest of one image packs the same table
    table = b"".join(SHA_REGION.pack(s, n) for s, n in regions)
    return table.ljust(SHA_REGIONS_SIZE, b"\0")


def unpack_sha_regions(table: bytes) -> list[tuple[int, int]]:
    """All 16 (start, len) entries of a table (unused ones are (0, 0))."""
    return [SHA_REGION.unpack_from(table, i * SHA_REGION.size) for i in range(SHA_REGIONS_MAX)]


def sha256_segments(segments: Iterable[tuple[bytes, int, int]]) -> tuple[list[tuple[int, int]], bytes]:
    """Digest of segments given as (buf, mem, memsz): ``buf`` then ``memsz - len(buf)`` zero bytes
    each; returns the region table entries ``(mem, memsz)`` and the digest
    (``kexec_calculate_store_digests`` / kexec-tools ``update_purgatory``)."""
    # bytes only: a mutable buffer could change under the memo
    segs = [(b if type(b) is bytes else bytes(b), mem, memsz) for b, mem, memsz in segments]
    # SHA-256 is sequential: the state after a run of leading segments equal to the last call's
    # (same place, size and bytes) is reused; the rest is hashed. The digest is the same.
    last = _LAST
    n = min(len(segs), len(last))
    k = 0
    while k < n:
        held_buf, held_mem, held_memsz, _ = last[k]
        buf, mem, memsz = segs[k]
        if held_mem != mem or held_memsz != memsz or (held_buf is not buf and held_buf != buf):
            break
        k += 1
    regions = [(mem, memsz) for _, mem, memsz in segs]
    if k == len(segs) and k == len(last) and k:
        # the same segments as last time: the state after the last one is the digest's
        return regions, last[k - 1][3].digest()
    h = last[k - 1][3].copy() if k else hashlib.sha256()
    prefix = last[:k]
    zero = _ZEROS
    for buf, mem, memsz in segs[k:]:
        h.update(buf)
        rest = memsz - len(buf)
        while rest > 0:
            m = min(rest, len(zero))
            h.update(zero[:m])
            rest -= m
        prefix.append((buf, mem, memsz, h.copy()))
    _LAST[:] = prefix
    return regions, h.digest()


#: the zero padding after a segment's buffer, hashed a MiB at a time
_ZEROS = memoryview(bytes(1 << 20))
#: the last call's segments and the hash state after each (see :func:`sha256_segments`)
_LAST: list[tuple[bytes, int, int, Any]] = []


def verify_sha256_digest(mem: MemoryReader, regions_addr: int, digest_addr: int, *,
                         raise_on_mismatch: bool = False) -> bool:
    """What purgatory does at panic (``verify_sha256_digest``): read the region table and the digest
    from memory, hash ``len`` bytes at ``start`` for every entry, compare."""
    table = mem.read(regions_addr, SHA_REGIONS_SIZE)
    expected = mem.read(digest_addr, SHA256_DIGEST_SIZE)
    h = hashlib.sha256()
    regions = unpack_sha_regions(table)
    for start, length in regions:
        if length:
            h.update(mem.read(start, length))
    actual = h.digest()
    if actual == expected:
        return True
    if raise_on_mismatch:
        raise PurgatoryDigestMismatch(expected, actual, [r for r in regions if r[1]])
    return False
