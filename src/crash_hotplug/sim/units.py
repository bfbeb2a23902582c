"""How the simulator prints durations and counts: one format for the table and the plot."""

from __future__ import annotations

__all__ = ["UNITS", "fmt_duration", "fmt_num", "unit_for"]

#: (name, seconds) units a column of durations can be shown in
UNITS = (("min", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6))


def unit_for(values: list[float | None]) -> tuple[str, float]:
    """The largest unit in which the largest value is at least 1 (minutes only from 10 min on;
    seconds for a column of zeros)."""
    big = max((v for v in values if v), default=0.0)
    if big == 0:
        return "s", 1.0
    for name, scale in UNITS:
        if name == "min" and big < 600:
            continue
        if big >= scale:
            return name, scale
    return UNITS[-1]


def fmt_num(x: float) -> str:
    """Three significant figures at most, never an exponent; below 0.01 ``<0.01``."""
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    if abs(x) >= 0.01:
        return f"{x:.3f}".rstrip("0")
    return "<0.01"


def fmt_duration(v: float | None, unit: tuple[str, float] | None = None) -> str:
    """A duration: in ``unit`` without its name (a table column names it), or in the best unit
    for it with the name; ``never`` for None."""
    if v is None:
        return "never"
    if unit is not None:
        return fmt_num(v / unit[1])
    name, scale = unit_for([v])
    return f"{fmt_num(v / scale)} {name}"
