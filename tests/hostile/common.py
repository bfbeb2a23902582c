"""Running the command line on hostile input: each case in its own process with a timeout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import VECTORS

#: a case that runs longer than this is a hang
TIMEOUT = 60


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


def cli(*args: str | Path, timeout: float = TIMEOUT) -> Outcome:
    """``crash-hotplug ARGS`` in a fresh interpreter; a hang fails the test instead of stalling it."""
    p = subprocess.run(
        [sys.executable, "-m", "crash_hotplug", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    return Outcome(p.returncode, p.stdout, p.stderr)


def assert_one_line_error(o: Outcome, *needles: str) -> str:
    """Exit 2 with exactly one line on stderr naming every needle, and no traceback."""
    assert o.code == 2, (o.code, o.stdout, o.stderr)
    assert "Traceback" not in o.stderr, o.stderr
    lines = o.error_lines
    assert len(lines) == 1, o.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def copy_root(dst: Path, step: str = "6.12.43/base/S0") -> Path:
    """A writable copy of a vector step's root (the vectors stay read-only in ../shared)."""
    assert VECTORS is not None
    root = dst / "root"
    shutil.copytree(VECTORS / step / "root", root)
    return root
