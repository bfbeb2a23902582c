"""CPU lists as sysfs prints them (``cpumap_print_list_to_buf``, the ``%*pbl`` format): ``0-3,8,10-11``."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["NR_CPUS_MAX", "cpulist_format", "cpulist_parse"]


#: the largest ``CONFIG_NR_CPUS`` any architecture allows (x86 ``MAXSMP``, powerpc, s390: 8192)
NR_CPUS_MAX = 8192

_NUM = re.compile(r"0|[1-9][0-9]{0,9}")


def cpulist_parse(text: str, nr_cpu_ids: int = NR_CPUS_MAX) -> tuple[int, ...]:
    """The CPUs in a cpulist string, ascending; an empty string (or a lone newline) is no CPU.

    As ``bitmap_parselist`` with the bitmap's size: every CPU must be below ``nr_cpu_ids`` (the
    kernel's ``kernel_max + 1``), checked before a range is expanded, so ``0-99999999`` is an error
    and not a hundred-million-element set. Ranges must ascend without overlapping, as
    ``%*pbl`` prints them. Raises ``ValueError`` naming the bad token.
    """
    body = text[:-1] if text.endswith("\n") else text
    if not body:
        return ()
    out: list[int] = []
    last = -1
    for token in body.split(","):
        lo, sep, hi = token.partition("-")
        if not _NUM.fullmatch(lo) or (sep and not _NUM.fullmatch(hi)):
            raise ValueError(f"bad cpulist token {token[:40]!r}")
        a = int(lo, 10)
        b = int(hi, 10) if sep else a
        if b < a:
            raise ValueError(f"bad cpulist range {token!r}")
        if b >= nr_cpu_ids:
            raise ValueError(f"CPU {b} in {token!r} is not below nr_cpu_ids {nr_cpu_ids} (kernel_max + 1)")
        if a <= last:
            raise ValueError(f"cpulist range {token!r} does not follow the one before it in ascending order")
        out.extend(range(a, b + 1))
        last = b
    return tuple(out)


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
