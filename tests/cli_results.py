"""What every CLI test of bad input checks: exit 2 and one line on stderr naming what was wrong."""

from __future__ import annotations

from click.testing import Result

__all__ = ["one_line_exit_2"]


def one_line_exit_2(res: Result, *needles: str) -> str:
    """Assert exit 2 with exactly one non-blank stderr line containing every needle; returns it."""
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
