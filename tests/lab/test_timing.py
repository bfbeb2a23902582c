"""Timing helpers on the real kernel's log."""

from __future__ import annotations

from pathlib import Path

from crash_hotplug.lab.timing import hotplug_update_pairs, stats


def test_update_pairs_from_the_6_12_43_log(vectors: Path) -> None:
    dmesg = (vectors / "6.12.43" / "base" / "S5" / "root" / "var/log/dmesg").read_text()
    pairs = hotplug_update_pairs(dmesg)
    # dimm1 online (8 blocks), dimm1 offline on removal (8), dimm2 online (16); the three CPU
    # events (hp_action 1/2) print no "updated elfcorehdr" and pair with nothing
    assert [a for a, _ in pairs] == [3] * 8 + [4] * 8 + [3] * 16
    assert dmesg.count("crash hp: hp_action") == len(pairs) + 3
    assert all(0 < s < 1 for _, s in pairs)


def test_no_pairs_on_6_1(vectors: Path) -> None:
    dmesg = (vectors / "6.1" / "base" / "S5" / "root" / "var/log/dmesg").read_text()
    assert hotplug_update_pairs(dmesg) == []


def test_stats() -> None:
    assert stats([]) == {"n": 0}
    assert stats([3.0, 1.0, 2.0]) == {"n": 3, "min": 1.0, "median": 2.0, "max": 3.0}
