"""Known, absent, unknown: how a value read from a root is reported.

A file that does not exist on a live host is *absent* (the kernel does not provide it); a file a
sosreport did not collect, or a snapshot could not read, is *unknown*. Code that reads a root
answers with the text, :data:`ABSENT`, or None for unknown, and never turns unknown into "no".
"""

from __future__ import annotations

__all__ = ["ABSENT", "Absent", "Lookup"]


class Absent:
    """A file or attribute that does not exist (as opposed to one whose value is unknown)."""

    _instance: Absent | None = None

    def __new__(cls) -> Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = Absent()
#: what a lookup answers: the text, :data:`ABSENT`, or None when it cannot be known
Lookup = str | Absent | None
