"""CPU lists as sysfs prints them (``cpumap_print_list_to_buf``, the ``%*pbl`` format): ``0-3,8,10-11``."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["cpulist_format", "cpulist_parse"]


def cpulist_parse(text: str) -> tuple[int, ...]:
    """The CPUs in a cpulist string, ascending; an empty string (or a lone newline) is no CPU.

    Raises ``ValueError`` naming the bad token.
    """
    out: set[int] = set()
    body = text.strip()
    if not body:
        return ()
    for token in body.split(","):
        lo, sep, hi = token.partition("-")
        try:
            a = int(lo, 10)
            b = int(hi, 10) if sep else a
        except ValueError:
            raise ValueError(f"bad cpulist token {token!r}") from None
        if a < 0 or b < a:
            raise ValueError(f"bad cpulist range {token!r}")
        out.update(range(a, b + 1))
    return tuple(sorted(out))


def cpulist_format(cpus: Iterable[int]) -> str:
    """The cpulist string of ``cpus`` (no trailing newline)."""
    s = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        parts.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(parts)
