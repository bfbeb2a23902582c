"""The machine against the real-kernel vectors: from a snapshot, from parameters, and replaying
the ``base`` scenario; snapshots written back in the vectors' layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crash_hotplug.crash.x86_64 import prepare_elf_headers
from crash_hotplug.elf.compare import first_difference
from crash_hotplug.elf.prstatus import USER_REGS
from crash_hotplug.machine.cpu import CpuNotPossibleError
from crash_hotplug.machine.machine import GIB, Machine, MachineError, parse_crashkernel
from crash_hotplug.machine.memory import MEM_OFFLINE, MEM_ONLINE, MemoryNotify
from crash_hotplug.machine.notifier import NOTIFY_OK
from crash_hotplug.machine.physmem import MODEL_STATE_FILE
from crash_hotplug.machine.resource import iomem_render
from crash_hotplug.snapshot.model import machine_from_snapshot, snapshot_files
from crash_hotplug.snapshot.reader import read_kernel_state
from crash_hotplug.snapshot.writer import write_snapshot
from tests.conftest import VECTORS, VectorStep, needs_vectors, vector_steps

STEPS = vector_steps()
#: files whose content depends on kexec state or that the vectors hold truncated
STATE_FILES = {"proc/kcore"}


class _Status:
    """The kexec state a snapshot shows, for writing it back."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _read(self, rel: str) -> int:
        p = self.root / rel
        return int(p.read_text()) if p.exists() else 0

    def kexec_loaded(self) -> bool:
        return bool(self._read("sys/kernel/kexec_loaded"))

    def kexec_crash_loaded(self) -> bool:
        return bool(self._read("sys/kernel/kexec_crash_loaded"))

    def crash_check_hotplug_support(self) -> int:
        return self._read("sys/devices/system/cpu/crash_hotplug")


def header(m: Machine) -> bytes:
    return prepare_elf_headers(m.kernel_state())[0]


@needs_vectors
@pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])
def test_from_snapshot_builds_the_same_header_as_the_reader(step: VectorStep) -> None:
    m = machine_from_snapshot(step.root)
    built = header(m)
    diff = first_difference(prepare_elf_headers(read_kernel_state(step.root))[0], built)
    assert diff is None, diff
    assert len(m.crash_notes()) == len(m.cpus.possible) and all(m.crash_notes().values()), \
        "every possible CPU has a crash_notes buffer"


@needs_vectors
@pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])
def test_written_snapshot_equals_the_vector_files(step: VectorStep) -> None:
    m = machine_from_snapshot(step.root)
    m.kexec = _Status(step.root)
    files = snapshot_files(m)
    real = {str(p.relative_to(step.root)) for p in step.root.rglob("*") if p.is_file()}
    assert real <= set(files), f"missing: {sorted(real - set(files))}"
    assert set(files) - real == {MODEL_STATE_FILE}
    for rel in sorted(real - STATE_FILES):
        assert files[rel] == (step.root / rel).read_bytes(), rel


@needs_vectors
@pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])
def test_round_trip(step: VectorStep, tmp_path: Path) -> None:
    m = machine_from_snapshot(step.root)
    m.cpus.cpu(m.cpus.online[-1]).counter = 7
    first = write_snapshot(m, tmp_path / "a").root
    again = machine_from_snapshot(first)
    second = write_snapshot(again, tmp_path / "b").root
    assert read_kernel_state(first) == read_kernel_state(step.root)
    s1, s2 = read_kernel_state(first), read_kernel_state(second)
    assert s1 == s2
    assert prepare_elf_headers(s1) == prepare_elf_headers(read_kernel_state(step.root))
    assert header(again) == header(m)
    assert snapshot_files(again) == snapshot_files(m)
    model = json.loads((first / MODEL_STATE_FILE).read_text())
    cpu = str(m.cpus.online[-1])
    regs = model["cpus"][cpu]["regs"]
    assert tuple(regs[name] for name in USER_REGS) == m.cpus.cpu(int(cpu)).regs
    assert again.cpus.cpu(int(cpu)).regs == m.cpus.cpu(int(cpu)).regs


def _vector(kernel: str, step: str) -> VectorStep:
    return next(s for s in STEPS if s.kernel == kernel and s.name == step)


BOOT = {"6.12.43": dict(possible=8), "6.12": dict(possible=2), "6.1": dict(possible=8)}


@needs_vectors
@pytest.mark.parametrize("kernel", sorted(BOOT))
def test_new_machine_matches_the_booted_kernel(kernel: str) -> None:
    s0 = _vector(kernel, "S0")
    m = Machine.new(mem_gib=2, cpus=2, kernel=kernel, crashkernel="256M", **BOOT[kernel])
    assert iomem_render(m.iomem) == (s0.root / "proc/iomem").read_text()
    assert m.cmdline + "\n" == (s0.root / "proc/cmdline").read_text()
    assert first_difference(s0.header, header(m)) is None
    assert m.crashk_res == (0x6F000000, 0x7EFFFFFF)


class CrashRebuilds:
    """Rebuilds the header on MEM_ONLINE / MEM_OFFLINE, as the kernel's handler does."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.header = header(m)
        m.register_memory_notifier(self)

    def __call__(self, action: int, arg: MemoryNotify) -> int:
        if action in (MEM_ONLINE, MEM_OFFLINE):
            self.header = header(self.m)
        return NOTIFY_OK


@needs_vectors
@pytest.mark.parametrize("kernel", ["6.12.43", "6.12"])
def test_replaying_the_base_scenario_gives_the_kernels_headers(kernel: str) -> None:
    m = Machine.new(mem_gib=2, cpus=2, kernel=kernel, **BOOT[kernel])
    hp = CrashRebuilds(m)

    def check(step: str) -> None:
        diff = first_difference(_vector(kernel, step).header, hp.header)
        assert diff is None, f"{kernel} {step}: {diff}"

    check("S0")
    m.add_dimm(GIB)
    check("S1")
    for cpu in (2, 3):
        try:
            m.cpu_hot_add(cpu)
            m.cpu_online(cpu)
        except CpuNotPossibleError:
            assert kernel == "6.12", "only 6.12.117 refuses the vCPUs (2 possible CPUs)"
    check("S2")
    m.cpu_offline(1)
    check("S3")
    m.remove_dimm("dimm1")
    check("S4")  # stale: rebuilt at the last MEM_OFFLINE, before the resource went
    assert hp.header != header(m)
    m.add_dimm(2 * GIB)
    check("S5")
    expected_online = (0, 2, 3) if kernel == "6.12.43" else (0,)
    assert m.cpus.online == expected_online


def test_parse_crashkernel() -> None:
    assert parse_crashkernel("256M") == (256 << 20, None, False)
    assert parse_crashkernel("512M@0x20000000") == (512 << 20, 0x20000000, False)
    assert parse_crashkernel("1G,high") == (1 << 30, None, True)
    with pytest.raises(MachineError):
        parse_crashkernel("lots")


def test_new_machine_with_more_memory() -> None:
    m = Machine.new(mem_gib=4, cpus=4, possible=16, kernel="6.12.43")
    ram = m.system_ram()
    assert ram[0] == (0x1000, 0x9FBFF) and ram[1] == (0x100000, 0xBFFDEFFF) and ram[2] == (0x100000000, 0x13FFFFFFF)
    assert m.crashk_res == (0xAF000000, 0xBEFFFFFF)
    assert m.dimm_base == 0x140000000 and m.add_dimm(GIB).start == 0x140000000
    assert m.memory.block(33).valid_zones() == "Normal" and m.memory.block(0).valid_zones() == "none"
    assert len(header(m)) == 4096


def test_boot_memory_contents() -> None:
    m = Machine.new(kernel="6.12.43", seed=5)
    for c in m.cpus.possible:
        assert m.mem.read(m.cpus.cpu(c).crash_notes, 368) == bytes(368)
    note = m.vmcoreinfo_note()
    assert len(note) == 4132 and note[12:24] == b"VMCOREINFO\0\0" and b"OSRELEASE=6.12.43+deb12-amd64\n" in note
    untouched = 0x50000000
    assert m.mem.read(untouched, 16) != bytes(16)
    assert Machine.new(kernel="6.12.43", seed=5).mem.read(untouched, 64) == m.mem.read(untouched, 64)


def test_vectors_dir_located() -> None:
    if VECTORS is None:
        pytest.skip("../shared/vectors not found beside the repository")
    assert (VECTORS / "README.md").is_file()


def test_from_the_bundled_example_snapshot() -> None:
    from crash_hotplug.cli import example_root

    root = example_root()
    m = machine_from_snapshot(root)
    assert header(m) == prepare_elf_headers(read_kernel_state(root))[0]


def test_refused_cpu_hot_add_is_logged() -> None:
    m = Machine.new(kernel="6.12", possible=2, cpus=2)
    with pytest.raises(CpuNotPossibleError):
        m.cpu_hot_add(2)
    assert m.log[-1].endswith("ACPI: Unable to map lapic to logical cpu number")


def test_crash_save_vmcoreinfo() -> None:
    from crash_hotplug.elf.notes import iter_notes
    from crash_hotplug.elf.vmcoreinfo import parse_vmcoreinfo

    m = Machine.new(kernel="6.12.43")
    m.crash_save_vmcoreinfo(1_800_000_000)
    (note,) = list(iter_notes(m.vmcoreinfo_note()))
    assert note.name == "VMCOREINFO" and parse_vmcoreinfo(note.desc)["CRASHTIME"] == "1800000000"


def test_crashkernel_high_reserves_a_low_region_too(tmp_path: Path) -> None:
    m = Machine.new(mem_gib=8, kernel="6.12.43", crashkernel="512M,high")
    assert m.crashk_res == (0x220000000, 0x23FFFFFFF), "top of the RAM above 4 GiB (5 GiB of the 8)"
    assert m.crashk_low_res == (0xAF000000, 0xBEFFFFFF)
    state = read_kernel_state(write_snapshot(m, tmp_path).root)
    assert (state.crashk_res, state.crashk_low_res) == (m.crashk_res, m.crashk_low_res)
    assert first_difference(prepare_elf_headers(state)[0], header(m)) is None
    _, nr_ranges = prepare_elf_headers(m.kernel_state())
    assert nr_ranges == 3, "the low 1 MiB, crashk_low and crashk_res cut out of 3 System RAM ranges"


def test_live_kernel_state_follows_every_change_of_the_machine() -> None:
    """The live view (``snapshot=False``) is handed out again only while nothing it holds changed."""
    m = Machine.new(mem_gib=2, cpus=2, possible=4)
    live = m.kernel_state(snapshot=False)
    assert m.kernel_state(snapshot=False) is live
    m.cpu_hot_add(2)
    m.cpu_online(2)
    after = m.kernel_state(snapshot=False)
    assert (live.present, live.online) == ((0, 1), (0, 1))
    assert (after.present, after.online) == ((0, 1, 2), (0, 1, 2))
    m.add_dimm(GIB)
    assert m.kernel_state(snapshot=False).iomem is m.iomem
    assert iomem_render(m.kernel_state(snapshot=False).iomem) == iomem_render(m.iomem)
    m.crashk_res = None
    assert m.kernel_state(snapshot=False).crashk_res is None
    snap = m.kernel_state()
    assert snap.iomem is not m.iomem and m.kernel_state() is not snap
