"""Kernel data a dump tool reads out of memory: ``init_uts_ns``, the kernel page tables,
``node_online_map`` and the sparse ``mem_section`` array.

makedumpfile reaches all of it through VMCOREINFO: the release from ``init_uts_ns.name``
(``check_release``), every kernel virtual address by walking the page tables from
``init_top_pgt`` (``vtop4_x86_64``), the online nodes from ``node_online_map``
(``get_nodes_online``) and every section's ``mem_map`` from ``mem_section``
(``get_mm_sparsemem``, which also trims ``max_mapnr`` to the last present section). The model keeps
those bytes where its profile's VMCOREINFO says and keeps them current across memory hotplug as
the kernel does: ``init_memory_mapping`` / ``kernel_physical_mapping_remove`` for the direct map,
``sparse_add_section`` / ``online_mem_sections`` / ``offline_mem_sections`` /
``sparse_remove_section`` for ``mem_section`` (``mm/sparse.c``, ``arch/x86/mm/init_64.c``).

Where the model differs: the direct map uses 1 GiB pages wherever a whole aligned gigabyte is
mapped, 2 MiB pages for whole aligned 2 MiB pieces and 4 KiB pages for the rest (``split_mem_range``
with gbpages; the kernel's extra splitting around the first megabyte is not modelled); page-table
pages come from the brk area after ``__bss_stop`` and then from a pool below ``mem_section``;
``struct mem_section`` holds only ``section_mem_map`` (its ``usage`` pointer stays 0: no reader
uses it, and the model has no ``mem_section_usage``).

The layout values VMCOREINFO gives (``SECTION_SIZE_BITS``, the sizes and offsets, ``vmemmap``,
the top-level table) are constants of the kernel build, so they are read from ``items`` once. The
kernel finds the next page-table level and a section root by reading the entry it wrote; the
model keeps what it wrote (``_tables``, ``_roots``) and answers from that: nothing but this class
writes those pages, so the answer is what memory holds.

Every present section has its ``struct page`` array behind ``vmemmap`` (``vmemmap_populate`` with
2 MiB pages), because makedumpfile reads every ``struct page`` even at ``-d 0``: with
``NUMBER(PG_hwpoison)`` and ``NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)`` in VMCOREINFO it drops
hardware-poisoned and logically offline pages (``__exclude_unnecessary_pages``). The model's pages
are all alike: an allocated page of no type (``flags`` 0, ``_refcount`` 1, ``_mapcount`` -1); so
nothing is poisoned or offline, and the levels that need page-cache, user or free-page flags
(``-d 2`` and up) keep every page (the model does not know which pages a real kernel would have
used for what). The boot memmap is one buffer allocated top-down from free boot RAM
(``sparse_buffer_init``); a hot-added section's memmap comes from free boot RAM too (the DIMM's
own blocks are onlined movable, which ``vmemmap_populate`` does not allocate from).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Final

from crash_hotplug.errors import CrashHotplugError
from crash_hotplug.machine.kernel import START_KERNEL_MAP
from crash_hotplug.machine.physmem import PAGE_SIZE, PhysMem

__all__ = [
    "NEW_UTS_LEN",
    "SECTION_HAS_MEM_MAP",
    "SECTION_IS_EARLY",
    "SECTION_IS_ONLINE",
    "SECTION_MARKED_PRESENT",
    "KernelData",
    "KernelDataError",
    "new_utsname",
    "vmcoreinfo_template",
]

#: ``__NEW_UTS_LEN`` (``include/uapi/linux/utsname.h``): six fields of 65 bytes
NEW_UTS_LEN: Final = 64
#: ``section_mem_map`` flag bits (``include/linux/mmzone.h``)
SECTION_MARKED_PRESENT: Final = 1 << 0
SECTION_HAS_MEM_MAP: Final = 1 << 1
SECTION_IS_ONLINE: Final = 1 << 2
SECTION_IS_EARLY: Final = 1 << 3
#: ``VMEMMAP_START`` with 4-level paging and no KASLR (``vmemmap_base``)
VMEMMAP_START_L4: Final = 0xFFFFEA0000000000
#: page-table entry bits (``arch/x86/include/asm/pgtable_types.h``)
_PAGE_PRESENT: Final = 0x1
_PAGE_RW: Final = 0x2
_PAGE_ACCESSED: Final = 0x20
_PAGE_DIRTY: Final = 0x40
_PAGE_PSE: Final = 0x80
_PAGE_GLOBAL: Final = 0x100
_PAGE_NX: Final = 1 << 63
#: ``_KERNPG_TABLE``: a table entry pointing at the next level
_KERNPG_TABLE: Final = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY
#: ``__PAGE_KERNEL`` and ``__PAGE_KERNEL_LARGE`` (the direct map is not executable)
_PAGE_KERNEL: Final = _KERNPG_TABLE | _PAGE_GLOBAL | _PAGE_NX
_PAGE_KERNEL_LARGE: Final = _PAGE_KERNEL | _PAGE_PSE
#: ``__PAGE_KERNEL_LARGE_EXEC``: the kernel-text mapping
_PAGE_KERNEL_LARGE_EXEC: Final = _KERNPG_TABLE | _PAGE_GLOBAL | _PAGE_PSE
_ADDR_MASK: Final = ((1 << 52) - 1) & ~(PAGE_SIZE - 1)
_PMD_SIZE: Final = 1 << 21
_PUD_SIZE: Final = 1 << 30
_ISA_END_ADDRESS: Final = 0x100000
#: page-table and section-root pages the pool below ``mem_section`` can hand out
POOL_PAGES: Final = 512
#: ``struct page`` bytes behind one 128 MiB section (32768 pages x 64 bytes)
_PMD_MEMMAP: Final = _PMD_SIZE
_U64: Final = struct.Struct("<Q")


class KernelDataError(CrashHotplugError):
    """The model ran out of room for a kernel structure (more page-table pages than the pool holds)."""


def vmcoreinfo_template(profile: str) -> list[tuple[str, str]]:
    """The ``KEY=value`` lines of a kernel profile's VMCOREINFO (``data/vmcoreinfo/<profile>.txt``),
    in the kernel's order; ``{name}`` values are filled in by the machine."""
    text = resources.files("crash_hotplug").joinpath(f"data/vmcoreinfo/{profile}.txt").read_text()
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        out.append((key, value))
    return out


def new_utsname(release: str, version: str, *, nodename: str = "(none)", machine: str = "x86_64") -> bytes:
    """``struct new_utsname`` (``include/uapi/linux/utsname.h``): sysname, nodename, release,
    version, machine, domainname; each NUL-padded to 65 bytes (``init_uts_ns`` at boot:
    ``UTS_SYSNAME``, ``UTS_NODENAME``, ``UTS_RELEASE``, ``UTS_VERSION``, ``UTS_MACHINE``,
    ``UTS_DOMAINNAME``)."""
    fields = ("Linux", nodename, release, version, machine, "(none)")
    out = b""
    for f in fields:
        raw = f.encode()[:NEW_UTS_LEN]
        out += raw.ljust(NEW_UTS_LEN + 1, b"\0")
    return out


def _hex(items: Mapping[str, str], key: str) -> int:
    return int(items[key], 16)


def _num(items: Mapping[str, str], key: str, default: int | None = None) -> int:
    if key not in items:
        if default is None:
            raise KeyError(key)
        return default
    return int(items[key], 0)


@dataclass
class KernelData:
    """The kernel structures of one machine, in its memory, at the addresses its VMCOREINFO gives.

    ``items`` is the filled VMCOREINFO; ``phys_base`` the kernel's load offset; ``page_offset`` the
    direct map's base; ``brk`` the physical brk area ``[start, end)`` (after ``__bss_stop``);
    ``mem_section_paddr`` the physical address of the ``mem_section`` root array (the pool of later
    pages sits right below it).
    """

    mem: PhysMem
    items: Mapping[str, str]
    phys_base: int
    page_offset: int
    brk: tuple[int, int]
    mem_section_paddr: int
    _brk_next: int = field(init=False, repr=False)
    _pool_used: int = field(default=0, init=False, repr=False)
    #: pages taken from boot RAM once the pool is used up: [next, end)
    _spill: tuple[int, int] = field(default=(0, 0), init=False, repr=False)
    #: section number -> flags of the sections the kernel knows
    sections: dict[int, int] = field(default_factory=dict, init=False)
    #: section number -> physical address of its 2 MiB of ``struct page``
    memmap: dict[int, int] = field(default_factory=dict, init=False)
    #: boot RAM the memmap allocator may use, and the inclusive ranges already taken
    _free_ram: list[tuple[int, int]] = field(default_factory=list, init=False, repr=False)
    _used: list[tuple[int, int]] = field(default_factory=list, init=False, repr=False)
    #: ``memory_hotplug.memmap_on_memory``: the memory block size when hot-added memory carries its
    #: own ``struct page`` array at the start of each block (``mhp_supports_memmap_on_memory``,
    #: the vmemmap altmap), 0 when it comes from boot RAM
    memmap_on_memory: int = field(default=0, init=False)
    _memmap_page_cache: bytes | None = field(default=None, init=False, repr=False)
    #: physical address of a page-table entry -> the table it points at, for the table entries
    #: this class wrote or followed (``_next_table``); a leaf written over one drops it
    _tables: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    #: ``mem_section`` root number -> physical address of its page of ``struct mem_section``
    _roots: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._brk_next = self.brk[0]
        items = self.items
        self._section_bits: int = _num(items, "NUMBER(SECTION_SIZE_BITS)", 27)
        self._mem_section_size: int = _num(items, "SIZE(mem_section)")
        self._sections_per_root: int = PAGE_SIZE // self._mem_section_size
        self._section_mem_map_off: int = _num(items, "OFFSET(mem_section.section_mem_map)", 0)
        self._page_struct_size: int = _num(items, "SIZE(page)")
        self._vmemmap: int = _hex(items, "SYMBOL(vmemmap)") if "SYMBOL(vmemmap)" in items else VMEMMAP_START_L4
        self._pgd: int = self._symbol("init_top_pgt" if "SYMBOL(init_top_pgt)" in items else "swapper_pg_dir")

    # -- addresses ---------------------------------------------------------------------------
    def pa_symbol(self, vaddr: int) -> int:
        """``__pa_symbol``: a kernel-image virtual address to its physical address."""
        return vaddr - START_KERNEL_MAP + self.phys_base

    def _symbol(self, name: str) -> int:
        return self.pa_symbol(_hex(self.items, f"SYMBOL({name})"))

    @property
    def section_size_bits(self) -> int:
        """``SECTION_SIZE_BITS``"""
        return self._section_bits

    @property
    def sections_per_root(self) -> int:
        """``SECTIONS_PER_ROOT``: ``PAGE_SIZE / sizeof(struct mem_section)``."""
        return self._sections_per_root

    @property
    def vmemmap(self) -> int:
        """``vmemmap``: the virtual base of the ``struct page`` array."""
        return self._vmemmap

    def _alloc_page(self) -> int:
        """A zeroed page: from brk while it lasts (``alloc_low_pages``), then from the pool, then
        (page tables and section roots for terabytes of hot-added memory) from free boot RAM,
        2 MiB at a time."""
        if self._brk_next + PAGE_SIZE <= self.brk[1]:
            paddr = self._brk_next
            self._brk_next += PAGE_SIZE
        elif self._pool_used < POOL_PAGES:
            self._pool_used += 1
            paddr = self.mem_section_paddr - self._pool_used * PAGE_SIZE
        else:
            if self._spill[0] >= self._spill[1]:
                try:
                    base = self._alloc_memmap(_PMD_SIZE)
                except KernelDataError:
                    raise KernelDataError(f"more than {POOL_PAGES} pages of kernel page tables and section roots, "
                                          "and no free boot RAM for more") from None
                self._spill = (base, base + _PMD_SIZE)
            paddr = self._spill[0]
            self._spill = (paddr + PAGE_SIZE, self._spill[1])
        self.mem.zero(paddr, PAGE_SIZE)
        return paddr

    # -- boot ----------------------------------------------------------------------------------
    def boot(self, release: str, version: str, ram: Iterable[tuple[int, int]], text_end: int,
             *, hot_added: Iterable[tuple[int, int]] = (), online: Iterable[tuple[int, int]] = (),
             reserved: Iterable[tuple[int, int]] = ()) -> None:
        """Write everything as ``start_kernel`` leaves it for boot RAM ``ram`` (inclusive ranges);
        ``hot_added`` ranges (inside ``ram``) get no ``SECTION_IS_EARLY``; ``online`` ranges are
        the online memory blocks; ``reserved`` ranges hold something else already (the kernel
        image, crashkernel, per-CPU areas, VMCOREINFO). ``text_end`` is the physical end of the
        image (``_end``)."""
        ram = sorted(ram)
        hot_list = sorted(hot_added)
        self._tables.clear()
        self._roots.clear()
        # memblock allocates top-down: the highest-ending range first (the order never changes)
        self._free_ram = sorted((r for r in ram if not any(hs <= r[0] <= he for hs, he in hot_list)),
                                key=lambda r: r[1], reverse=True)
        pool_bottom = self.mem_section_paddr - POOL_PAGES * PAGE_SIZE
        self._used = []
        for r in [(0, _ISA_END_ADDRESS - 1), *reserved,
                  (pool_bottom, self.mem_section_paddr + _num(self.items, "LENGTH(mem_section)") * 8 - 1)]:
            self._take(r)
        self._write_utsname(release, version)
        self._write_node_online_map()
        self.mem.zero(self.pgd, PAGE_SIZE)
        self._map_kernel_image(text_end)
        self.mem.zero(self.mem_section_paddr, _num(self.items, "LENGTH(mem_section)") * 8)
        hot = sorted(hot_added)
        boot = [r for r in ram if not any(hs <= r[0] <= he for hs, he in hot)]
        self._map_direct([(0, _ISA_END_ADDRESS - 1), *boot])
        for r in hot:
            self._map_direct([r])
        present: dict[int, bool] = {}
        for start, end in ram:
            for nr in self._section_range(start, end):
                s0 = nr << self.section_size_bits
                present[nr] = present.get(nr, False) or not any(hs <= s0 <= he for hs, he in hot)
        early = sorted(nr for nr, e in present.items() if e)
        if early:
            buf = self._alloc_memmap(len(early) * _PMD_MEMMAP)
            self.mem.fill(buf, len(early) * _PMD_MEMMAP, self._memmap_page())
            for i, nr in enumerate(early):
                self._populate_memmap(nr, buf + i * _PMD_MEMMAP, filled=True)
        for nr, is_early in sorted(present.items()):
            if not is_early:
                self._populate_memmap(nr, self._alloc_memmap(_PMD_MEMMAP))
            self._set_section(nr, SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP
                              | (SECTION_IS_EARLY if is_early else 0))
        for start, end in online:
            self.online_mem_sections(start, end)

    def _write_utsname(self, release: str, version: str) -> None:
        addr = self._symbol("init_uts_ns") + _num(self.items, "OFFSET(uts_namespace.name)", 4)
        self.mem.write(addr, new_utsname(release, version))

    def _write_node_online_map(self) -> None:
        """``node_online_map``: node 0 only (the model has one NUMA node)."""
        size = _num(self.items, "SIZE(nodemask_t)", 128)
        self.mem.write(self._symbol("node_online_map"), (1).to_bytes(8, "little") + bytes(size - 8))

    # -- page tables ---------------------------------------------------------------------------
    @property
    def pgd(self) -> int:
        """Physical address of ``init_top_pgt`` (``swapper_pg_dir``)."""
        return self._pgd

    def _entry(self, table: int, index: int) -> int:
        return int.from_bytes(self.mem.read(table + index * 8, 8), "little")

    def _set_entry(self, table: int, index: int, value: int) -> None:
        """Write a leaf entry (or clear one)."""
        addr = table + index * 8
        if self._tables:
            self._tables.pop(addr, None)
        self.mem.write(addr, value.to_bytes(8, "little"))

    def _next_table(self, table: int, index: int) -> int:
        """The table an entry points at, allocating it when the entry is empty (``pud_alloc``,
        ``pmd_alloc``, ``pte_alloc_kernel``)."""
        addr = table + index * 8
        child = self._tables.get(addr)
        if child is not None:
            return child
        e = int.from_bytes(self.mem.read(addr, 8), "little")
        if e & _PAGE_PRESENT:
            if e & _PAGE_PSE:
                raise KernelDataError(f"page-table entry {index} of {table:#x} is a large page, not a table")
            child = e & _ADDR_MASK
        else:
            child = self._alloc_page()
            self.mem.write(addr, (child | _KERNPG_TABLE).to_bytes(8, "little"))
        self._tables[addr] = child
        return child

    def _map_kernel_image(self, text_end: int) -> None:
        """``level3_kernel_pgt`` / ``level2_kernel_pgt``: 2 MiB pages from ``__START_KERNEL_map``
        over the image, trimmed to ``[_text, _end)`` as ``cleanup_highmap`` leaves them."""
        text = self.pa_symbol(_hex(self.items, "SYMBOL(_stext)")) - self.phys_base
        end = text_end - self.phys_base
        for off in range(text // _PMD_SIZE * _PMD_SIZE, end, _PMD_SIZE):
            vaddr = START_KERNEL_MAP + off
            pud = self._next_table(self.pgd, (vaddr >> 39) & 511)
            pmd = self._next_table(pud, (vaddr >> 30) & 511)
            self._set_entry(pmd, (vaddr >> 21) & 511, (self.phys_base + off) | _PAGE_KERNEL_LARGE_EXEC)

    def _map_direct(self, ranges: Iterable[tuple[int, int]], *, clear: bool = False) -> None:
        """``kernel_physical_mapping_init`` (or ``_remove`` with ``clear``) for inclusive ranges, in
        whole pages."""
        merged: list[list[int]] = []
        for s, e in sorted(ranges):
            s, e = s // PAGE_SIZE * PAGE_SIZE, (e + 1) // PAGE_SIZE * PAGE_SIZE
            if e <= s:
                continue
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        for s, e in merged:
            pos = s
            while pos < e:
                vaddr = self.page_offset + pos
                pud = self._next_table(self.pgd, (vaddr >> 39) & 511)
                if pos % _PUD_SIZE == 0 and pos + _PUD_SIZE <= e:
                    self._set_entry(pud, (vaddr >> 30) & 511, 0 if clear else pos | _PAGE_KERNEL_LARGE)
                    pos += _PUD_SIZE
                    continue
                pmd = self._next_table(pud, (vaddr >> 30) & 511)
                if pos % _PMD_SIZE == 0 and pos + _PMD_SIZE <= e:
                    self._set_entry(pmd, (vaddr >> 21) & 511, 0 if clear else pos | _PAGE_KERNEL_LARGE)
                    pos += _PMD_SIZE
                    continue
                pte = self._next_table(pmd, (vaddr >> 21) & 511)
                self._set_entry(pte, (vaddr >> 12) & 511, 0 if clear else pos | _PAGE_KERNEL)
                pos += PAGE_SIZE

    def vtop(self, vaddr: int) -> int | None:
        """Walk the tables as a dump tool does (``__vtop4_x86_64``); None when not mapped."""
        table = self.pgd
        for shift in (39, 30, 21, 12):
            e = self._entry(table, (vaddr >> shift) & 511)
            if not e & _PAGE_PRESENT:
                return None
            if shift == 12 or (shift in (30, 21) and e & _PAGE_PSE):
                size = 1 << shift
                return (e & _ADDR_MASK & ~(size - 1)) + (vaddr & (size - 1))
            table = e & _ADDR_MASK
        return None  # pragma: no cover - the loop always returns

    # -- vmemmap ---------------------------------------------------------------------------------
    def struct_page(self) -> bytes:
        """One ``struct page`` as the model has every page: no flags, ``_refcount`` 1, ``_mapcount`` -1."""
        size = _num(self.items, "SIZE(page)")
        page = bytearray(size)
        page[_num(self.items, "OFFSET(page._refcount)") :][:4] = (1).to_bytes(4, "little")
        page[_num(self.items, "OFFSET(page._mapcount)") :][:4] = (0xFFFFFFFF).to_bytes(4, "little")
        return bytes(page)

    def _memmap_page(self) -> bytes:
        """A page of ``struct page`` (the same bytes every time: made once)."""
        page = self._memmap_page_cache
        if page is None:
            page = self._memmap_page_cache = self.struct_page() * (PAGE_SIZE // self._page_struct_size)
        return page

    def _take(self, r: tuple[int, int]) -> None:
        """Mark the inclusive range used (``_used`` stays sorted and disjoint)."""
        s, e = r
        i = bisect.bisect_left(self._used, (s, s))
        if i and self._used[i - 1][1] >= s - 1:
            i -= 1
            s = min(s, self._used[i][0])
        j = i
        while j < len(self._used) and self._used[j][0] <= e + 1:
            e = max(e, self._used[j][1])
            j += 1
        self._used[i:j] = [(s, e)]

    def _clash(self, start: int, end: int) -> tuple[int, int] | None:
        """The used range with the highest start that overlaps ``[start, end]``, if any."""
        i = bisect.bisect_right(self._used, (end, 1 << 64)) - 1
        if i >= 0 and self._used[i][1] >= start:
            return self._used[i]
        return None

    def _alloc_memmap(self, size: int) -> int:
        """``memblock_alloc`` top-down, 2 MiB aligned, from free boot RAM."""
        for start, end in self._free_ram:
            cand = (end + 1 - size) // _PMD_SIZE * _PMD_SIZE
            while cand >= start:
                clash = self._clash(cand, cand + size - 1)
                if clash is None:
                    self._take((cand, cand + size - 1))
                    return cand
                cand = (clash[0] - size) // _PMD_SIZE * _PMD_SIZE
        raise KernelDataError(f"no free {size >> 20} MiB of boot RAM for struct pages (hot-added memory "
                              "needs boot memory for its struct pages unless memory_hotplug.memmap_on_memory=1)")

    def _free(self, r: tuple[int, int]) -> None:
        """Give an inclusive range back (the part of a used range it covers)."""
        s, e = r
        out: list[tuple[int, int]] = []
        for us, ue in self._used:
            if ue < s or us > e:
                out.append((us, ue))
                continue
            if us < s:
                out.append((us, s - 1))
            if ue > e:
                out.append((e + 1, ue))
        self._used = out

    def _populate_memmap(self, nr: int, paddr: int, *, filled: bool = False) -> None:
        """``vmemmap_populate``: the section's ``struct page`` array at ``paddr``, mapped with one 2 MiB page."""
        if not filled:
            self.mem.fill(paddr, _PMD_MEMMAP, self._memmap_page())
        pmd, index = self._vmemmap_pmd(nr)
        self._set_entry(pmd, index, paddr | _PAGE_KERNEL_LARGE)
        self.memmap[nr] = paddr

    def _vmemmap_pmd(self, nr: int) -> tuple[int, int]:
        """The PMD table (allocated as ``vmemmap_populate`` walks down to it) and the index in it
        of the entry that maps section ``nr``'s ``struct page`` array."""
        vaddr = self._vmemmap + (nr << self._section_bits) // PAGE_SIZE * self._page_struct_size
        pud = self._next_table(self._pgd, (vaddr >> 39) & 511)
        return self._next_table(pud, (vaddr >> 30) & 511), (vaddr >> 21) & 511

    def _store_words(self, words: list[tuple[int, int]]) -> None:
        """Store 8-byte little-endian values at distinct addresses (``(paddr, value)``): one
        write per run of them within a page, the bytes between them as memory holds them."""
        words.sort()
        i, n = 0, len(words)
        while i < n:
            lo = words[i][0]
            page_end = (lo | (PAGE_SIZE - 1)) + 1
            j = i + 1
            while j < n and words[j][0] + 8 <= page_end:
                j += 1
            if j == i + 1:
                self.mem.write(lo, words[i][1].to_bytes(8, "little"))
            else:
                buf = bytearray(self.mem.read(lo, words[j - 1][0] + 8 - lo))
                for addr, value in words[i:j]:
                    _U64.pack_into(buf, addr - lo, value)
                self.mem.write(lo, bytes(buf))
            i = j

    def _fill_memmaps(self, paddrs: list[int]) -> None:
        """Fill sections' ``struct page`` arrays (2 MiB at each of ``paddrs``), neighbours in one fill."""
        page = self._memmap_page()
        paddrs.sort()
        i, n = 0, len(paddrs)
        while i < n:
            j = i + 1
            while j < n and paddrs[j] == paddrs[j - 1] + _PMD_MEMMAP:
                j += 1
            self.mem.fill(paddrs[i], (j - i) * _PMD_MEMMAP, page)
            i = j

    def _depopulate_memmap(self, nr: int) -> None:
        """``vmemmap_free``: unmap the section's memmap and give its memory back (its bytes stay)."""
        paddr = self.memmap.pop(nr, None)
        if paddr is None:
            return
        pmd, index = self._vmemmap_pmd(nr)
        self._set_entry(pmd, index, 0)
        self._free((paddr, paddr + _PMD_MEMMAP - 1))

    # -- mem_section -----------------------------------------------------------------------------
    def _section_range(self, start: int, end: int) -> range:
        bits = self._section_bits
        return range(start >> bits, (end >> bits) + 1)

    def _section_addr(self, nr: int, *, alloc: bool) -> int | None:
        """``__nr_to_section``: the root array entry, allocating the root's page (``sparse_index_init``)."""
        root, idx = divmod(nr, self._sections_per_root)
        page = self._roots.get(root)
        if page is None:
            slot = self.mem_section_paddr + root * 8
            ptr = int.from_bytes(self.mem.read(slot, 8), "little")
            if not ptr:
                if not alloc:
                    return None
                ptr = self.page_offset + self._alloc_page()
                self.mem.write(slot, ptr.to_bytes(8, "little"))
            page = self._roots[root] = ptr - self.page_offset
        return page + idx * self._mem_section_size

    def _set_section(self, nr: int, flags: int) -> None:
        addr = self._section_addr(nr, alloc=bool(flags))
        if addr is None:
            return
        # sparse_encode_mem_map: mem_map - section_nr_to_pfn(nr) is vmemmap itself with vmemmap
        value = (self._vmemmap | flags) if flags else 0
        self.mem.write(addr + self._section_mem_map_off, value.to_bytes(8, "little"))
        if flags:
            self.sections[nr] = flags
        else:
            self.sections.pop(nr, None)

    def online_mem_sections(self, start: int, end: int) -> None:
        """``online_mem_sections`` for the inclusive physical range."""
        sections = self.sections
        for nr in self._section_range(start, end):
            flags = sections.get(nr)
            if flags is not None:
                self._set_section(nr, flags | SECTION_IS_ONLINE)

    def offline_mem_sections(self, start: int, end: int) -> None:
        """``offline_mem_sections`` for the inclusive physical range."""
        sections = self.sections
        for nr in self._section_range(start, end):
            flags = sections.get(nr)
            if flags is not None:
                self._set_section(nr, flags & ~SECTION_IS_ONLINE)

    # -- memory hotplug (``arch_add_memory`` / ``arch_remove_memory``) ----------------------
    def arch_add_memory(self, start: int, size: int) -> None:
        """``init_memory_mapping`` for the range, then ``sparse_add_section`` for each section
        (``vmemmap_populate`` of its ``struct page`` array, then its ``section_mem_map``).

        Memory is allocated and page-table and section-root pages are linked section by section
        in the kernel's order; the stores that allocate nothing (the arrays, their vmemmap PMD
        entries, the ``section_mem_map`` words) are then made together, neighbours in one write:
        the same bytes end up in memory, with a few writes instead of three per section.
        """
        end = start + size - 1
        self._map_direct([(start, end)])
        bits = self._section_bits
        flags = SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP
        # sparse_encode_mem_map: mem_map - section_nr_to_pfn(nr) is vmemmap itself with vmemmap
        section_mem_map = self._vmemmap | flags
        memmaps: list[int] = []
        words: list[tuple[int, int]] = []
        for nr in self._section_range(start, end):
            if nr not in self.memmap:
                paddr = (self._memmap_on_memory(nr << bits) if self.memmap_on_memory
                         else self._alloc_memmap(_PMD_MEMMAP))
                memmaps.append(paddr)
                pmd, index = self._vmemmap_pmd(nr)
                entry = pmd + index * 8
                self._tables.pop(entry, None)
                words.append((entry, paddr | _PAGE_KERNEL_LARGE))
                self.memmap[nr] = paddr
            addr = self._section_addr(nr, alloc=True)
            assert addr is not None
            words.append((addr + self._section_mem_map_off, section_mem_map))
            self.sections[nr] = flags
        self._fill_memmaps(memmaps)
        self._store_words(words)

    def _memmap_on_memory(self, section: int) -> int:
        """Where the section's ``struct page`` array lies with ``memmap_on_memory``: its block's
        array is at the start of the block, one 2 MiB part per section in order (``altmap``)."""
        block = self.memmap_on_memory
        first = section // block * block
        return first + (section - first) // (1 << self._section_bits) * _PMD_MEMMAP

    def arch_remove_memory(self, start: int, size: int) -> None:
        """``sparse_remove_section`` (the section's ``section_mem_map`` back to 0), then
        ``kernel_physical_mapping_remove``."""
        end = start + size - 1
        for nr in self._section_range(start, end):
            self._set_section(nr, 0)
            self._depopulate_memmap(nr)
        self._map_direct([(start, end)], clear=True)
