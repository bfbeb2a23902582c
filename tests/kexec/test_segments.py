"""Segment placement (``locate_mem_hole_*``) and the kexec lock."""

from __future__ import annotations

import threading

import pytest

from crash_hotplug.kexec.kimage import KexecError, Kimage
from crash_hotplug.kexec.lock import KexecLock
from crash_hotplug.kexec.segments import KexecBuf, kexec_add_buffer

WINDOW = [(0x6F000000, 0x7EFFFFFF)]


def test_bottom_up_and_top_down() -> None:
    image = Kimage()
    hdr = kexec_add_buffer(image, KexecBuf(b"h", 1, 917680, buf_align=4096, top_down=False), WINDOW)
    assert (hdr.mem, hdr.memsz) == (0x6F000000, 0xE1000)
    purg = kexec_add_buffer(image, KexecBuf(b"", 0x4000, 0x5000, buf_align=16), WINDOW)
    assert purg.mem == 0x7EFFB000
    params = kexec_add_buffer(image, KexecBuf(b"", 0x1100, 0x1100, buf_align=16), WINDOW)
    assert (params.mem, params.memsz) == (0x7EFF9000, 0x2000), "steps down a page past the purgatory"
    second = kexec_add_buffer(image, KexecBuf(b"", 1, 1, top_down=False), WINDOW)
    assert second.mem == 0x6F0E1000


def test_pre_6_8_top_down_starts_one_byte_low() -> None:
    image = Kimage()
    purg = kexec_add_buffer(image, KexecBuf(b"", 0x4000, 0x5000, top_down_off_by_one=True), WINDOW)
    assert purg.mem == 0x7EFFA000, "as the 6.1 vector's debug log shows"


def test_limits() -> None:
    image = Kimage()
    for _ in range(16):
        kexec_add_buffer(image, KexecBuf(b"", 1, 1), WINDOW)
    with pytest.raises(KexecError, match="KEXEC_SEGMENT_MAX"):
        kexec_add_buffer(image, KexecBuf(b"", 1, 1), WINDOW)
    with pytest.raises(KexecError, match="no room") as e:
        kexec_add_buffer(Kimage(), KexecBuf(b"", 1, 0x20000000), WINDOW)
    assert e.value.errno == 99
    with pytest.raises(KexecError):
        kexec_add_buffer(Kimage(file_mode=False), KexecBuf(b"", 1, 1), WINDOW)


def test_trylock_is_atomic_and_never_waits() -> None:
    lock = KexecLock()
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def grab() -> None:
        barrier.wait()
        wins.append(lock.trylock())

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1 and lock.locked and lock.failed_trylocks == 7
    lock.unlock()
    assert not lock.locked and lock.trylock()
    lock.unlock()
    with pytest.raises(RuntimeError):
        lock.unlock()
