"""udevd for hotplug uevents: evaluate the installed rules and run what they say, as a host runs it.

The rules see ``ATTRS{crash_hotplug}`` as sysfs shows it at that moment
(``crash_check_hotplug_support``: 0 while the kexec lock is busy, absent on a kernel without crash
hotplug). Events are handled one at a time in arrival order: each costs ``udev_event`` seconds of
the worker (the rules and the RUN line's process), plus what the programs of its RUN line cost,
and ``udevadm settle`` sees the queue empty once the last one is done. A program that runs for long
(``kdumpctl reload`` straight from a rule) does not hold the queue: udevd runs events of other
devices in other workers meanwhile.

RUN lines run through :mod:`crash_hotplug.legacy.shell` (``/bin/sh -c`` lists as the shell runs
them) with the programs the kdump rules call:

``systemctl is-active UNIT...``
    status 0 when every unit is active, else 3 (systemd's "inactive", also for a unit that does not
    exist); ``kdump.service`` is :attr:`KdumpService.active <crash_hotplug.legacy.kdumpctl.KdumpService.active>`.
    Costs ``systemctl_is_active``.
``systemd-run [--quiet] [--no-block] ... COMMAND``
    asks systemd to start COMMAND as a transient service and returns: with ``--no-block`` once the
    start job is queued, without it once the service has started; either way COMMAND runs as a
    process of its own, outside the udev worker, from the end of this step. Costs ``systemd_run``.
``kdumpctl reload``
    :meth:`KdumpService.reload <crash_hotplug.legacy.kdumpctl.KdumpService.reload>`.
``kdump-udev-throttler``
    :class:`~crash_hotplug.legacy.throttler.Throttler`, in a transient service only: run by the
    worker itself, its ``udevadm settle`` would wait on its own event, which is not modelled.
``test -f|-e PATH``, ``[ -f PATH ]``, ``cat PATH``, ``grep PATTERN``
    over the files the host's ``read_file`` knows (by default none: a rule that reads a file the
    model does not hold is an error, never a guessed answer).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

from crash_hotplug.legacy.kdumpctl import KdumpService
from crash_hotplug.legacy.shell import Program, ShellError, grep, parse_command, run_script
from crash_hotplug.legacy.throttler import Throttler
from crash_hotplug.legacy.udev import HotplugEvent, Key, RuleFile, evaluate, parse_rules
from crash_hotplug.machine.clock import Clock
from crash_hotplug.machine.uevent import Uevent

__all__ = [
    "KDUMP_UTILS_RULES",
    "PPC64_ARCHES",
    "RULES_ALWAYS_RELOAD",
    "RULES_CRASH_HOTPLUG_AWARE",
    "UdevDaemon",
    "bundled_rules",
    "bundled_rules_name",
    "bundled_rules_text",
    "without_fadump",
]

#: kdump-utils' ``98-kexec.rules`` as it ships it (origin: ``data/udev/README.md``); its ppc64 variant
#: is the same name with ``.ppc64``
KDUMP_UTILS_RULES = "kdump-utils-98-kexec.rules"
#: the crash_hotplug-aware rule with the throttler: kdump-utils' own
RULES_CRASH_HOTPLUG_AWARE = KDUMP_UTILS_RULES
RULES_ALWAYS_RELOAD = "98-kdump-reload-always.rules"

#: systemd-run options taking no value / a value, that leave COMMAND a transient service's process
_RUN_FLAGS = frozenset({"--quiet", "-q", "--no-block", "--collect", "-G", "--no-ask-password"})
_RUN_VALUES = frozenset({"--unit", "-u", "--description", "--property", "-p", "--slice", "--uid", "--gid",
                         "--nice", "--setenv", "-E", "--working-directory"})


#: architectures on which kdump-utils installs ``98-kexec.rules.ppc64`` as its ``98-kexec.rules``
PPC64_ARCHES = ("ppc64", "ppc64le")


def bundled_rules_text(name: str) -> str:
    """The text of a rule file shipped with the package (``data/udev``), as shipped."""
    return (resources.files("crash_hotplug") / "data" / "udev" / name).read_text()


def bundled_rules_name(name: str, arch: str = "x86_64") -> str:
    """The file installed for ``name`` on ``arch``: on ppc64/ppc64le the ``.ppc64`` variant where one
    is shipped (kdump-utils' Makefile installs ``98-kexec.rules.ppc64`` as ``98-kexec.rules`` there)."""
    if arch in PPC64_ARCHES and (resources.files("crash_hotplug") / "data" / "udev" / f"{name}.ppc64").is_file():
        return f"{name}.ppc64"
    return name


def bundled_rules(name: str, arch: str = "x86_64") -> list[RuleFile]:
    """One of the rule files shipped with the package (``data/udev``), as installed on ``arch``."""
    chosen = bundled_rules_name(name, arch)
    return [parse_rules(bundled_rules_text(chosen), chosen)]


#: match keys whose outcome the event's subsystem, action and crash_hotplug decide
_BY_EVENT = frozenset({"ACTION", "SUBSYSTEM", "SUBSYSTEMS"})


def _event_key(k: Key) -> bool:
    """Whether a key of a rule looks at nothing but the event's subsystem and action and the
    ``crash_hotplug`` attribute (so the rules' RUN list can be kept per such triple)."""
    if not k.is_match:  # a RUN with udev's substitutions (%k, $devpath) would differ per device
        return k.name in ("GOTO", "LABEL") or (k.name == "RUN" and "%" not in k.value and "$" not in k.value)
    return k.name in _BY_EVENT or (k.name in ("ATTR", "ATTRS") and k.attr == "crash_hotplug")


def _no_file(path: str) -> str | None:
    raise ShellError(f"{path}: a file the model of this host does not hold")


def without_fadump(path: str) -> str | None:
    """The files of a powerpc kernel without firmware-assisted dump, as kdump-utils' ppc64 rule reads
    them: ``/sys/kernel/fadump`` does not exist (``fadump_init_files`` never ran: the model has no
    fadump, and the ppc64le vectors' Debian 6.12 kernel is built without ``CONFIG_FA_DUMP``). Any
    other path is not held."""
    if path.startswith("/sys/kernel/fadump/"):
        return None
    return _no_file(path)


@dataclass
class UdevDaemon:
    """Listens to a machine's uevents and runs the rules for each."""

    service: KdumpService
    rules: list[RuleFile]
    #: what ``cpu/crash_hotplug`` and ``memory/crash_hotplug`` read, or None when absent
    crash_hotplug_attr: Callable[[], int | None]
    #: False: the throttler's instances reload at once (no lock, no settle), for comparison
    throttle: bool = True
    #: a file's text, or None when it does not exist (``test``, ``cat`` in RUN lines)
    read_file: Callable[[str], str | None] = _no_file
    events: int = 0
    #: reloads asked for: a ``kdumpctl reload`` or a throttler instance started
    reload_requests: int = 0
    #: ``systemctl is-active`` checks that found a unit inactive (kdump-utils' rule then exits 0)
    inactive: int = 0
    #: transient services ``systemd-run`` started
    transient_units: int = 0
    throttler: Throttler = field(init=False)
    _busy_until: float = 0.0
    _queue: deque[Uevent] = field(default_factory=deque)
    #: seconds the RUN line of the event in hand has taken so far
    _elapsed: float = 0.0
    _worker: Mapping[str, Program] = field(init=False)
    _units: Mapping[str, Program] = field(init=False)
    #: (subsystem, action, crash_hotplug) -> the RUN list, when the rules look at nothing else
    _runs: dict[tuple[str, str, int | None], tuple[tuple[str, str], ...]] | None = field(init=False)
    #: a systemd-run command line -> the program it starts and that program's argv
    _transient: dict[tuple[str, ...], tuple[Program, tuple[str, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.throttler = Throttler(self.service, self.queue_empty_at)
        by_event = all(_event_key(k) for rf in self.rules for r in rf.rules for k in r.keys)
        self._runs = {} if by_event else None
        self._worker = {
            "systemctl": self._systemctl, "systemd-run": self._systemd_run, "kdumpctl": self._kdumpctl,
            "kdump-udev-throttler": self._throttler_in_worker, "test": self._test, "[": self._test,
            "cat": self._cat, "grep": grep,
        }
        self._units = {"kdumpctl": self._kdumpctl_unit, "kdump-udev-throttler": self._throttler}

    def attach(self) -> UdevDaemon:
        self.service.kexec.machine.uevents.listen(self.on_uevent)
        return self

    @property
    def _clock(self) -> Clock:
        return self.service.kexec.machine.clock

    def queue_empty_at(self) -> float | None:
        """None when no event is queued or in a worker (``/run/udev/queue`` absent), else when the
        last one queued should be done."""
        return self._busy_until if self._queue else None

    def on_uevent(self, ev: Uevent) -> None:
        clock = self._clock
        self.events += 1
        self._busy_until = max(clock.now, self._busy_until) + clock.cost("udev_event")
        self._queue.append(ev)
        if len(self._queue) == 1:
            self._begin()

    def _begin(self) -> None:
        """A worker takes the event at the head of the queue."""
        self._clock.call_later(self._clock.cost("udev_event"), self._handle, "udev worker")

    def _handle(self) -> None:
        ev = self._queue[0]
        flag = self.crash_hotplug_attr()
        key = (ev.subsystem, ev.action, flag)
        runs = None if self._runs is None else self._runs.get(key)
        if runs is None:
            runs = self._evaluate(ev, flag)
            if self._runs is not None:
                self._runs[key] = runs
        self._elapsed = 0.0
        for where, cmd in runs:
            try:
                run_script(parse_command(cmd), self._worker)
            except ShellError as e:
                raise ShellError(f"{where}: {e}") from None
        extra = self._elapsed
        if extra > 0:
            self._busy_until += extra
            self._clock.call_later(extra, self._done, "udev worker RUN")
        else:
            self._done()

    def _evaluate(self, ev: Uevent, flag: int | None) -> tuple[tuple[str, str], ...]:
        attrs = {} if flag is None else {"crash_hotplug": str(flag)}
        res = evaluate(self.rules, HotplugEvent(ev.subsystem, ev.action, ev.kernel, attrs))
        if len(res.outcomes) != 1:
            raise ShellError(f"{ev.subsystem} {ev.action}: the rules' outcome depends on what the model does "
                             f"not know ({'; '.join(res.deciding_assumptions or res.unevaluated)})")
        return tuple(res.outcomes[0].runs)

    def _done(self) -> None:
        self._queue.popleft()
        if self._queue:
            self._begin()

    # -- the programs RUN lines call ---------------------------------------------------------------
    def _take(self, step: str) -> None:
        self._elapsed += self._clock.cost(step)

    def _systemctl(self, argv: Sequence[str], stdin: str) -> tuple[int, str]:
        args = [a for a in argv[1:] if a not in ("--quiet", "-q")]
        if len(args) < 2 or args[0] != "is-active":
            raise ShellError(f"{' '.join(argv)!r}: only 'systemctl is-active UNIT...' is modelled")
        self._take("systemctl_is_active")
        states = ["active" if u in ("kdump", "kdump.service") and self.service.active else "inactive"
                  for u in args[1:]]
        if any(s != "active" for s in states):
            self.inactive += 1
            return 3, "".join(f"{s}\n" for s in states)
        return 0, "".join(f"{s}\n" for s in states)

    def _systemd_run(self, argv: Sequence[str], stdin: str) -> tuple[int, str]:
        line = tuple(argv)
        hit = self._transient.get(line)
        if hit is None:
            hit = self._transient[line] = self._transient_unit(argv)
        program, command = hit
        self._take("systemd_run")
        self.transient_units += 1

        def start() -> None:
            program(command, "")

        self._clock.call_later(self._elapsed, start, "transient service")
        return 0, ""

    def _transient_unit(self, argv: Sequence[str]) -> tuple[Program, tuple[str, ...]]:
        """What ``systemd-run ARGV`` starts: the program and its argv (options checked)."""
        i = 1
        while i < len(argv) and argv[i].startswith("-"):
            opt = argv[i].split("=", 1)[0]
            if opt in _RUN_FLAGS:
                i += 1
            elif opt in _RUN_VALUES:
                i += 1 if "=" in argv[i] else 2
            else:
                raise ShellError(f"{' '.join(argv)!r}: systemd-run option {argv[i]!r} is not modelled")
        command = tuple(argv[i:])
        if not command:
            raise ShellError(f"{' '.join(argv)!r}: no command")
        program = self._units.get(command[0].rsplit("/", 1)[-1])
        if program is None:
            raise ShellError(f"{' '.join(argv)!r}: no model of {command[0]!r} as a transient service")
        return program, command

    @staticmethod
    def _reload_only(argv: Sequence[str]) -> None:
        if list(argv[1:]) != ["reload"]:
            raise ShellError(f"{' '.join(argv)!r}: only 'kdumpctl reload' is modelled from udev")

    def _kdumpctl(self, argv: Sequence[str], stdin: str) -> tuple[int, str]:
        """``kdumpctl reload`` run by the worker, after what the RUN line ran before it."""
        self._reload_only(argv)
        self.reload_requests += 1
        self._clock.call_later(self._elapsed, self.service.reload, "kdumpctl reload")
        return 0, ""

    def _kdumpctl_unit(self, argv: Sequence[str], stdin: str) -> tuple[int, str]:
        """``kdumpctl reload`` as a transient service's process: it runs now."""
        self._reload_only(argv)
        self.reload_requests += 1
        self.service.reload()
        return 0, ""

    def _throttler(self, argv: Sequence[str], stdin: str) -> tuple[int, str]:
        self.reload_requests += 1
        if self.throttle:
            self.throttler.run()
        else:
            self.service.reload()
        return 0, ""

    def _throttler_in_worker(self, argv: Sequence[str], stdin: str) -> tuple[int, str]:
        raise ShellError(f"{argv[0]} run by the udev worker itself (not through systemd-run): its udevadm "
                         "settle would wait for its own event; not modelled")

    def _test(self, argv: Sequence[str], stdin: str) -> tuple[int, str]:
        args = list(argv[1:])
        if argv[0].endswith("["):
            if not args or args[-1] != "]":
                raise ShellError(f"{' '.join(argv)!r}: '[' without ']'")
            args = args[:-1]
        if len(args) != 2 or args[0] not in ("-f", "-e"):
            raise ShellError(f"{' '.join(argv)!r}: only 'test -f|-e PATH' is modelled")
        return (0 if self.read_file(args[1]) is not None else 1), ""

    def _cat(self, argv: Sequence[str], stdin: str) -> tuple[int, str]:
        out: list[str] = []
        for path in argv[1:]:
            text = self.read_file(path)
            if text is None:
                return 1, "".join(out)
            out.append(text)
        return 0, "".join(out)
