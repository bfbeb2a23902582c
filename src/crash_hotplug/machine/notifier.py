"""Notifier chains (``kernel/notifier.c``, ``include/linux/notifier.h``).

A chain calls its blocks in descending priority (equal priorities in registration order) until
one returns a value with ``NOTIFY_STOP_MASK`` set; ``notifier_to_errno`` turns that into an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

__all__ = [
    "NOTIFY_BAD",
    "NOTIFY_DONE",
    "NOTIFY_OK",
    "NOTIFY_STOP",
    "NOTIFY_STOP_MASK",
    "BlockingNotifierChain",
    "NotifierBlock",
    "notifier_from_errno",
    "notifier_to_errno",
]

NOTIFY_DONE: Final = 0x0000
NOTIFY_OK: Final = 0x0001
NOTIFY_STOP_MASK: Final = 0x8000
NOTIFY_BAD: Final = NOTIFY_STOP_MASK | 0x0002
NOTIFY_STOP: Final = NOTIFY_OK | NOTIFY_STOP_MASK

EBUSY: Final = 16

ArgT = TypeVar("ArgT")


def notifier_from_errno(err: int) -> int:
    """``notifier_from_errno``: encode a negative errno as a stopping notifier value."""
    return NOTIFY_STOP_MASK | (NOTIFY_OK - err) if err else NOTIFY_OK


def notifier_to_errno(ret: int) -> int:
    """``notifier_to_errno``: 0, or the negative errno a stopping notifier encoded."""
    ret &= ~NOTIFY_STOP_MASK
    return NOTIFY_OK - ret if ret > NOTIFY_OK else 0


@dataclass(eq=False)
class NotifierBlock(Generic[ArgT]):
    """``struct notifier_block``: a callback ``(action, arg) -> NOTIFY_*`` and its priority."""

    notifier_call: Callable[[int, ArgT], int]
    priority: int = 0
    name: str = ""


class BlockingNotifierChain(Generic[ArgT]):
    """``struct blocking_notifier_head`` with ``blocking_notifier_chain_register`` and
    ``blocking_notifier_call_chain``."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._blocks: list[NotifierBlock[ArgT]] = []
        #: the blocks' callbacks in call order, remade on every change of the chain (a call walks
        #: the chain as it was when the call began, as the kernel's walk does)
        self._calls: tuple[Callable[[int, ArgT], int], ...] = ()

    def register(self, nb: NotifierBlock[ArgT]) -> None:
        """``notifier_chain_register``: insert after every block of equal or higher priority."""
        i = 0
        while i < len(self._blocks) and self._blocks[i].priority >= nb.priority:
            i += 1
        self._blocks.insert(i, nb)
        self._calls = tuple(b.notifier_call for b in self._blocks)

    def unregister(self, nb: NotifierBlock[ArgT]) -> None:
        self._blocks.remove(nb)
        self._calls = tuple(b.notifier_call for b in self._blocks)

    @property
    def blocks(self) -> tuple[NotifierBlock[ArgT], ...]:
        return tuple(self._blocks)

    def call_chain(self, action: int, arg: ArgT) -> int:
        """``notifier_call_chain``: the last value returned; stops early on ``NOTIFY_STOP_MASK``."""
        ret = NOTIFY_DONE
        for call in self._calls:
            ret = call(action, arg)
            if ret & NOTIFY_STOP_MASK:
                break
        return ret
