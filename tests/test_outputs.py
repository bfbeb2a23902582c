"""Every command checks its outputs before it works: one line naming the output, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from crash_hotplug.cli import cli, example_root
from crash_hotplug.cli.common import OutputError, check_output_dir, check_output_file
from tests.cli_results import one_line_exit_2

DEV_FULL = Path("/dev/full")


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_check_output_file(tmp_path: Path) -> None:
    check_output_file(tmp_path / "new.bin")
    with pytest.raises(OutputError, match="does not exist"):
        check_output_file(tmp_path / "no" / "such" / "x.bin")
    with pytest.raises(OutputError, match="is a directory"):
        check_output_file(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputError, match="not a directory"):
        check_output_file(tmp_path / "f" / "x.bin")
    if DEV_FULL.exists():
        with pytest.raises(OutputError, match="no space left"):
            check_output_file(DEV_FULL)


def test_check_output_dir(tmp_path: Path) -> None:
    check_output_dir(tmp_path / "new")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    check_output_dir(tmp_path / "full")
    with pytest.raises(OutputError, match="not empty"):
        check_output_dir(tmp_path / "full", must_be_empty=True)
    with pytest.raises(OutputError, match="not a directory"):
        check_output_dir(tmp_path / "full" / "x")
    with pytest.raises(OutputError, match="does not exist"):
        check_output_dir(tmp_path / "a" / "b")


@pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full")
def test_build_to_dev_full() -> None:
    one_line_exit_2(run("elfcorehdr", "build", "--root", str(example_root()), "-o", "/dev/full"),
                    "/dev/full", "no space left")


def test_outputs_in_missing_directories(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    for args in (
        ("elfcorehdr", "build", "--root", str(example_root()), "-o", str(missing / "h.bin")),
        ("snapshot", "--root", str(example_root()), "-o", str(missing / "snap")),
        ("scenario", "run", "-o", str(missing / "run")),
        ("simulate", "cpu", "--add", "1", "--remove", "0", "--panics", "1", "--plot", str(missing / "p.png")),
        ("simulate", "convert-udev", str(tmp_path), "-o", str(missing / "log.jsonl")),
    ):
        one_line_exit_2(run(*args), str(missing), "does not exist")
    assert not missing.exists()


def test_snapshot_into_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    one_line_exit_2(run("snapshot", "--root", str(example_root()), "-o", str(tmp_path)), "not empty")


def test_json_on_build_and_snapshot(tmp_path: Path) -> None:
    import json

    res = run("elfcorehdr", "build", "--root", str(example_root()), "-o", str(tmp_path / "h.bin"), "--json")
    assert res.exit_code == 0
    d = json.loads(res.output)
    assert d["bytes"] == (tmp_path / "h.bin").stat().st_size and d["memory_ranges"] > 0
    res = run("snapshot", "--root", str(example_root()), "-o", str(tmp_path / "s"), "--json")
    d = json.loads(res.output)
    assert res.exit_code == (1 if d["cannot_see"] else 0) and d["files_written"] > 10
