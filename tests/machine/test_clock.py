"""The model's clock: timers fire in time order, ties in the order they were set, cancelled ones never."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crash_hotplug.machine.clock import Clock, Timer

#: (delay from now, cancel it, delays of the timers its callback sets)
_TIMER = st.tuples(st.integers(0, 20), st.booleans(), st.lists(st.integers(0, 20), max_size=3))


@given(st.lists(_TIMER, max_size=40), st.lists(st.integers(0, 30), min_size=1, max_size=6))
def test_timers_fire_in_time_then_set_order(plan: list[tuple[int, bool, list[int]]], stops: list[int]) -> None:
    """Timers set up front in time order, out of order, and from callbacks while the clock runs all
    fire by (time, order set), each at its own time, across several run_until stops."""
    clock = Clock()
    fired: list[tuple[float, int]] = []
    timers: list[Timer] = []

    def arm(delay: float, children: list[int]) -> Timer:
        def fire() -> None:
            fired.append((clock.now, t.seq))
            for d in children:
                arm(d, [])
        t = clock.call_at(clock.now + delay, fire)
        timers.append(t)
        return t

    # in time order first (the way a plan is set), then the same delays again out of order
    for delay, _cancel, children in sorted(plan, key=lambda p: p[0]) + plan:
        arm(delay, children)
    for t, (_delay, cancel, _children) in zip(timers, [*sorted(plan, key=lambda p: p[0]), *plan], strict=False):
        if cancel:
            Clock.cancel(t)
    for stop in sorted(stops):
        clock.run_until(stop)
        assert clock.now == stop
        assert all(w <= stop for w, _ in fired)
    clock.run_until_idle()
    assert fired == sorted((t.when, t.seq) for t in timers if not t.cancelled), "by time, then by the order set"
    assert clock.pending == 0 and clock.next_time() is None
