"""A small udev rules evaluator: enough of ``udev(7)`` to tell whether installed rules would
unload-then-reload kdump for a CPU or memory hotplug event.

Matches ``ACTION``, ``SUBSYSTEM``, ``KERNEL``, ``DEVPATH``, ``DRIVER``, ``ATTR{x}``, ``ATTRS{x}``,
``ENV{x}`` with ``==``/``!=`` and shell globs (``|`` alternatives); follows ``GOTO``/``LABEL``;
collects ``RUN``. Keys it cannot evaluate (``PROGRAM``, ``RESULT``, ``TEST``) are reported and
treated as matching, so the answer errs towards "would reload".

Rule files are read as udev does: every ``*.rules`` under the rule directories, by file name, a
file in ``/etc/udev/rules.d`` hiding one of the same name in ``/usr/lib`` or ``/lib``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from crash_hotplug.errors import SnapshotError
from crash_hotplug.snapshot.reader import RULE_DIRS

__all__ = [
    "RULE_DIRS",
    "HotplugEvent",
    "RuleFile",
    "UdevResult",
    "evaluate",
    "load_rules",
    "parse_rules",
    "reloads_kdump",
]


_TOKEN = re.compile(r'\s*([A-Za-z_]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_UNEVALUATED = {"PROGRAM", "RESULT", "TEST", "IMPORT", "CONST", "SYSCTL"}
_RELOADERS = ("kdumpctl", "kdump-udev-throttler", "kdump-tools", "kdump-config", "kexec")


@dataclass(frozen=True)
class Key:
    name: str
    attr: str | None
    op: str
    value: str


@dataclass(frozen=True)
class Rule:
    file: str
    line: int
    keys: tuple[Key, ...]


@dataclass(frozen=True)
class RuleFile:
    path: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class HotplugEvent:
    """A uevent as udev sees it; ``attrs`` holds the device's and its parents' sysfs attributes."""

    subsystem: str
    action: str
    kernel: str = ""
    attrs: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class UdevResult:
    runs: list[tuple[str, str]] = field(default_factory=list)  # (rule location, RUN command)
    unevaluated: list[str] = field(default_factory=list)

    @property
    def reloads_kdump(self) -> bool:
        return any(reloads_kdump(cmd) for _, cmd in self.runs)


def reloads_kdump(command: str) -> bool:
    """Whether a RUN command reloads the kdump image (directly or through a throttler/service)."""
    return any(word in command for word in _RELOADERS)


def parse_rules(text: str, name: str) -> RuleFile:
    """Parse one rules file; ``ValueError`` naming the line on a syntax error."""
    rules: list[Rule] = []
    pending = ""
    start_line = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not pending:
            start_line = lineno
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if not line or line.startswith("#"):
            continue
        keys: list[Key] = []
        pos = 0
        while pos < len(line):
            m = _TOKEN.match(line, pos)
            if not m:
                raise ValueError(f"{name}: line {start_line}: cannot parse {line[pos:pos + 40]!r}")
            keys.append(Key(m.group(1), m.group(2), m.group(3), m.group(4).replace('\\"', '"')))
            pos = m.end()
        rules.append(Rule(name, start_line, tuple(keys)))
    return RuleFile(name, tuple(rules))


def load_rules(root: Path) -> list[RuleFile]:
    """Every rules file under ``root``'s rule directories, in udev's order."""
    chosen: dict[str, Path] = {}
    for d in RULE_DIRS:
        base = root / d
        if base.is_dir():
            for p in base.glob("*.rules"):
                chosen.setdefault(p.name, p)
    out = []
    for fname in sorted(chosen):
        p = chosen[fname]
        try:
            text = p.read_text(errors="replace")
        except OSError as e:
            raise SnapshotError(str(p), f"cannot read: {e.strerror}") from None
        try:
            out.append(parse_rules(text, str(p)))
        except ValueError as e:
            raise SnapshotError(str(p), str(e).split(": ", 1)[1]) from None
    return out


def _glob(value: str, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(value, alt) for alt in pattern.split("|"))


def _matches(key: Key, ev: HotplugEvent, res: UdevResult, where: str) -> bool | None:
    """True/False for a match key, None for an assignment."""
    if key.op not in ("==", "!="):
        return None
    actual: str | None
    if key.name == "ACTION":
        actual = ev.action
    elif key.name in ("SUBSYSTEM", "SUBSYSTEMS"):
        actual = ev.subsystem
    elif key.name in ("KERNEL", "KERNELS"):
        actual = ev.kernel
    elif key.name in ("ATTR", "ATTRS"):
        actual = ev.attrs.get(key.attr or "")
    elif key.name == "ENV":
        actual = ev.env.get(key.attr or "")
    elif key.name in ("DEVPATH", "DRIVER", "DRIVERS", "NAME", "TAG", "TAGS"):
        actual = ""
    else:
        if key.name in _UNEVALUATED:
            res.unevaluated.append(f"{where}: {key.name}")
        return True
    hit = actual is not None and _glob(actual, key.value)
    return hit if key.op == "==" else not hit


def evaluate(files: Iterable[RuleFile], ev: HotplugEvent) -> UdevResult:
    """Run ``ev`` through the rules; the RUN commands it would execute."""
    res = UdevResult()
    for rf in files:
        i = 0
        rules = rf.rules
        while i < len(rules):
            rule = rules[i]
            where = f"{rule.file}:{rule.line}"
            ok = all(m is not False for m in (_matches(k, ev, res, where) for k in rule.keys))
            i += 1
            if not ok:
                continue
            goto = None
            for k in rule.keys:
                if k.name == "RUN" and k.op in ("+=", "=", ":="):
                    if k.op != "+=":
                        res.runs = [r for r in res.runs if r[0].split(":")[0] != rule.file]
                    res.runs.append((where, k.value))
                elif k.name == "GOTO":
                    goto = k.value
            if goto is not None:
                target = next((j for j in range(i, len(rules))
                               if any(k.name == "LABEL" and k.value == goto for k in rules[j].keys)), None)
                i = len(rules) if target is None else target
    return res
