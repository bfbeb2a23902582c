"""kexec_file_load against the vectors (placements, elfcorehdr bytes) and the purgatory digest's
behaviour: what it covers, what it leaves out, and the 6.6 index bug."""

from __future__ import annotations

import hashlib
import re

import pytest

from crash_hotplug.crash.x86_64 import prepare_elf_headers
from crash_hotplug.kexec.kexec_core import Kexec, kimage_verify_digest
from crash_hotplug.kexec.kexec_file import (
    KexecPayload,
    kexec_file_load,
    kexec_file_unload,
    kexec_purgatory_repatch,
)
from crash_hotplug.kexec.kimage import KEXEC_FILE_DEBUG, KEXEC_FILE_ON_CRASH, KexecError, Kimage
from crash_hotplug.kexec.lock import KexecBusyError
from crash_hotplug.kexec.purgatory import PurgatoryDigestMismatch, unpack_sha_regions
from crash_hotplug.machine.machine import GIB, Machine
from crash_hotplug.machine.protmem import ProtectedMemoryWriteError
from crash_hotplug.snapshot.model import machine_from_snapshot
from tests.conftest import VectorStep, needs_vectors, vector_steps

S0 = [s for s in vector_steps() if s.name == "S0"]
SEGMENT = re.compile(
    r"segment(?:\[| )(\d+)\]?: buf=0x[0-9a-f]+ bufsz=(0x[0-9a-f]+) mem=(0x[0-9a-f]+) memsz=(0x[0-9a-f]+)")


def logged_segments(dmesg: str) -> list[tuple[int, int, int]]:
    """(bufsz, mem, memsz) of each segment the kernel's debug log lists for the first load."""
    out: dict[int, tuple[int, int, int]] = {}
    for m in SEGMENT.finditer(dmesg):
        i = int(m.group(1))
        if i in out:
            break
        out[i] = (int(m.group(2), 16), int(m.group(3), 16), int(m.group(4), 16))
    return [out[i] for i in sorted(out)]


@needs_vectors
@pytest.mark.parametrize("step", S0, ids=[s.kernel for s in S0])
def test_load_places_segments_and_header_as_the_kernel_did(step: VectorStep) -> None:
    meta = step.meta
    dmesg = (step.root / "var/log/dmesg").read_text()
    logged = logged_segments(dmesg)
    assert len(logged) == 5
    kernel_bufsz, initrd_bufsz = logged[3][0], logged[4][0]
    found = re.search(r"Loaded 64bit kernel at \S+ bufsz=\S+ memsz=(0x[0-9a-f]+)", dmesg)
    assert found is not None
    payload = KexecPayload(bytes(kernel_bufsz), int(found.group(1), 16), bytes(initrd_bufsz))
    m = machine_from_snapshot(step.root)
    kx = Kexec(m)
    image = kexec_file_load(kx, payload, KEXEC_FILE_ON_CRASH | KEXEC_FILE_DEBUG)
    assert image is not None
    assert [(s.bufsz, s.mem, s.memsz) for s in image.segments] == logged
    assert [s.name for s in image.segments] == ["elfcorehdr", "purgatory", "boot_params", "kernel", "initrd"]
    addr = int(meta["elfcorehdr_addr"], 16)
    assert image.elf_load_addr == addr
    seg = image.segments[0]
    assert seg.memsz == meta["elfcorehdr_segment_size"]
    in_memory = m.mem.read(addr, seg.memsz)
    assert in_memory[: len(step.header)] == step.header
    assert in_memory[len(step.header):] == bytes(seg.memsz - len(step.header))
    assert hashlib.sha256(in_memory).hexdigest() == meta["segment_sha256"]
    assert image.cmdline == (step.path.parent / "capture-cmdline").read_text().strip()
    assert image.elfcorehdr_index == (0 if m.config.crash_hotplug else -1)
    assert image.hotplug_support == m.config.crash_hotplug
    line = f"kexec: Loaded ELF headers at {addr:#x} bufsz=0x1000 memsz={seg.memsz:#x}"
    assert any(x.endswith(line) for x in m.log), "the debug line the real kernel printed"
    assert kimage_verify_digest(image, m)


def load(kernel: str = "6.12.43", *, digest_bug_6_6: bool = False) -> tuple[Machine, Kexec, Kimage]:
    m = Machine.new(kernel=kernel, possible=8)
    kx = Kexec(m)
    image = kexec_file_load(kx, KexecPayload.synthetic(), digest_bug_6_6=digest_bug_6_6)
    assert image is not None
    return m, kx, image


def digested(m: Machine, image: Kimage) -> list[tuple[int, int]]:
    pi = image.purgatory
    assert pi is not None
    return [r for r in unpack_sha_regions(m.mem.read(pi.symbol_addr("purgatory_sha_regions"), 256)) if r[1]]


def test_digest_covers_every_segment_but_purgatory_and_elfcorehdr() -> None:
    m, kx, image = load()
    names = {(s.mem, s.memsz): s.name for s in image.segments}
    assert [names[r] for r in digested(m, image)] == ["boot_params", "kernel", "initrd"]
    for seg in image.segments[2:]:
        kx.arch_kexec_unprotect_crashkres()
        old = m.mem.read(seg.end, 1)
        m.mem.write(seg.end, bytes([old[0] ^ 1]))
        assert not kimage_verify_digest(image, m), f"tampering with {seg.name} must be caught"
        m.mem.write(seg.end, old)
        assert kimage_verify_digest(image, m)


def test_rewriting_the_excluded_elfcorehdr_never_breaks_verification() -> None:
    m, kx, image = load()
    hdr = image.segments[image.elfcorehdr_index]
    kx.arch_kexec_unprotect_crashkres()
    m.add_dimm(GIB)
    new, _ = prepare_elf_headers(m.kernel_state())
    m.mem.write(hdr.mem, new)
    assert kimage_verify_digest(image, m)
    m.mem.write(hdr.mem, b"\xff" * hdr.memsz)
    assert kimage_verify_digest(image, m)


def test_without_crash_hotplug_the_header_is_digested() -> None:
    m, kx, image = load("6.1")
    assert image.elfcorehdr_index == -1
    names = {(s.mem, s.memsz): s.name for s in image.segments}
    assert "elfcorehdr" in [names[r] for r in digested(m, image)]
    kx.arch_kexec_unprotect_crashkres()
    m.mem.write(image.elf_load_addr + 100, b"\x01")
    with pytest.raises(PurgatoryDigestMismatch):
        kimage_verify_digest(image, m, raise_on_mismatch=True)


def test_6_6_digest_index_bug() -> None:
    # j (the table slot) was compared with elfcorehdr_index (0 on x86): every segment after the
    # purgatory is skipped, so nothing is digested and tampering goes unnoticed
    m, kx, image = load(digest_bug_6_6=True)
    assert digested(m, image) == []
    kx.arch_kexec_unprotect_crashkres()
    kernel = image.segment_named("kernel")
    m.mem.write(kernel.mem, b"corrupted")
    assert kimage_verify_digest(image, m), "the buggy digest misses a corrupted kernel"
    m2, kx2, fixed = load()
    kx2.arch_kexec_unprotect_crashkres()
    m2.mem.write(fixed.segment_named("kernel").mem, b"corrupted")
    assert not kimage_verify_digest(fixed, m2)


def test_rfc_repatch_digests_the_rewritten_header() -> None:
    m, kx, image = load()
    hdr = image.segments[image.elfcorehdr_index]
    kx.arch_kexec_unprotect_crashkres()
    m.add_dimm(GIB)
    m.mem.write(hdr.mem, prepare_elf_headers(m.kernel_state())[0])
    kexec_purgatory_repatch(kx, image)
    kx.arch_kexec_protect_crashkres()
    assert kimage_verify_digest(image, m)
    names = {(s.mem, s.memsz): s.name for s in image.segments}
    assert [names[r] for r in digested(m, image)] == ["elfcorehdr", "boot_params", "kernel", "initrd"]
    kx.arch_kexec_unprotect_crashkres()
    m.mem.write(hdr.mem + 64, b"\x00")
    assert not kimage_verify_digest(image, m), "after a re-patch the header is covered"


def test_crash_region_is_read_only_while_loaded() -> None:
    m, kx, image = load()
    assert kx.crashkres_protected
    with pytest.raises(ProtectedMemoryWriteError):
        m.mem.write(image.elf_load_addr, b"x")
    m.mem.write(0x1000000, b"outside is fine")
    kx.arch_kexec_unprotect_crashkres()
    m.mem.write(image.elf_load_addr, b"\x7fELF")
    kx.arch_kexec_protect_crashkres()
    kexec_file_unload(kx)
    assert not kx.kexec_crash_loaded() and not kx.crashkres_protected
    m.mem.write(image.elf_load_addr, b"after unload")


def test_lock_busy_refuses_load_and_hides_hotplug_support() -> None:
    _m, kx, image = load()
    assert kx.crash_check_hotplug_support() == 1
    assert kx.kexec_trylock()
    assert not kx.kexec_trylock(), "a second trylock sees the lock busy"
    assert kx.crash_check_hotplug_support() == 0
    with pytest.raises(KexecBusyError) as e:
        kexec_file_load(kx, KexecPayload.synthetic())
    assert e.value.errno == 16
    assert kx.kexec_crash_image is image
    kx.kexec_unlock()
    assert kx.crash_check_hotplug_support() == 1


def test_sysfs_reflects_kexec_state() -> None:
    from crash_hotplug.snapshot.model import snapshot_files

    m, _kx, _ = load()
    f = snapshot_files(m)
    assert f["sys/kernel/kexec_crash_loaded"] == b"1\n"
    assert f["sys/devices/system/memory/crash_hotplug"] == b"1\n"
    m6, _kx6, _ = load("6.1")
    assert snapshot_files(m6)["sys/kernel/kexec_crash_loaded"] == b"1\n"


def test_errors() -> None:
    m = Machine.new(kernel="6.12.43", crashkernel=None)
    kx = Kexec(m)
    with pytest.raises(KexecError):
        kexec_file_load(kx, KexecPayload.synthetic())
    assert not kx.lock.locked, "the lock is released on failure"
    with pytest.raises(KexecError, match="unknown"):
        kexec_file_load(kx, KexecPayload.synthetic(), 0x100)
    m2 = Machine.new(kernel="6.12.43", crashkernel="16M")
    with pytest.raises(KexecError, match="no room"):
        kexec_file_load(Kexec(m2), KexecPayload.synthetic(kernel_memsz=32 << 20))


def test_6_6_bug_hashes_the_header_when_purgatory_comes_first() -> None:
    from crash_hotplug.kexec.kexec_file import kexec_calculate_store_digests
    from crash_hotplug.kexec.kimage import KexecSegment
    from crash_hotplug.kexec.purgatory import PurgatoryInfo, PurgatoryObject, build_purgatory

    def image() -> Kimage:
        pi = PurgatoryInfo.setup_kbuf(PurgatoryObject.parse(build_purgatory()))
        pi.setup_sechdrs(0x1000)
        segs = [KexecSegment(b"", 0x4000, 0x1000, 0x5000, "purgatory"),
                KexecSegment(b"\x7fELF", 4, 0x10000, 0x1000, "elfcorehdr"),
                KexecSegment(b"k", 1, 0x20000, 0x1000, "kernel")]
        return Kimage(segments=segs, purgatory=pi, purgatory_index=0, elfcorehdr_index=1)

    def table(img: Kimage) -> list[str]:
        assert img.purgatory is not None
        raw = img.purgatory.get_symbol("purgatory_sha_regions", 256)
        return [s.name for r in unpack_sha_regions(raw) if r[1] for s in img.segments if s.mem == r[0]]

    fixed, buggy = image(), image()
    kexec_calculate_store_digests(fixed, crash_hotplug=True)
    kexec_calculate_store_digests(buggy, crash_hotplug=True, digest_bug_6_6=True)
    assert table(fixed) == ["kernel"]
    assert table(buggy) == ["elfcorehdr"], "j reaches the index at the kernel: header hashed, kernel skipped"
