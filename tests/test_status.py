"""status as a verdict a script can use, on the real kernels' steps: exit 0 safe, 1 at risk, 2
unusable input; the removed-DIMM risk exactly where the real header no longer matched iomem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from crash_hotplug.cli import cli
from tests.conftest import VECTORS, needs_vectors

pytestmark = needs_vectors


def status(root: Path) -> tuple[int, dict[str, object], str]:
    r = CliRunner().invoke(cli, ["status", "--root", str(root), "--json"], catch_exceptions=False)
    text = CliRunner().invoke(cli, ["status", "--root", str(root)], catch_exceptions=False)
    assert text.exit_code == r.exit_code
    return r.exit_code, json.loads(r.output), text.output


def steps(kernel: str) -> list[Path]:
    assert VECTORS is not None
    return sorted((VECTORS / kernel / "base").glob("S*"))


@pytest.mark.parametrize("kernel", ["6.12.43", "6.12"])
def test_crash_hotplug_kernels_step_by_step(kernel: str) -> None:
    """Loaded with kexec -s, no reload rule: safe, except right after a DIMM removal, where x86 keeps
    the removed range in the header (step.json: header no longer matches iomem)."""
    for step in steps(kernel):
        info = json.loads((step / "step.json").read_text())
        code, st, text = status(step / "root")
        codes = [r["code"] for r in st["risks"]]  # type: ignore[attr-defined]
        stale = info["header_matches_iomem_system_ram"] is False
        assert ("removed-dimm-in-header" in codes) is stale, (step, codes)
        assert code == (1 if stale else 0), (step, text)
        if stale:
            assert "6.12.43 and 6.12.117" in text and "-- fix:" in text


def test_kernel_without_crash_hotplug_is_at_risk() -> None:
    code, st, text = status(steps("6.1")[0] / "root")
    codes = {r["code"] for r in st["risks"]}  # type: ignore[attr-defined]
    assert code == 1 and codes == {"stale-cpu", "stale-memory"}
    assert sum(ln.startswith("risk: ") for ln in text.splitlines()) == 4 and "CONFIG_CRASH_HOTPLUG" in text


def test_not_loaded(tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "r"
    shutil.copytree(steps("6.12.43")[0] / "root", root)
    (root / "sys/kernel/kexec_crash_loaded").write_text("0\n")
    code, st, _ = status(root)
    assert code == 1 and [r["code"] for r in st["risks"]] == ["not-loaded"]  # type: ignore[attr-defined]


def test_unusable_input_exits_2(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["status", "--root", str(tmp_path / "nope")], catch_exceptions=False)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1


def test_buffer_too_small_for_hot_addable_memory(tmp_path: Path) -> None:
    """A 16 TiB ACPI SRAT hotplug range at 128 MiB blocks can add far more ranges than the 6.12
    segment has room for: the kernel would refuse the update and keep a stale header."""
    import shutil

    root = tmp_path / "r"
    shutil.copytree(steps("6.12.43")[0] / "root", root)
    log = (root / "var/log/dmesg").read_text()
    log = log.replace("[mem 0x100000000-0x67fffffff] hotplug", "[mem 0x100000000-0x100fffffffff] hotplug")
    (root / "var/log/dmesg").write_text(log)
    code, st, text = status(root)
    codes = [r["code"] for r in st["risks"]]  # type: ignore[attr-defined]
    assert code == 1 and codes == ["buffer-too-small"], text
    assert st["hot_addable_ranges"] == (0x100fffffffff - 0x100000000 + 1) // (128 << 20)
    code, st, _ = status(steps("6.12.43")[0] / "root")
    assert st["hot_addable_ranges"] == (0x67fffffff - 0x100000000 + 1) // (128 << 20) and code == 0
