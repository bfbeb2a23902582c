"""The builder against every real-kernel capture in ../shared/vectors, byte for byte."""

from __future__ import annotations

import pytest

from crash_hotplug.crash.x86_64 import elfcorehdr_from_root
from crash_hotplug.elf.compare import first_difference
from tests.conftest import VectorStep, last_rebuild_step, needs_vectors, vector_steps

STEPS = vector_steps()


@needs_vectors
def test_vectors_present() -> None:
    assert len(STEPS) >= 18, "expected three kernels with six steps each"


@needs_vectors
@pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])
def test_header_equals_kernel_bytes(step: VectorStep) -> None:
    meta = step.meta
    if meta["kexec_syscall"] != "kexec_file_load":
        pytest.skip("header built by userspace (kexec_load)")
    source = last_rebuild_step(step)
    built = elfcorehdr_from_root(source.root)
    diff = first_difference(step.header, built)
    assert diff is None, f"{step.id} (built from {source.name}): {diff}"
    assert len(built) == meta["elfcorehdr_bin_size"]


@needs_vectors
@pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])
def test_own_snapshot_matches_iomem_rule(step: VectorStep) -> None:
    """Built from its own snapshot, each header's RAM ranges are what step.json says iomem had."""
    from crash_hotplug.elf.core import ElfCore

    core = ElfCore.parse(elfcorehdr_from_root(step.root))
    ram = [
        [f"{p.p_paddr:#x}", f"{p.p_paddr + p.p_memsz - 1:#x}"]
        for p in core.load_phdrs
        if p.p_vaddr < 0xFFFFFFFF80000000
    ]
    assert ram == step.meta["iomem_system_ram_expected"]


@needs_vectors
def test_stale_and_unchanged_steps_differ_from_own_snapshot() -> None:
    """Where the kernel did not rebuild (6.1 after load; 6.12 after DIMM removal) the header
    from the step's own snapshot is not the captured one: the vectors do capture staleness."""
    differing = [s.id for s in STEPS if elfcorehdr_from_root(s.root) != s.header]
    assert "6.1/base/S1" in differing
    assert any(x.endswith("/base/S4") and x.startswith("6.12") for x in differing)


@needs_vectors
def test_mismatch_report_names_field() -> None:
    s0 = next(s for s in STEPS if s.id == "6.12.43/base/S0")
    s1 = next(s for s in STEPS if s.id == "6.12.43/base/S1")
    diff = first_difference(s1.header, s0.header)
    assert diff is not None and diff.startswith("ELF header e_phnum")
    tampered = bytearray(s0.header)
    tampered[64 + 56 * 10 + 8 + 7] ^= 0x01  # high byte of p_offset of program header 10
    diff = first_difference(s0.header, bytes(tampered))
    assert diff is not None and "program header 10 (PT_LOAD) p_offset" in diff
