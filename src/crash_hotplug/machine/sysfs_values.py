"""Single values as the kernel prints them in sysfs and procfs, parsed strictly.

A sysfs ``show`` callback prints one value and a newline with a fixed ``vsprintf`` format
(``lib/vsprintf.c``): ``%llx`` for ``crash_notes`` (lowercase hex, no ``0x``, no padding), ``%pa``
for the VMCOREINFO address (``0x`` and 16 digits on 64-bit), ``%u``/``%zu``/``%d`` for sizes and
counts, ``%d`` of a bool-like value for flags (``0`` or ``1``). Anything else (``0x1``, ``1\\0``,
``+1``, ``1_000``, full-width digits such as ``６``, surrounding blanks, ``-1`` for a size) is
not something a kernel wrote, so it is a :class:`ValueError` naming what was found, never a
guess. Python's ``int()`` accepts most of those, which is why these exist.

A single trailing newline is accepted and not required (hand-made fixtures omit it).
"""

from __future__ import annotations

import re

__all__ = ["parse_decimal", "parse_flag", "parse_hex", "parse_pa", "shown"]

_HEX = re.compile(r"[0-9a-f]{1,16}")
_PA = re.compile(r"0x([0-9a-f]{16})")
_DEC = re.compile(r"0|[1-9][0-9]{0,19}")


def shown(text: str) -> str:
    """``text`` without the one newline a ``show`` callback ends with; nothing else is stripped."""
    return text[:-1] if text.endswith("\n") else text


def _found(text: str) -> str:
    return repr(text[:40])


def parse_hex(text: str, what: str = "value") -> int:
    """A ``%llx`` value: 1 to 16 lowercase hex digits, no ``0x``."""
    body = shown(text)
    if not _HEX.fullmatch(body):
        raise ValueError(f"{what}: expected lowercase hex digits without 0x as the kernel prints them, "
                         f"found {_found(text)}")
    return int(body, 16)


def parse_pa(text: str, what: str = "address") -> int:
    """A ``%pa`` physical address on a 64-bit kernel: ``0x`` and 16 lowercase hex digits."""
    m = _PA.fullmatch(text)
    if not m:
        raise ValueError(f"{what}: expected 0x and 16 lowercase hex digits (%pa), found {_found(text)}")
    return int(m.group(1), 16)


def parse_decimal(text: str, what: str = "value", *, maximum: int = (1 << 64) - 1) -> int:
    """An unsigned ``%u``/``%lu``/``%zu`` value: ASCII digits, no sign, no leading zeros, at most ``maximum``."""
    body = shown(text)
    if not _DEC.fullmatch(body):
        raise ValueError(f"{what}: expected an unsigned decimal number as the kernel prints it, found {_found(text)}")
    n = int(body, 10)
    if n > maximum:
        raise ValueError(f"{what}: {n} is above the largest possible value {maximum}")
    return n


def parse_flag(text: str, what: str = "flag") -> bool:
    """A ``0``/``1`` flag (``kexec_crash_loaded``, ``crash_hotplug``): exactly one of those digits."""
    body = shown(text)
    if body not in ("0", "1"):
        raise ValueError(f"{what}: expected 0 or 1, found {_found(text)}")
    return body == "1"
