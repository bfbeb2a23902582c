"""Virtual time for the model: a clock with timers, and the cost of each step.

Outside a simulation every cost is zero and work scheduled with no delay runs at once, so the
model behaves as a plain sequence of calls. A simulator sets a :class:`StepCosts` that prices each
step (loading a kdump image, onlining a block, rebuilding a header) and drives the clock; work that
takes time (a reload) then holds its locks and leaves its windows open for that long.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Clock", "StepCosts", "Timer", "ZeroCosts"]


class StepCosts(Protocol):
    """Seconds a step takes; ``units`` scales per-unit costs (program headers, pages, bytes)."""

    def cost(self, what: str, units: float = 1.0) -> float: ...


class ZeroCosts:
    """Every step is instantaneous."""

    def cost(self, what: str, units: float = 1.0) -> float:
        return 0.0


@dataclass(order=True, slots=True)
class Timer:
    """A timer set on a :class:`Clock` (``struct timer_list``): ``fn`` runs at ``when`` unless cancelled."""

    when: float
    seq: int
    fn: Callable[[], None] = field(compare=False)
    label: str = field(default="", compare=False)
    cancelled: bool = field(default=False, compare=False)


@dataclass
class Clock:
    """Seconds since boot, with timers that fire in time order (ties in the order they were set)."""

    now: float = 0.0
    costs: StepCosts = field(default_factory=ZeroCosts)
    #: called after every timer fires (a simulator observes the state there)
    after_fire: list[Callable[[], None]] = field(default_factory=list)
    #: (when, seq, timer): ordered by time, then by the order set, compared at C speed
    _queue: list[tuple[float, int, Timer]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def cost(self, what: str, units: float = 1.0) -> float:
        return self.costs.cost(what, units)

    def call_at(self, when: float, fn: Callable[[], None], label: str = "") -> Timer:
        if when < self.now:
            when = self.now
        seq = next(self._seq)
        t = Timer(when, seq, fn, label)
        heapq.heappush(self._queue, (when, seq, t))
        return t

    def call_later(self, delay: float, fn: Callable[[], None], label: str = "") -> Timer | None:
        """Run ``fn`` after ``delay`` seconds; with no delay and no clock driver, run it now."""
        if delay <= 0:
            fn()
            return None
        return self.call_at(self.now + delay, fn, label)

    @staticmethod
    def cancel(timer: Timer | None) -> None:
        if timer is not None:
            timer.cancelled = True

    @property
    def pending(self) -> int:
        return sum(1 for _w, _s, t in self._queue if not t.cancelled)

    def next_time(self) -> float | None:
        while self._queue and self._queue[0][2].cancelled:
            heapq.heappop(self._queue)
        return self._queue[0][0] if self._queue else None

    def run_until(self, when: float) -> None:
        """Fire every timer due at or before ``when``, advancing ``now`` to each, then to ``when``."""
        queue = self._queue
        pop = heapq.heappop
        while queue:
            due, _seq, t = queue[0]
            if t.cancelled:
                pop(queue)
                continue
            if due > when:
                break
            pop(queue)
            self.now = due
            t.fn()
            for fn in self.after_fire:
                fn()
        if self.now < when:
            self.now = when

    def run_until_idle(self, limit: float = float("inf")) -> None:
        """Fire timers until none is left (or the next is past ``limit``)."""
        while (nxt := self.next_time()) is not None and nxt <= limit:
            self.run_until(nxt)
