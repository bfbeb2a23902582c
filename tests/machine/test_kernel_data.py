"""The kernel structures a dump tool reads, in the model's memory: VMCOREINFO that points at them,
page tables that translate as makedumpfile walks them, mem_section across memory hotplug."""

from __future__ import annotations

from crash_hotplug.elf.vmcoreinfo import parse_vmcoreinfo
from crash_hotplug.machine.kernel import PAGE_OFFSET_L4
from crash_hotplug.machine.kernel_data import (
    SECTION_HAS_MEM_MAP,
    SECTION_IS_EARLY,
    SECTION_IS_ONLINE,
    SECTION_MARKED_PRESENT,
    new_utsname,
    vmcoreinfo_template,
)
from crash_hotplug.machine.machine import GIB, Machine

PRESENT = SECTION_MARKED_PRESENT | SECTION_HAS_MEM_MAP


def _machine(kernel: str = "6.12.43") -> Machine:
    return Machine.new(mem_gib=0.25, cpus=2, crashkernel="64M", kernel=kernel)


def test_vmcoreinfo_has_the_real_kernels_keys_in_its_order_and_the_machines_values() -> None:
    m = _machine()
    note = m.vmcoreinfo_note()
    items = parse_vmcoreinfo(note[24:])
    assert list(items) == [k for k, _ in vmcoreinfo_template("6.12.43")]
    assert items["OSRELEASE"] == "6.12.43+deb12-amd64"
    assert items["SYMBOL(init_top_pgt)"] == "ffffffff82c22000"
    # mem_section's root sits at the top of boot RAM (memblock allocates top-down)
    ram_top = max(e for _, e in m.system_ram()) + 1
    assert int(items["SYMBOL(mem_section)"], 16) == PAGE_OFFSET_L4 + ram_top - 4096 * 8
    assert items["NUMBER(phys_base)"] == "0" and items["KERNELOFFSET"] == "0"


def test_init_uts_ns_reads_through_the_page_tables() -> None:
    for kernel in ("6.12.43", "6.12", "6.1"):
        m = _machine(kernel)
        assert m.kdata is not None
        vaddr = int(m.vmcoreinfo_items["SYMBOL(init_uts_ns)"], 16)
        paddr = m.kdata.vtop(vaddr)
        assert paddr == vaddr - 0xFFFFFFFF80000000
        uts = m.mem.read(paddr, 390)
        assert uts == new_utsname(m.release, m.banner[m.banner.index("#1 SMP"):])
        assert uts[130:195].rstrip(b"\0").decode() == m.release


def test_direct_map_covers_ram_and_nothing_past_it() -> None:
    m = _machine()
    assert m.kdata is not None
    for start, end in m.system_ram():
        for paddr in (start, end & ~0xFFF):
            assert m.kdata.vtop(PAGE_OFFSET_L4 + paddr) == paddr
    top = max(e for _, e in m.system_ram())
    assert m.kdata.vtop(PAGE_OFFSET_L4 + (top | 0x1FFFFF) + 1) is None


def test_sections_follow_add_online_offline_and_remove() -> None:
    m = Machine.new(mem_gib=0.25, cpus=2, crashkernel="64M", kernel="6.12.43", auto_online_blocks="offline")
    kd = m.kdata
    assert kd is not None
    assert kd.sections[0] == PRESENT | SECTION_IS_EARLY | SECTION_IS_ONLINE
    dimm = m.add_dimm(128 << 20)
    nr = dimm.start >> 27
    assert kd.sections[nr] == PRESENT
    vmemmap = kd.vmemmap + dimm.start // 4096 * 64
    assert kd.vtop(vmemmap) == kd.memmap[nr]
    assert kd.vtop(PAGE_OFFSET_L4 + dimm.start) == dimm.start
    m.memory_block_online(nr)
    assert kd.sections[nr] == PRESENT | SECTION_IS_ONLINE
    m.memory_block_offline(nr)
    assert kd.sections[nr] == PRESENT
    m.remove_dimm(dimm.name)
    assert nr not in kd.sections
    assert kd.vtop(vmemmap) is None and kd.vtop(PAGE_OFFSET_L4 + dimm.start) is None
    # the section's slot in its root page reads 0 again, as makedumpfile sees a removed section
    root = int.from_bytes(m.mem.read(kd.mem_section_paddr, 8), "little") - PAGE_OFFSET_L4
    assert m.mem.read(root + nr * 32, 8) == bytes(8)


def test_struct_pages_sit_in_free_ram_and_count_as_written() -> None:
    m = Machine.new(mem_gib=4, cpus=2, kernel="6.12.43")
    kd = m.kdata
    assert kd is not None
    written = m.mem.written_ranges()
    crashk = m.crashk_res
    assert crashk is not None
    for paddr in kd.memmap.values():
        assert not (paddr <= crashk[1] and paddr + (2 << 20) > crashk[0])
        assert any(s <= paddr and paddr + (2 << 20) - 1 <= e for s, e in written)
    # the high RAM above 4 GiB is the top of boot RAM: the boot memmap buffer is there
    assert min(kd.memmap.values()) >= 4 * GIB
