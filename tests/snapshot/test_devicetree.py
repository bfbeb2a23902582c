"""/proc/device-tree of the ppc64le snapshots: crashkernel, RTAS, LMBs, CPU nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from crash_hotplug.errors import SnapshotError
from crash_hotplug.snapshot.devicetree import is_ppc64_root, read_device_tree
from crash_hotplug.snapshot.root import FsRoot
from tests.conftest import needs_ppc64_vectors, ppc64_steps

STEPS = ppc64_steps()


@needs_ppc64_vectors
@pytest.mark.parametrize("step", STEPS, ids=[s.id for s in STEPS])
def test_device_tree_agrees_with_step_json(step: object) -> None:
    from tests.conftest import Ppc64Step

    assert isinstance(step, Ppc64Step)
    root = FsRoot(step.root)
    assert is_ppc64_root(root)
    dt = read_device_tree(root)
    meta = step.meta
    assert dt.crashk_res == tuple(int(x, 16) for x in meta["crashkernel_region"])
    rtas = tuple(int(x, 16) for x in meta["rtas_range"])
    assert dt.rtas is not None and (dt.rtas[0], dt.rtas[0] + dt.rtas[1] - 1) == rtas
    assert dt.lmb_size == 256 << 20
    # boot memory@0 plus the assigned (hot-added) LMBs is the System RAM of iomem
    ram = sorted([*dt.memory_reg, *dt.drmem_ranges()])
    merged: list[tuple[int, int]] = []
    for s, e in ram:
        if merged and merged[-1][1] + 1 == s:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    crash_s, crash_e = dt.crashk_res
    want = [tuple(int(x, 16) for x in r) for r in meta["iomem_system_ram_minus_crashkernel"]]
    got: list[tuple[int, int]] = []
    for s, e in merged:
        if s < crash_s <= e:
            got += [(s, crash_s - 1), (crash_e + 1, e)]
        else:
            got.append((s, e))
    assert got == want
    assert [f"{c.reg}" for c in dt.cpus] == [n.split("@")[1] for n in sorted(c.name for c in dt.cpus)]


def test_x86_root_is_not_ppc64(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    assert not is_ppc64_root(FsRoot(tmp_path))


def test_half_a_crashkernel_is_an_error(tmp_path: Path) -> None:
    chosen = tmp_path / "proc/device-tree/chosen"
    chosen.mkdir(parents=True)
    (chosen / "linux,crashkernel-base").write_bytes((0x20000000).to_bytes(8, "big"))
    with pytest.raises(SnapshotError, match="linux,crashkernel-size: missing"):
        read_device_tree(FsRoot(tmp_path))
    (chosen / "linux,crashkernel-size").write_bytes(b"\0\0")
    with pytest.raises(SnapshotError, match="is 2 bytes, expected 4 or 8"):
        read_device_tree(FsRoot(tmp_path))


def test_truncated_dynamic_memory_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "proc/device-tree/ibm,dynamic-reconfiguration-memory"
    d.mkdir(parents=True)
    (d / "ibm,lmb-size").write_bytes((1 << 28).to_bytes(8, "big"))
    (d / "ibm,dynamic-memory-v2").write_bytes((2).to_bytes(4, "big") + bytes(24))
    with pytest.raises(SnapshotError, match="do not hold the LMB sets"):
        read_device_tree(FsRoot(tmp_path))
