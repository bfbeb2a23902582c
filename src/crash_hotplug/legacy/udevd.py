"""udevd for hotplug uevents: evaluate the installed rules and run what they say.

The rules see ``ATTRS{crash_hotplug}`` as sysfs shows it at that moment
(``crash_check_hotplug_support``: 0 while the kexec lock is busy, absent on a kernel without crash
hotplug). RUN programs that reload kdump go to :class:`~crash_hotplug.legacy.kdumpctl.KdumpService`,
directly (``kdumpctl reload``) or through the throttler.

Each event costs ``udev_event`` seconds of the clock; events are handled in arrival order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

from crash_hotplug.legacy.kdumpctl import KdumpService, Throttler
from crash_hotplug.legacy.udev import HotplugEvent, RuleFile, evaluate, parse_rules
from crash_hotplug.machine.uevent import Uevent

__all__ = ["RULES_ALWAYS_RELOAD", "RULES_CRASH_HOTPLUG_AWARE", "UdevDaemon", "bundled_rules"]

RULES_CRASH_HOTPLUG_AWARE = "98-kdump-reload.rules"
RULES_ALWAYS_RELOAD = "98-kdump-reload-always.rules"


def bundled_rules(name: str) -> list[RuleFile]:
    """One of the rule files shipped with the package (``data/udev``)."""
    text = (resources.files("crash_hotplug") / "data" / "udev" / name).read_text()
    return [parse_rules(text, name)]


@dataclass
class UdevDaemon:
    """Listens to a machine's uevents and runs the rules for each."""

    service: KdumpService
    rules: list[RuleFile]
    #: what ``cpu/crash_hotplug`` and ``memory/crash_hotplug`` read, or None when absent
    crash_hotplug_attr: Callable[[], int | None]
    throttle: bool = True
    events: int = 0
    reload_requests: int = 0
    throttler: Throttler = field(init=False)
    _busy_until: float = 0.0

    def __post_init__(self) -> None:
        self.throttler = Throttler(self.service, lambda: self._busy_until)

    def attach(self) -> UdevDaemon:
        self.service.kexec.machine.uevents.listen(self.on_uevent)
        return self

    def on_uevent(self, ev: Uevent) -> None:
        clock = self.service.kexec.machine.clock
        self.events += 1
        start = max(clock.now, self._busy_until)
        self._busy_until = start + clock.cost("udev_event")
        delay = self._busy_until - clock.now
        clock.call_later(delay, lambda: self._handle(ev), "udev worker")

    def _handle(self, ev: Uevent) -> None:
        flag = self.crash_hotplug_attr()
        attrs = {} if flag is None else {"crash_hotplug": str(flag)}
        res = evaluate(self.rules, HotplugEvent(ev.subsystem, ev.action, ev.kernel, attrs))
        for _, cmd in res.runs:
            if "kdump-udev-throttler" in cmd:
                self.reload_requests += 1
                if self.throttle:
                    self.throttler.run()
                else:
                    self.service.reload()
            elif "kdumpctl" in cmd and "reload" in cmd:
                self.reload_requests += 1
                self.service.reload()
