"""udev rules as ``systemd-udevd`` evaluates them, for the question kdump tooling asks: would this
uevent unload-then-reload the kdump image, and through which rule line?

Mirrors ``src/udev/udev-rules.c`` (``udev_rules_parse_file``, ``udev_rule_apply_line_to_event``):

* rule files: every ``*.rules`` under ``/etc/udev/rules.d``, ``/run/udev/rules.d``,
  ``/usr/local/lib/udev/rules.d``, ``/usr/lib/udev/rules.d``, ``/lib/udev/rules.d``; a file name in an
  earlier directory hides the same name in a later one (a symlink to ``/dev/null`` masks it), and all
  files run in lexical order of their names (``conf_files_list``);
* a line's match keys are evaluated in udev's token order, cheap keys first, then ``TEST``,
  ``PROGRAM``, ``IMPORT``, ``RESULT`` (the ``token_type`` enum); the first key that fails ends the
  line; when all match, its assignments apply: ``RUN+=`` appends, ``RUN=`` replaces, ``RUN:=`` is
  final, ``ENV{k}=`` sets a property, ``GOTO`` jumps to the ``LABEL`` later in the same file (a
  ``GOTO`` without its label is ignored, as udev logs and ignores it);
* ``PROGRAM=`` is a match (udev turns ``=`` into ``==``): the command runs *while the rules are
  evaluated*, so a ``PROGRAM`` that reloads kdump reloads it whatever follows; ``RESULT`` matches its
  output; ``IMPORT{program}`` runs its command too;
* a line udev cannot parse is skipped with a warning, as udev skips it.

Where the outcome depends on something this evaluator cannot know (the exit status of
``systemctl is-active``, a sysfs attribute a sosreport did not collect), both outcomes are
followed and the verdict is *unknown*, with the assumption that decides it; never a guessed "no".
Programs of the form ``cat FILE`` are evaluated from the root.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from crash_hotplug.facts import ABSENT, Absent, Lookup
from crash_hotplug.snapshot.reader import RULE_DIRS

__all__ = [
    "ABSENT",
    "RULE_DIRS",
    "HotplugEvent",
    "KdumpEffect",
    "Lookup",
    "Outcome",
    "Probe",
    "RuleFile",
    "RuleSet",
    "UdevResult",
    "evaluate",
    "kdump_effect",
    "load_rules",
    "parse_rules",
    "reloads_kdump",
]

#: largest rule file read (udev's own rules are a few KiB)
MAX_RULE_FILE = 1 << 20
_SYSTEMCTL_RELOADS = ("try-restart", "restart", "reload", "reload-or-restart", "try-reload-or-restart")
#: paths followed per event before the answer is given up as unknown
MAX_PATHS = 256


_KEY = re.compile(r'\s*([A-Za-z_]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*([eri]?)"')

# udev_rules token order: the order match keys of one line are evaluated in
_ORDER = {
    "ACTION": 0, "DEVPATH": 1, "KERNEL": 2, "SYMLINK": 3, "NAME": 4, "ENV": 5, "CONST": 6, "TAG": 7,
    "SUBSYSTEM": 8, "DRIVER": 9, "ATTR": 10, "SYSCTL": 11,
    "KERNELS": 12, "SUBSYSTEMS": 12, "DRIVERS": 12, "ATTRS": 12, "TAGS": 12,
    "TEST": 13, "PROGRAM": 14, "IMPORT": 15, "RESULT": 16,
}
#: keys that are matches whatever their operator (udev turns PROGRAM= and IMPORT= into matches)
_ALWAYS_MATCH = {"PROGRAM", "IMPORT", "TEST", "RESULT", "ACTION", "DEVPATH", "KERNEL", "SUBSYSTEM",
                 "DRIVER", "KERNELS", "SUBSYSTEMS", "DRIVERS", "ATTRS", "TAGS", "CONST"}


@dataclass(frozen=True)
class Key:
    name: str
    attr: str | None
    op: str
    value: str

    @property
    def is_match(self) -> bool:
        return self.name in _ALWAYS_MATCH or self.op in ("==", "!=")

    def text(self) -> str:
        attr = "" if self.attr is None else "{" + self.attr + "}"
        return f'{self.name}{attr}{self.op}"{self.value}"'


@dataclass(frozen=True)
class Rule:
    file: str
    line: int
    keys: tuple[Key, ...]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class RuleFile:
    path: str
    rules: tuple[Rule, ...]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class KdumpEffect:
    """What a command udev runs does to the kdump image.

    ``kind`` is ``reload`` (unloads the crash kernel, then loads a new one: a panic in between is
    not dumped), ``throttled-reload`` (the same, once per burst of events), or ``unload``."""

    kind: str
    what: str


@dataclass(frozen=True)
class HotplugEvent:
    """A uevent as udev sees it.

    ``attrs`` are the device's own sysfs attributes, ``parent_attrs`` those of its parents (for a
    CPU, ``/sys/devices/system/cpu`` holds ``crash_hotplug``). A value of None is unknown; an
    attribute not in the mapping does not exist.
    """

    subsystem: str
    action: str
    kernel: str = ""
    parent_attrs: Mapping[str, str | None] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    attrs: Mapping[str, str | None] = field(default_factory=dict)
    devpath: str = ""
    driver: str = ""

    @property
    def properties(self) -> dict[str, str]:
        props = {"ACTION": self.action, "SUBSYSTEM": self.subsystem, "DEVPATH": self.devpath,
                 "KERNEL": self.kernel}
        props.update(self.env)
        return props


@dataclass(frozen=True)
class Probe:
    """How rules see the host: ``read(path)`` for ``PROGRAM="cat PATH"``, ``TEST`` and ``SYSCTL``
    (absolute Linux paths); ``cmdline`` for ``IMPORT{cmdline}``. The default knows nothing."""

    read: Callable[[str], Lookup] = lambda path: None
    exists: Callable[[str], bool | None] = lambda path: None
    cmdline: str | None = None


@dataclass
class Outcome:
    """One way through the rules: what ran, what it did to kdump, and what had to be assumed."""

    runs: list[tuple[str, str]] = field(default_factory=list)
    run_final: bool = False
    programs: list[tuple[str, str, KdumpEffect]] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)

    @property
    def effects(self) -> list[tuple[str, str, KdumpEffect]]:
        """(rule location, command, effect) of every command that acts on kdump, in run order."""
        out = list(self.programs)
        for where, cmd in self.runs:
            eff = kdump_effect(cmd)
            if eff is not None:
                out.append((where, cmd, eff))
        return out

    @property
    def reloads(self) -> bool:
        return any(e.kind in ("reload", "throttled-reload") for _, _, e in self.effects)


@dataclass
class UdevResult:
    outcomes: list[Outcome] = field(default_factory=list)
    unevaluated: list[str] = field(default_factory=list)
    gave_up: bool = False

    @property
    def reload_verdict(self) -> bool | None:
        """True when every way through the rules reloads kdump, False when none does, else None."""
        if self.gave_up or not self.outcomes:
            return None
        seen = {o.reloads for o in self.outcomes}
        return seen.pop() if len(seen) == 1 else None

    @property
    def reloads_kdump(self) -> bool:
        """Whether some way through the rules reloads kdump (errs towards "would reload")."""
        return self.gave_up or any(o.reloads for o in self.outcomes)

    @property
    def runs(self) -> list[tuple[str, str]]:
        seen: dict[tuple[str, str], None] = {}
        for o in self.outcomes:
            for r in o.runs:
                seen.setdefault(r, None)
        return list(seen)

    @property
    def reloaders(self) -> list[str]:
        """'file:line: KEY "command" (effect)' for every command that reloads kdump on some path."""
        seen: dict[str, None] = {}
        for o in self.outcomes:
            for where, cmd, eff in o.effects:
                if eff.kind != "unload":
                    seen.setdefault(f"{where}: {cmd} ({eff.what})", None)
        return list(seen)

    @property
    def deciding_assumptions(self) -> list[str]:
        """The assumptions of the paths that reload, when the verdict is unknown."""
        if self.reload_verdict is not None:
            return []
        seen: dict[str, None] = {}
        for o in self.outcomes:
            if o.reloads:
                for a in o.assumptions:
                    seen.setdefault(a, None)
        return list(seen)


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def kdump_effect(command: str) -> KdumpEffect | None:
    """What a command run by udev does to the kdump image, or None when it does not touch it.

    Recognised: ``kdumpctl reload|restart|start|stop`` (kdump-utils, kexec-tools), the
    ``kdump-udev-throttler`` (directly or through ``systemd-run``), ``systemctl try-restart|restart|
    reload kdump[.service]`` (RHEL 7), ``kdump-config try-reload|reload|load|unload`` (Debian,
    Ubuntu kdump-tools), SUSE's ``/usr/lib/kdump/load-once.sh`` and ``load.sh``, and ``kexec -p``.
    Shell commands (``sh -c '...'``) are looked into.
    """
    words = _words(command)
    if len(words) >= 3 and Path(words[0]).name in ("sh", "bash", "dash") and words[1] == "-c":
        for part in re.split(r"[;&|]+|\|\|", words[2]):
            eff = kdump_effect(part.strip())
            if eff is not None:
                return eff
        return None
    for i, w in enumerate(words):
        name = Path(w).name
        rest = words[i + 1:]
        if name == "kdump-udev-throttler":
            return KdumpEffect("throttled-reload", "kdump-udev-throttler: one kdumpctl reload per burst of events")
        if name == "load-once.sh":
            return KdumpEffect("throttled-reload", "SUSE load-once.sh: reloads kdump, once per burst of events")
        if name == "load.sh" and "kdump" in w:
            return KdumpEffect("reload", "SUSE load.sh: reloads kdump")
        if name == "kdumpctl" and rest:
            if rest[0] in ("reload", "restart", "start"):
                return KdumpEffect("reload", f"kdumpctl {rest[0]}: unloads and reloads the crash kernel")
            if rest[0] == "stop":
                return KdumpEffect("unload", "kdumpctl stop: unloads the crash kernel")
        if name == "kdump-config" and rest:
            if rest[0] in ("try-reload", "reload", "load"):
                return KdumpEffect("reload", f"kdump-config {rest[0]}: unloads and reloads the crash kernel")
            if rest[0] == "unload":
                return KdumpEffect("unload", "kdump-config unload: unloads the crash kernel")
        if (name == "systemctl" and len(rest) >= 2 and rest[0] in _SYSTEMCTL_RELOADS
                and any(u.split(".")[0] in ("kdump", "kdump-tools") for u in rest[1:])):
            return KdumpEffect("reload", f"systemctl {rest[0]} of the kdump service: unload, then load")
        if name == "kexec" and ("-p" in rest or "--load-panic" in rest):
            if "-u" in rest or "--unload" in rest:
                return KdumpEffect("unload", "kexec -p -u: unloads the crash kernel")
            return KdumpEffect("reload", "kexec -p: replaces the crash kernel (the old one is freed first)")
    return None


def reloads_kdump(command: str) -> bool:
    """Whether a command reloads the kdump image (directly or through a throttler/service)."""
    eff = kdump_effect(command)
    return eff is not None and eff.kind != "unload"


def _scan_value(line: str, pos: int) -> tuple[str, int]:
    """The quoted value starting after the opening quote at ``pos``; returns (value, end)."""
    out: list[str] = []
    i = pos
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line) and line[i + 1] in '"\\':
            out.append(line[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise ValueError("unterminated quoted value")


def _parse_line(line: str) -> tuple[Key, ...]:
    keys: list[Key] = []
    pos = 0
    while pos < len(line):
        if line[pos] in " \t,":
            pos += 1
            continue
        m = _KEY.match(line, pos)
        if not m:
            raise ValueError(f"cannot parse {line[pos:pos + 40]!r}")
        value, pos = _scan_value(line, m.end())
        keys.append(Key(m.group(1), m.group(2), m.group(3), value))
    if not keys:
        raise ValueError("empty rule")
    return tuple(keys)


def parse_rules(text: str, name: str) -> RuleFile:
    """Parse one rules file. A line udev would reject is skipped, with a warning naming it."""
    rules: list[Rule] = []
    warnings: list[str] = []
    pending = ""
    start_line = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not pending:
            start_line = lineno
            if line.lstrip().startswith("#"):
                continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line = (pending + line).strip()
        pending = ""
        if not line or line.startswith("#"):
            continue
        try:
            rules.append(Rule(name, start_line, _parse_line(line)))
        except ValueError as e:
            warnings.append(f"{name}:{start_line}: line ignored (as udev ignores it): {e}")
    return RuleFile(name, tuple(rules), tuple(warnings))


@dataclass(frozen=True)
class RuleSet:
    """The rule files a host runs, in order, with the files hidden or masked by others."""

    files: tuple[RuleFile, ...]
    overridden: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = ()

    @property
    def warnings(self) -> list[str]:
        return [w for f in self.files for w in f.warnings]


def load_rules(root: Path, read: Callable[[Path], str | None] | None = None) -> RuleSet:
    """Every rules file under ``root``'s rule directories, in udev's order.

    ``read`` reads one file (None when it cannot be read); the default reads at most
    :data:`MAX_RULE_FILE` bytes of a regular file. Files are named by their Linux path.
    """
    chosen: dict[str, Path] = {}
    hidden: list[str] = []
    for d in RULE_DIRS:
        base = root / d
        try:
            entries = sorted(base.iterdir()) if base.is_dir() else []
        except OSError:
            continue
        for p in entries:
            if not p.name.endswith(".rules"):
                continue
            if p.name in chosen:
                hidden.append(f"/{d}/{p.name} (hidden by /{_rel(root, chosen[p.name])})")
                continue
            chosen[p.name] = p
    files: list[RuleFile] = []
    unreadable: list[str] = []
    for fname in sorted(chosen):
        p = chosen[fname]
        shown = "/" + _rel(root, p)
        if p.is_symlink():
            try:
                target = str(p.readlink())
            except OSError:
                target = ""
            if target == "/dev/null":
                hidden.append(f"{shown} (masked: a symlink to /dev/null)")
                continue
        text = (read or _read_rule_file)(p)
        if text is None:
            unreadable.append(shown)
            continue
        files.append(parse_rules(text, shown))
    return RuleSet(tuple(files), tuple(hidden), tuple(unreadable))


def _rel(root: Path, p: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def _read_rule_file(p: Path) -> str | None:
    try:
        if not p.is_file():
            return None
        with p.open("rb") as f:
            data = f.read(MAX_RULE_FILE + 1)
    except OSError:
        return None
    if len(data) > MAX_RULE_FILE:
        return None
    return data.decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=4096)
def _glob(value: str, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(value, alt) for alt in pattern.split("|"))


def _compare(actual: str | None, key: Key) -> bool | None:
    if actual is None:
        return None
    hit = _glob(actual, key.value)
    return hit if key.op != "!=" else not hit


@dataclass
class _Path:
    index: int
    env: dict[str, str]
    outcome: Outcome
    env_tainted: bool = False
    result: str | None = ""


def _program(cmd: str, probe: Probe) -> tuple[bool | None, str | None]:
    """(exit status 0?, output) of a PROGRAM/IMPORT command, None where unknown."""
    words = _words(cmd)
    if len(words) == 2 and Path(words[0]).name == "cat" and words[1].startswith("/"):
        got = probe.read(words[1])
        if isinstance(got, Absent):
            return False, ""
        if got is None:
            return None, None
        return True, got.rstrip("\n")
    return None, None


def _match(key: Key, ev: HotplugEvent, st: _Path, probe: Probe, where: str,
           res: UdevResult) -> bool | None:
    """True/False for a match key on this path, None when it cannot be known."""
    n = key.name
    props = {**ev.properties, **st.env}
    if n == "ACTION":
        return _compare(ev.action, key)
    if n in ("SUBSYSTEM", "SUBSYSTEMS"):
        return _compare(ev.subsystem, key)
    if n in ("KERNEL", "KERNELS"):
        return _compare(ev.kernel, key)
    if n == "DEVPATH":
        return _compare(ev.devpath, key)
    if n in ("DRIVER", "DRIVERS"):
        return _compare(ev.driver, key)
    if n in ("ATTR", "ATTRS"):
        attrs: dict[str, str | None] = dict(ev.attrs)
        if n == "ATTRS":
            for k, v in ev.parent_attrs.items():
                if attrs.get(k) is None:
                    attrs[k] = v
        name = key.attr or ""
        if name not in attrs:
            return False  # udev: an attribute that cannot be read matches nothing, not even !=
        v = attrs[name]
        return _compare(None if v is None else v.rstrip(), key)
    if n == "ENV":
        name = key.attr or ""
        if name in props:
            return _compare(props[name], key)
        return None if st.env_tainted else _compare("", key)
    if n in ("TAG", "TAGS", "NAME", "SYMLINK"):
        return _compare("", key)
    if n == "SYSCTL":
        got = probe.read("/proc/sys/" + (key.attr or "").replace(".", "/"))
        return _compare(None if got is None else "" if isinstance(got, Absent) else got.strip(), key)
    if n == "TEST":
        if not key.value.startswith("/"):
            res.unevaluated.append(f"{where}: {key.text()} (a path relative to the device)")
            return None
        ex = probe.exists(key.value)
        return None if ex is None else (ex if key.op != "!=" else not ex)
    if n == "PROGRAM":
        eff = kdump_effect(key.value)
        if eff is not None:
            st.outcome.programs.append((where, key.value, eff))
        ok, output = _program(key.value, probe)
        st.result = output
        if ok is None:
            return None
        return ok if key.op != "!=" else not ok
    if n == "RESULT":
        return _compare(st.result, key)
    if n == "IMPORT":
        kind = key.attr or ""
        if kind == "cmdline":
            if probe.cmdline is None:
                return None
            for word in probe.cmdline.split():
                k, _, v = word.partition("=")
                if k == key.value:
                    st.env[k] = v or "1"
                    return key.op != "!="
            return key.op == "!="
        if kind == "program":
            eff = kdump_effect(key.value)
            if eff is not None:
                st.outcome.programs.append((where, key.value, eff))
        st.env_tainted = True
        res.unevaluated.append(f"{where}: {key.text()}")
        return None
    if n == "CONST":
        return None
    res.unevaluated.append(f"{where}: {key.text()}")
    return None


def _assign(rule: Rule, st: _Path) -> str | None:
    """Apply a matched line's assignments; the GOTO label, if any."""
    goto = None
    o = st.outcome
    for k in rule.keys:
        if k.is_match:
            continue
        if k.name == "RUN":
            if o.run_final:
                continue
            if k.op in ("=", ":="):
                o.runs.clear()
            if k.op == ":=":
                o.run_final = True
            if k.op == "-=":
                o.runs[:] = [r for r in o.runs if r[1] != k.value]
            elif (k.attr or "program") == "program":
                o.runs.append((rule.where, k.value))
        elif k.name == "ENV" and k.attr:
            if "%" in k.value or "$" in k.value:
                st.env.pop(k.attr, None)
                st.env_tainted = True
            else:
                st.env[k.attr] = k.value
        elif k.name == "GOTO":
            goto = k.value
    return goto


def _relevant(rule: Rule) -> bool:
    """Whether applying this line can change what reaches kdump: it jumps, sets or clears RUN, runs a
    command that acts on kdump, or imports properties a later line may test."""
    for k in rule.keys:
        if k.is_match:
            continue
        if k.name == "GOTO" or (k.name == "RUN" and (k.op != "+=" or kdump_effect(k.value) is not None)):
            return True
    return False


def _prepared(rf: RuleFile) -> tuple[dict[str, list[int]], list[list[Key]]]:
    """The file's labels (name -> rule indices) and each rule's match keys in evaluation order,
    worked out once per file (a storm runs every event through the same rules)."""
    hit = _PREPARED.get(id(rf))
    if hit is not None and hit[0] is rf:
        return hit[1], hit[2]
    labels: dict[str, list[int]] = {}
    for i, r in enumerate(rf.rules):
        for k in r.keys:
            if k.name == "LABEL":
                labels.setdefault(k.value, []).append(i)
    matches = [sorted((k for k in r.keys if k.is_match), key=lambda k: _ORDER.get(k.name, 99)) for r in rf.rules]
    if len(_PREPARED) >= 64:
        del _PREPARED[next(iter(_PREPARED))]
    _PREPARED[id(rf)] = (rf, labels, matches)
    return labels, matches


#: :func:`_prepared` by the file's identity (the file is held, so its id is not reused)
_PREPARED: dict[int, tuple[RuleFile, dict[str, list[int]], list[list[Key]]]] = {}


def _run_file(rf: RuleFile, ev: HotplugEvent, start: _Path, probe: Probe, res: UdevResult) -> list[_Path]:
    labels, prepared = _prepared(rf)
    done: list[_Path] = []
    todo = [start]
    while todo:
        st = todo.pop()
        while st.index < len(rf.rules):
            rule = rf.rules[st.index]
            matches = prepared[st.index]
            st.index += 1
            verdict: bool | None = True
            for k in matches:
                m = _match(k, ev, st, probe, rule.where, res)
                if m is False:
                    verdict = False
                    break
                if m is None and not _relevant(rule):
                    # applying it or not changes nothing kdump sees, except properties it may set
                    if any(x.name == "ENV" and not x.is_match for x in rule.keys):
                        st.env_tainted = True
                    verdict = False
                    break
                if m is None:
                    # follow both: this key fails here, holds on a copy
                    if len(done) + len(todo) >= MAX_PATHS:
                        res.gave_up = True
                        return done + todo + [st]
                    alt = _Path(st.index, dict(st.env), replace(st.outcome, runs=list(st.outcome.runs),
                                programs=list(st.outcome.programs),
                                assumptions=[*st.outcome.assumptions, f"{rule.where}: {k.text()} fails"]),
                                st.env_tainted, st.result)
                    todo.append(alt)
                    st.outcome.assumptions.append(f"{rule.where}: {k.text()} holds")
            if verdict is False:
                continue
            goto = _assign(rule, st)
            if goto is not None:
                later = [j for j in labels.get(goto, []) if j >= st.index]
                if later:
                    st.index = later[0]
        done.append(st)
    return done


def evaluate(files: RuleSet | Iterable[RuleFile], ev: HotplugEvent, probe: Probe | None = None) -> UdevResult:
    """Run ``ev`` through the rules: every way through them, with what each runs."""
    probe = probe or Probe()
    rule_files = files.files if isinstance(files, RuleSet) else tuple(files)
    res = UdevResult()
    paths = [_Path(0, {}, Outcome())]
    for rf in rule_files:
        nxt: list[_Path] = []
        for st in paths:
            st.index = 0
            nxt.extend(_run_file(rf, ev, st, probe, res))
            if res.gave_up:
                break
        paths = nxt[:MAX_PATHS]
        if res.gave_up:
            break
    res.outcomes = [p.outcome for p in paths]
    return res
