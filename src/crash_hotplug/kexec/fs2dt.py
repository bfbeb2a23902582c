"""kexec-tools' fs2dt on ppc64: a whole ``/proc/device-tree`` flattened into the crash kernel's FDT.

Mirrors ``kexec/fs2dt.c`` (``create_flatten_tree``, ``putnode``, ``putprops``, ``comparefunc``,
``add_usable_mem_property``, ``add_dyn_reconf_usable_mem_property__``, ``add_boot_block``) as
built for ppc64 (``kexec-ppc64.h``: boot block version 17, ``HAVE_DYNAMIC_MEMORY``,
``NEED_RESERVE_DTB``), and the parts of ``kexec-ppc64.c`` / ``crashdump-ppc64.c`` that feed it
(``add_usable_mem_rgns``, the ``reserve()`` calls made before the tree is flattened).

What it does, in order: every directory is a node, entries sorted with ``comparefunc`` (``strcmp``,
except that two ``base@unit`` names with the same base and different lengths sort shorter first);
a node's regular files are its properties, minus ``name``, ``linux,crashkernel-{base,size}`` (until
a ``crashkernel=`` is on the new command line), ``linux,pci-domain``, ``linux,htab-{base,size}``,
``linux,kernel-end``, ``linux,initrd-{start,end}`` and ``bootargs``; a ``reg`` of a ``memory@``
node is followed by ``linux,usable-memory`` and ``ibm,dynamic-memory[-v2]`` by
``linux,drconf-usable-memory`` (one count, then (base, size) pairs, per LMB), clipped to the usable
ranges; ``/chosen`` then gets ``linux,initrd-{start,end}`` (8 bytes each) and ``bootargs`` (the
new command line, a space, a NUL); RTAS (``linux,rtas-base`` + ``rtas-size``), OPAL and TCE
properties add memory reservations as they are met. The reservation map has room for three more
u64s than it holds, and a last ``(0, totalsize)`` entry that ``elf_ppc64_load`` later points at
the FDT's own segment (``patch_dt_reserve``). Property names are interned in order of first use.

``add_ranges`` is kept as kexec-tools has it: its ``add`` flag is not reset per usable range, so
once one range overlaps an LMB every later usable range is written for that LMB too, unclipped
(it never shows with the single usable range a pseries guest has).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from crash_hotplug.errors import CrashHotplugError

__all__ = [
    "Fs2dtError",
    "Fs2dtInput",
    "add_usable_mem_rgns",
    "comparefunc_key",
    "create_flatten_tree",
    "patch_dt_reserve",
]

FDT_MAGIC: Final = 0xD00DFEED
FDT_BEGIN_NODE: Final = 1
FDT_END_NODE: Final = 2
FDT_PROP: Final = 3
FDT_END: Final = 9
BOOT_BLOCK_VERSION: Final = 17
BOOT_BLOCK_LAST_COMP_VERSION: Final = 17
BOOTBLOCK_SIZE: Final = 40  # struct bootblock: ten u32 (fs2dt.h), 8-byte aligned
LMB_ENTRY_SIZE: Final = 24
#: properties ``putprops`` leaves out (``kexec/fs2dt.c``); the crashkernel ones only until crash_param
_SKIPPED: Final = frozenset({"name", "linux,pci-domain", "linux,htab-base", "linux,htab-size", "linux,kernel-end",
                             "bootargs"})
_INITRD: Final = frozenset({"linux,initrd-start", "linux,initrd-end"})
_CRASHKERNEL: Final = frozenset({"linux,crashkernel-base", "linux,crashkernel-size"})


class Fs2dtError(CrashHotplugError):
    """The device tree cannot be flattened (kexec-tools' ``die()``); the message names the file."""


def _cmp(a: str, b: str) -> int:
    """``comparefunc``: ``strcmp``, but ``x@1000000`` before ``x@f000000`` (same base, shorter first)."""
    if "@" in a and "@" in b:
        base_a, base_b = a.index("@"), b.index("@")
        if base_a == base_b and len(a) != len(b) and a[:base_a] == b[:base_b]:
            return (len(a) > len(b)) - (len(a) < len(b))
    ea, eb = a.encode(), b.encode()
    return (ea > eb) - (ea < eb)


comparefunc_key = functools.cmp_to_key(_cmp)


def add_usable_mem_rgns(rgns: list[tuple[int, int]], base: int, size: int, page: int = 4096) -> None:
    """``add_usable_mem_rgns`` (``crashdump-ppc64.c``): page-align ``[base, base+size)`` outwards and
    widen the first range it overlaps, or append it; ``rgns`` holds ``[start, end)`` pairs."""
    end = -(-(base + size) // page) * page
    base = base // page * page
    for i, (us, ue) in enumerate(rgns):
        if base < ue and end > us:
            if base >= us and end <= ue:
                return
            if base < us and end > ue:
                rgns[i] = (base, end)
            elif base < us:
                rgns[i] = (base, ue)
            elif end > ue:
                rgns[i] = (us, end)
            return
    rgns.append((base, end))


@dataclass
class Fs2dtInput:
    """What ``create_flatten_tree`` reads besides the tree: kexec-tools' globals at that point."""

    #: the new kernel's command line (``--append`` with ``elfcorehdr=<n>K`` added)
    cmdline: str
    #: ``initrd_base``, ``initrd_size`` (0, 0: no initrd properties)
    initrd: tuple[int, int] = (0, 0)
    #: ``usablemem_rgns`` as ``[start, end)`` (kdump: the RAM the capture kernel may use)
    usable: Sequence[tuple[int, int]] = ()
    #: the ``reserve()`` calls made before flattening, in order (``(address, length)``)
    reserves: Sequence[tuple[int, int]] = ()
    #: ``--dt-no-old-root``
    dt_no_old_root: bool = False
    #: ``reuse_initrd`` (``--reuseinitrd``): keep the old initrd properties and reserve them
    reuse_initrd: bool = False


@dataclass
class _State:
    inp: Fs2dtInput
    dt_root: Path
    struct_words: bytearray = field(default_factory=bytearray)
    strings: bytearray = field(default_factory=bytearray)
    names: dict[str, int] = field(default_factory=dict)
    rsv: list[tuple[int, int]] = field(default_factory=list)
    crash_param: bool = False
    cp_base: int = 0
    cp_size: int = 0
    cp_end: int = 0
    lmb_size: int = 0
    lmb_sets: int = 0
    dyn_v2: bool = False

    def u32(self, v: int) -> None:
        self.struct_words += struct.pack(">I", v & 0xFFFFFFFF)

    def blob(self, data: bytes) -> None:
        self.struct_words += data + bytes(-len(data) % 4)

    def propnum(self, name: str) -> int:
        """``propnum``: the name's offset in the strings block, interned on first use."""
        if name not in self.names:
            self.names[name] = len(self.strings)
            self.strings += name.encode() + b"\0"
        return self.names[name]

    def prop(self, name: str, value: bytes) -> None:
        self.u32(FDT_PROP)
        self.u32(len(value))
        self.u32(self.propnum(name))
        self.blob(value)

    def reserve(self, where: int, length: int) -> None:
        """``reserve``: append an entry (a zero length ends the list, as in kexec-tools)."""
        if length:
            self.rsv.append((where, length))

    def checkprop(self, name: str | None, data: bytes, path: Path) -> None:
        """``checkprop``: RTAS / OPAL / TCE base and size properties become a memory reservation."""
        if name is None:
            if self.cp_base or self.cp_size or self.cp_end:
                raise Fs2dtError(f"{path}: unrecoverable error: no property data (a base without its size)")
            return
        be32 = int.from_bytes(data[:4], "big") if len(data) >= 4 else 0
        be64 = int.from_bytes(data[:8], "big") if len(data) >= 8 else 0
        if name == "linux,rtas-base":
            self.cp_base = be32
        elif name in ("opal-base-address", "linux,tce-base"):
            self.cp_base = be64
        elif name == "opal-runtime-size":
            self.cp_size = be64
        elif name in ("rtas-size", "linux,tce-size"):
            self.cp_size = be32
        elif self.inp.reuse_initrd and name == "linux,initrd-start":
            self.cp_base = be64 if len(data) == 8 else be32
        elif self.inp.reuse_initrd and name == "linux,initrd-end":
            self.cp_end = be64 if len(data) == 8 else be32
        if self.cp_size and self.cp_end:
            raise Fs2dtError(f"{path}: unrecoverable error: size and end set at same time")
        if self.cp_base and self.cp_size:
            self.reserve(self.cp_base, self.cp_size)
            self.cp_base = self.cp_size = 0
        if self.cp_base and self.cp_end:
            self.reserve(self.cp_base, self.cp_end - self.cp_base)
            self.cp_base = self.cp_end = 0


def _add_ranges(usable: Sequence[tuple[int, int]], base: int, end: int) -> list[int]:
    """``add_ranges``: the (base, size) values of the usable ranges within ``[base, end)`` (see the
    module docstring about its sticky ``add``)."""
    out: list[int] = []
    add = False
    for loc_base, loc_end in usable:
        if loc_base >= base and loc_end <= end:
            add = True
        elif base < loc_end and end > loc_base:
            loc_base, loc_end = max(loc_base, base), min(loc_end, end)
            add = True
        if add:
            out += [loc_base, (loc_end - loc_base) & 0xFFFFFFFFFFFFFFFF]
    return out


def _usable_memory(st: _State, reg: bytes, path: Path) -> None:
    """``add_usable_mem_property``: after a ``memory@`` node's ``reg``."""
    if len(reg) < 16:
        raise Fs2dtError(f"{path}: unrecoverable error: not enough data for mem property")
    base, size = struct.unpack(">QQ", reg[:16])
    ranges = _add_ranges(st.inp.usable, base, base + size) or [0, 0]
    st.prop("linux,usable-memory", struct.pack(f">{len(ranges)}Q", *ranges))


def _drconf_usable_memory(st: _State, data: bytes, path: Path) -> None:
    """``add_dyn_reconf_usable_mem_property__``: a count and the usable (base, size) pairs per LMB."""
    out: list[int] = []
    off = 4
    for _ in range(st.lmb_sets):
        entry = data[off : off + LMB_ENTRY_SIZE]
        off += LMB_ENTRY_SIZE
        if len(entry) < LMB_ENTRY_SIZE:
            raise Fs2dtError(f"{path}: {st.lmb_sets} LMB entries announced, the property is {len(data)} bytes")
        lmbs = int.from_bytes(entry[:4], "big") if st.dyn_v2 else 1
        base = int.from_bytes(entry[4:12] if st.dyn_v2 else entry[:8], "big")
        for _j in range(lmbs):
            end = base + st.lmb_size
            ranges = _add_ranges(st.inp.usable, base, end)
            out += [len(ranges) // 2, *ranges]
            base = end
    st.prop("linux,drconf-usable-memory", struct.pack(f">{len(out)}Q", *out))


def _old_root(dt_root: Path, chosen: Path) -> str:
    """``dt_copy_old_root_param``: the ``root=`` word of the old ``/chosen/bootargs``, if any."""
    try:
        text = (chosen / "bootargs").read_bytes().split(b"\0", 1)[0].decode("latin-1")
    except OSError:
        return ""
    at = text.find("root=")
    return text[at:].split(" ", 1)[0] if at >= 0 else ""


def _putnode(st: _State, node: Path, name: str) -> None:
    try:
        entries = sorted((p.name for p in node.iterdir()), key=comparefunc_key)
    except OSError as exc:
        raise Fs2dtError(f"{node}: unrecoverable error: could not scan ({exc.strerror})") from exc
    if not entries:
        raise Fs2dtError(f"{node}: unrecoverable error: no directory entries")
    st.u32(FDT_BEGIN_NODE)
    st.blob(name.encode() + b"\0")
    for entry in entries:
        path = node / entry
        if entry in _SKIPPED or (entry in _CRASHKERNEL and not st.crash_param):
            continue
        if entry in _INITRD and not st.inp.reuse_initrd:
            continue
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        st.prop(entry, data)
        st.checkprop(entry, data, path)
        if entry == "reg" and st.inp.usable and (node.name.startswith("memory@") or node.name == "memory"):
            _usable_memory(st, data, path)
        if (entry in ("ibm,dynamic-memory-v2", "ibm,dynamic-memory") and st.inp.usable
                and node.name == "ibm,dynamic-reconfiguration-memory"):
            _drconf_usable_memory(st, data, path)
    st.checkprop(None, b"", node)
    if name == "chosen":
        ibase, isize = st.inp.initrd
        if ibase and isize:
            st.prop("linux,initrd-start", struct.pack(">Q", ibase))
            st.prop("linux,initrd-end", struct.pack(">Q", ibase + isize))
            st.reserve(ibase, isize)
        cmdline = st.inp.cmdline
        if "crashkernel=" in cmdline:
            st.crash_param = True
        if "root=" not in cmdline and not st.inp.dt_no_old_root:
            old = _old_root(st.dt_root, node)
            if old:
                cmdline = f"{cmdline} {old}" if cmdline else old
        st.prop("bootargs", (cmdline + " ").encode() + b"\0")
    for entry in entries:
        path = node / entry
        if path.is_dir() and not path.is_symlink():
            _putnode(st, path, entry)
    st.u32(FDT_END_NODE)


def _dynamic_memory_globals(st: _State) -> None:
    """``lmb_size``, ``num_of_lmb_sets`` and ``is_dyn_mem_v2``, read from the tree as kexec-tools does
    before flattening (``get_dyn_reconf_crash_memory_ranges`` / ``kexec-ppc64.c``)."""
    drconf = st.dt_root / "ibm,dynamic-reconfiguration-memory"
    lmb = drconf / "ibm,lmb-size"
    if lmb.is_file():
        st.lmb_size = int.from_bytes(lmb.read_bytes()[:8], "big")
    for name, v2 in (("ibm,dynamic-memory-v2", True), ("ibm,dynamic-memory", False)):
        f = drconf / name
        if f.is_file():
            st.lmb_sets = int.from_bytes(f.read_bytes()[:4], "big")
            st.dyn_v2 = v2
            return


def create_flatten_tree(dt_root: Path, inp: Fs2dtInput) -> bytes:
    """``create_flatten_tree``: the FDT kexec-tools makes of ``dt_root`` (a copy of
    ``/proc/device-tree``), before ``fixup_dt`` and before its own reservation entry is patched."""
    if not dt_root.is_dir():
        raise Fs2dtError(f"{dt_root}: no device tree here (a directory, a copy of /proc/device-tree)")
    st = _State(inp, dt_root)
    for where, length in inp.reserves:
        st.reserve(where, length)
    _dynamic_memory_globals(st)
    _putnode(st, dt_root, "")
    st.u32(FDT_END)
    # add_boot_block: header, reservation map (+3 spare u64), structure block, strings block
    n = len(st.rsv)
    off_rsvmap = BOOTBLOCK_SIZE
    off_struct = off_rsvmap + (2 * n + 2 + 3) * 8
    off_strings = off_struct + len(st.struct_words)
    totalsize = off_strings + -(-len(st.strings) // 4) * 4
    st.reserve(0, totalsize)  # NEED_RESERVE_DTB: patched with the FDT's address after add_buffer
    header = struct.pack(">10I", FDT_MAGIC, totalsize, off_struct, off_strings, off_rsvmap, BOOT_BLOCK_VERSION,
                         BOOT_BLOCK_LAST_COMP_VERSION, 0, len(st.strings), len(st.struct_words))
    rsvmap = b"".join(struct.pack(">QQ", a, s) for a, s in st.rsv)
    rsvmap += bytes(off_struct - off_rsvmap - len(rsvmap))
    strings = bytes(st.strings) + bytes(-len(st.strings) % 4)
    return header + rsvmap + bytes(st.struct_words) + strings


def patch_dt_reserve(fdt: bytes, dt_addr: int) -> bytes:
    """``elf_ppc64_load`` after ``add_buffer``: the last reservation entry becomes the FDT's own
    segment (its address and the final ``totalsize``)."""
    raw = bytearray(fdt)
    totalsize, off = struct.unpack_from(">I", raw, 4)[0], struct.unpack_from(">I", raw, 16)[0]
    while struct.unpack_from(">QQ", raw, off) != (0, 0):
        off += 16
    if off == struct.unpack_from(">I", raw, 16)[0]:
        raise Fs2dtError("the FDT has no reservation entry to patch")
    struct.pack_into(">QQ", raw, off - 16, dt_addr, totalsize)
    return bytes(raw)
