"""The commands udev rules ``RUN``, run as the host runs them: a program with its arguments, or a
``/bin/sh -c`` command list.

The kdump rules' RUN lines are small shell programs. kdump-utils' x86 rule runs
``systemctl is-active kdump.service || exit 0; systemd-run --quiet --no-block
/usr/lib/udev/kdump-udev-throttler``; its ppc64 rule adds ``! test -f F || cat F | grep 0 || exit 0``;
RHEL 7's ends in ``systemd-run --quiet /usr/bin/kdumpctl reload``. This module parses the part of
the shell command language (POSIX.1-2017 XCU 2.9, "Shell Commands") they use -- simple commands,
pipelines (``|``, a leading ``!`` negating the status), AND-OR lists (``&&``, ``||``, left to right),
lists (``;``) -- and ``exit [n]``, ``true``, ``false`` and ``:`` as the shell's own; every other
command is looked up by its file name in a table of programs the caller supplies. What a line
uses beyond that (redirections, ``&``, subshells, expansions) is refused with an error naming the
line: a command list is never half-understood.

A command udev runs without a shell (``RUN+="/usr/bin/kdumpctl reload"``) is split into words as
udev splits it (spaces, quotes grouping) and run as one command. Parsing is cached per text: a storm
runs the same few lines thousands of times.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from crash_hotplug.errors import CrashHotplugError

__all__ = ["Pipeline", "Program", "Script", "ShellError", "grep", "parse_command", "run_script"]

#: a program: (its argv, its standard input) -> (exit status, standard output)
Program = Callable[[Sequence[str], str], tuple[int, str]]

_SHELLS = ("sh", "bash", "dash")
_OPERATORS = (";", "&&", "||", "|")


class ShellError(CrashHotplugError):
    """A command list that cannot be run as written."""


@dataclass(frozen=True)
class Pipeline:
    """``[!] command [| command]...``: the status is the last command's, negated with ``!``."""

    negate: bool
    commands: tuple[tuple[str, ...], ...]


#: an AND-OR list: its first pipeline, then (``&&`` or ``||``, pipeline) pairs
AndOr = tuple[Pipeline, tuple[tuple[str, Pipeline], ...]]
#: a list: AND-OR lists run one after the other
Script = tuple[AndOr, ...]


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _name(word: str) -> str:
    return word.rsplit("/", 1)[-1]


@functools.lru_cache(maxsize=256)
def parse_command(command: str) -> Script:
    """A RUN value as the host runs it: ``sh -c LIST`` parsed as a shell list, anything else as one
    command."""
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise ShellError(f"{command!r}: {e}") from None
    if not words:
        raise ShellError(f"{command!r}: no command")
    if _name(words[0]) in _SHELLS and len(words) >= 3 and words[1] == "-c":
        return _parse_list(words[2], command)
    return ((Pipeline(False, (tuple(words),)), ()),)


def _tokens(text: str, where: str) -> list[str]:
    if re.search(r"[$`<>(){}&]", text.replace("&&", "")):
        raise ShellError(f"{where!r}: shell syntax beyond commands, pipelines and && || ; lists")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";|&")
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError as e:
        raise ShellError(f"{where!r}: {e}") from None


def _parse_list(text: str, where: str) -> Script:
    out: list[AndOr] = []
    first: Pipeline | None = None
    rest: list[tuple[str, Pipeline]] = []
    op: str | None = None
    words: list[str] = []
    commands: list[tuple[str, ...]] = []
    negate = False

    def end_command() -> None:
        if not words:
            raise ShellError(f"{where!r}: a command is missing")
        commands.append(tuple(words))
        words.clear()

    def end_pipeline() -> None:
        nonlocal first, negate
        end_command()
        p = Pipeline(negate, tuple(commands))
        commands.clear()
        negate = False
        if first is None:
            first = p
        else:
            assert op is not None
            rest.append((op, p))

    for tok in [*_tokens(text, where), ";"]:
        if tok not in _OPERATORS:
            if tok == "!" and not words and not commands:
                negate = not negate
            else:
                words.append(tok)
            continue
        if tok == "|":
            end_command()
            continue
        if tok == ";" and first is None and not words and not commands:
            continue  # an empty list (a trailing ';')
        end_pipeline()
        if tok == ";":
            assert first is not None
            out.append((first, tuple(rest)))
            first, rest, op = None, [], None
        else:
            op = tok
    return tuple(out)


def grep(argv: Sequence[str], stdin: str) -> tuple[int, str]:
    """``grep PATTERN``: the lines of standard input matching the pattern; status 0 when some do,
    1 when none do (POSIX ``grep``). The pattern is taken as an extended regular expression's
    common subset; options are refused."""
    if len(argv) != 2 or argv[1].startswith("-"):
        raise ShellError(f"{' '.join(argv)!r}: only 'grep PATTERN' is modelled")
    pattern = re.compile(argv[1])
    hits = [line for line in stdin.splitlines() if pattern.search(line)]
    return (0 if hits else 1), "".join(f"{h}\n" for h in hits)


def run_script(script: Script, programs: Mapping[str, Program]) -> int:
    """Run a parsed command list; its exit status (that of the last command run, or of ``exit``)."""
    status = 0
    try:
        for first, rest in script:
            status = _pipeline(first, programs, status)
            for op, p in rest:
                if (op == "&&") == (status == 0):
                    status = _pipeline(p, programs, status)
    except _Exit as e:
        return e.status
    return status


def _pipeline(p: Pipeline, programs: Mapping[str, Program], last: int) -> int:
    data = ""
    status = 0
    for argv in p.commands:
        status, data = _command(argv, data, programs, last)
    if p.negate:
        return 1 if status == 0 else 0
    return status


def _command(argv: Sequence[str], stdin: str, programs: Mapping[str, Program], last: int) -> tuple[int, str]:
    name = _name(argv[0])
    if name == "exit":
        if len(argv) > 2 or (len(argv) == 2 and not argv[1].isdigit()):
            raise ShellError(f"{' '.join(argv)!r}: exit takes one number")
        raise _Exit(int(argv[1]) & 0xFF if len(argv) == 2 else last)
    if name in ("true", ":"):
        return 0, ""
    if name == "false":
        return 1, ""
    prog = programs.get(name)
    if prog is None:
        raise ShellError(f"{' '.join(argv)!r}: no model of {argv[0]!r} on this host")
    return prog(argv, stdin)
