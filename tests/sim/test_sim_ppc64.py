"""The storm simulator on a ppc64le pseries guest (the 6.12 capture's S0 snapshot, read in place):
powerpc cuts removed memory out of the header at once, x86 leaves it described."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from crash_hotplug.cli import cli
from crash_hotplug.sim.engine import SimError, simulate
from crash_hotplug.sim.metrics import measure
from crash_hotplug.sim.plans import GIB, MIB, Plan, resize_plan
from crash_hotplug.sim.ppc64 import PPC64_APPROACHES, Ppc64Guest
from tests.conftest import VECTORS_PPC64, needs_ppc64_vectors

pytestmark = needs_ppc64_vectors


def _s0() -> Path:
    assert VECTORS_PPC64 is not None
    return VECTORS_PPC64 / "6.12" / "base" / "S0"


def _guest() -> Ppc64Guest:
    return Ppc64Guest(_s0() / "root", (_s0() / "crash-fdt.dtb").read_bytes())


def _shrink(block: int) -> Plan:
    return resize_plan(6 * GIB, 2 * GIB, dimm=1 * GIB, block=block, cpus=2, possible=8)


def test_upstream_after_removal_is_true_on_ppc64_and_stale_on_x86() -> None:
    """A DIMM removal: on powerpc the kernel cuts each LMB out at its MEM_OFFLINE, so the header is
    true when the storm ends; on x86 the System RAM resource is still there at MEM_OFFLINE and no
    event follows its release, so the header keeps describing the removed memory."""
    ppc = simulate("upstream", _shrink(256 * MIB), guest=_guest())
    x86 = simulate("upstream", _shrink(128 * MIB))
    assert ppc.regenerations and x86.regenerations
    assert ppc.states[-1][1:] == (True, True)
    assert x86.states[-1][1:] == (True, False)
    mp, mx = measure(ppc, horizon=ppc.end + 1, panics=500), measure(x86, horizon=x86.end + 1, panics=500)
    assert mp.settle_s is not None and mp.settle_s < 0.1
    assert mx.settle_s is None
    assert mp.stale_s < 0.05 * mx.stale_s


def test_every_powerpc_approach_ends_true_after_a_grow() -> None:
    plan = resize_plan(2 * GIB, 4 * GIB, dimm=1 * GIB, block=256 * MIB, cpus=2, possible=8)
    for a in PPC64_APPROACHES:
        tl = simulate(a, plan, guest=_guest())
        assert tl.states[-1][1:] == (True, True), a
        if a == "upstream":
            assert len(tl.regenerations) == 8 and not tl.reloads
        else:
            assert tl.reloads


def test_approaches_powerpc_lacks_are_refused() -> None:
    plan = resize_plan(2 * GIB, 4 * GIB, dimm=1 * GIB, block=256 * MIB)
    with pytest.raises(SimError, match="not modelled on ppc64le"):
        simulate("rfc", plan, guest=_guest())
    with pytest.raises(SimError, match="boots with 2 GiB"):
        simulate("upstream", resize_plan(4 * GIB, 8 * GIB, dimm=1 * GIB, block=256 * MIB), guest=_guest())


def test_cli_table_shows_upstream_settled_after_removal_on_ppc64() -> None:
    r = CliRunner().invoke(cli, ["simulate", "resize", "--arch", "ppc64le", "--root", str(_s0() / "root"),
                                 "--fdt", str(_s0() / "crash-fdt.dtb"), "--from", "6G", "--to", "2G", "--dimm", "1G",
                                 "--panics", "500", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["arch"] == "ppc64le" and "no ppc64le step timings" in data["costs_note"]
    assert set(data["approaches"]) == set(PPC64_APPROACHES)
    assert data["approaches"]["upstream"]["settle_s"] is not None
    r = CliRunner().invoke(cli, ["simulate", "resize", "--arch", "ppc64le", "--root", str(_s0() / "root"),
                                 "--fdt", str(_s0() / "crash-fdt.dtb"), "--to", "4G", "--approach", "ours"])
    assert r.exit_code == 2 and "not modelled on ppc64le" in r.output
