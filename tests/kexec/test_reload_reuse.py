"""What a reload or an update reuses from the last one it made from the same inputs: the same bytes,
fresh mutable objects, and nothing kept once an input changed."""

from __future__ import annotations

import pytest

from crash_hotplug.crash.x86_64 import prepare_elf_headers
from crash_hotplug.kexec.kexec_core import Kexec, kimage_verify_digest
from crash_hotplug.kexec.kexec_file import KexecPayload
from crash_hotplug.kexec.kexec_load import kexec_load_unload, kexec_tools_load
from crash_hotplug.kexec.kimage import KexecSegment, Kimage
from crash_hotplug.kexec.purgatory import (
    STB_GLOBAL,
    STB_LOCAL,
    STT_OBJECT,
    PurgatoryError,
    PurgatoryObject,
    Symbol,
    build_purgatory,
)
from crash_hotplug.kexec.segments import kimage_load_segment
from crash_hotplug.machine.machine import GIB, Machine
from crash_hotplug.machine.physmem import PhysMem


def _reload(kx: Kexec, payload: KexecPayload) -> Kimage:
    """``kdumpctl reload`` with kexec_load: ``kexec -p -u`` then ``kexec -p``."""
    kexec_load_unload(kx)
    return kexec_tools_load(kx, payload)


def test_a_reload_of_an_unchanged_machine_gets_equal_bytes_in_fresh_objects() -> None:
    m = Machine.new(possible=8, cpus=2)
    kx = Kexec(m)
    payload = KexecPayload.synthetic()
    first = kexec_tools_load(kx, payload)
    second = _reload(kx, payload)
    assert [(s.buf, s.mem, s.memsz, s.name) for s in first.segments] == \
           [(s.buf, s.mem, s.memsz, s.name) for s in second.segments]
    assert all(a is not b for a, b in zip(first.segments, second.segments, strict=True))
    assert first.purgatory is not None and second.purgatory is not None
    assert first.purgatory is not second.purgatory
    assert first.purgatory.purgatory_buf is not second.purgatory.purgatory_buf
    assert first.purgatory.purgatory_buf == second.purgatory.purgatory_buf
    # changing what one load handed out leaves the next load alone
    first.segments[0].buf = b"changed"
    first.purgatory.purgatory_buf[:4] = b"\xff\xff\xff\xff"
    third = _reload(kx, payload)
    assert third.segments[0].buf == second.segments[0].buf
    assert third.purgatory is not None and third.purgatory.purgatory_buf == second.purgatory.purgatory_buf
    assert kimage_verify_digest(third, m)


def test_a_reload_after_memory_came_describes_it_and_digests_it() -> None:
    m = Machine.new(possible=8, cpus=2)
    kx = Kexec(m)
    payload = KexecPayload.synthetic()
    before = kexec_tools_load(kx, payload).segment_named("elfcorehdr").buf
    m.add_dimm(GIB)
    image = _reload(kx, payload)
    after = image.segment_named("elfcorehdr").buf
    assert after != before
    assert m.mem.read(image.segment_named("elfcorehdr").mem, len(after)) == after
    assert kimage_verify_digest(image, m)
    # and back to the first machine's header when the memory left again
    m.remove_dimm(next(iter(m.memory.dimms)))
    assert _reload(kx, payload).segment_named("elfcorehdr").buf == before


def test_the_header_builder_sees_a_changed_tree_behind_the_same_state_object() -> None:
    m = Machine.new(possible=8, cpus=2)
    state = m.kernel_state(snapshot=False)
    first, n = prepare_elf_headers(state)
    assert prepare_elf_headers(state) == (first, n)
    m.add_dimm(GIB)
    grown, n2 = prepare_elf_headers(m.kernel_state(snapshot=False))
    assert n2 == n + 1 and grown != first
    assert prepare_elf_headers(state) == (grown, n2), "the live tree the old state shares grew too"


def test_a_segment_is_loaded_as_its_buffer_then_zeros() -> None:
    mem = PhysMem(seed=3)
    buf = bytes(range(256)) * 20
    seg = KexecSegment(buf, len(buf), 0x100000, 0x4000, "kernel")
    kimage_load_segment(mem, seg)
    assert mem.read(0x100000, 0x4000) == buf + bytes(0x4000 - len(buf))
    # a short bufsz loads only that much of the buffer
    mem.write(0x200000, b"\xaa" * 0x2000)
    kimage_load_segment(mem, KexecSegment(buf, 100, 0x200000, 0x2000, "initrd"))
    assert mem.read(0x200000, 0x2000) == buf[:100] + bytes(0x2000 - 100)
    # a mutable buffer is loaded as it is now
    ba = bytearray(b"\x11" * 0x1000)
    seg2 = KexecSegment(ba, len(ba), 0x300000, 0x2000, "x")  # type: ignore[arg-type]
    kimage_load_segment(mem, seg2)
    ba[:] = b"\x22" * 0x1000
    kimage_load_segment(mem, seg2)
    assert mem.read(0x300000, 0x2000) == b"\x22" * 0x1000 + bytes(0x1000)


def test_find_symbol_takes_the_first_global_of_a_name() -> None:
    obj = PurgatoryObject.parse(build_purgatory())
    sym = obj.find_symbol("purgatory_sha256_digest")
    assert sym.bind == STB_GLOBAL and sym.st_size == 32
    local = Symbol("purgatory_sha256_digest", STB_LOCAL << 4 | STT_OBJECT, 0, 2, 0, 32)
    second = Symbol("purgatory_sha256_digest", STB_GLOBAL << 4 | STT_OBJECT, 0, 2, 64, 32)
    twin = PurgatoryObject(obj.data, obj.e_entry, obj.sections, (local, *obj.symbols, second))
    assert twin.find_symbol("purgatory_sha256_digest") == sym
    bad = PurgatoryObject(obj.data, obj.e_entry, obj.sections,
                          (Symbol("purgatory_start", STB_GLOBAL << 4, 0, 99, 0, 3), *obj.symbols))
    with pytest.raises(PurgatoryError, match="bad section index 99"):
        bad.find_symbol("purgatory_start")
    with pytest.raises(PurgatoryError, match="no global symbol no_such_symbol"):
        obj.find_symbol("no_such_symbol")
