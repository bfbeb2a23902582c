"""RUN lines as the host's shell runs them: lists, AND-OR lists, pipelines, ``!``, ``exit``."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from crash_hotplug.legacy.shell import Program, ShellError, grep, parse_command, run_script
from crash_hotplug.legacy.udevd import KDUMP_UTILS_RULES, bundled_rules


def programs(ran: list[str], status: dict[str, int], files: dict[str, str]) -> dict[str, Program]:
    def prog(argv: Sequence[str], stdin: str) -> tuple[int, str]:
        ran.append(" ".join(argv))
        return status.get(argv[0].rsplit("/", 1)[-1], 0), ""

    def cat(argv: Sequence[str], stdin: str) -> tuple[int, str]:
        ran.append(" ".join(argv))
        return (0, files[argv[1]]) if argv[1] in files else (1, "")

    def test(argv: Sequence[str], stdin: str) -> tuple[int, str]:
        return (0 if argv[2] in files else 1), ""

    return {"systemctl": prog, "systemd-run": prog, "cat": cat, "test": test, "grep": grep}


KDUMP_UTILS_X86 = ("/bin/sh -c '/usr/bin/systemctl is-active kdump.service || exit 0; /usr/bin/systemd-run "
                   "--quiet --no-block /usr/lib/udev/kdump-udev-throttler'")
# kdump-utils v1.0.61 98-kexec.rules.ppc64, the memory line
KDUMP_UTILS_PPC64 = ("/bin/sh -c '/usr/bin/systemctl is-active kdump.service || exit 0; ! test -f "
                     "/sys/kernel/fadump/hotplug_ready || cat /sys/kernel/fadump/hotplug_ready | grep 0 || exit 0; "
                     "/usr/bin/systemd-run --quiet --no-block /usr/lib/udev/kdump-udev-throttler'")


def test_the_shipped_run_line_is_the_one_parsed_here() -> None:
    (rf,) = bundled_rules(KDUMP_UTILS_RULES)
    runs = {k.value for r in rf.rules for k in r.keys if k.name == "RUN"}
    assert runs == {KDUMP_UTILS_X86}


@pytest.mark.parametrize(("active", "started"), [(0, True), (3, False)])
def test_is_active_gates_systemd_run(active: int, started: bool) -> None:
    ran: list[str] = []
    status = run_script(parse_command(KDUMP_UTILS_X86), programs(ran, {"systemctl": active}, {}))
    assert status == 0, "'|| exit 0': an inactive kdump.service is no failure"
    assert ran[0] == "/usr/bin/systemctl is-active kdump.service"
    assert (ran[-1] == "/usr/bin/systemd-run --quiet --no-block /usr/lib/udev/kdump-udev-throttler") is started
    assert len(ran) == (2 if started else 1)


@pytest.mark.parametrize(("files", "started"), [
    ({}, True),  # no fadump: '! test -f' holds, the throttler runs
    ({"/sys/kernel/fadump/hotplug_ready": "0\n"}, True),  # grep 0 finds it
    ({"/sys/kernel/fadump/hotplug_ready": "1\n"}, False),  # the kernel handles it: exit 0
])
def test_negation_and_pipelines(files: dict[str, str], started: bool) -> None:
    ran: list[str] = []
    assert run_script(parse_command(KDUMP_UTILS_PPC64), programs(ran, {}, files)) == 0
    assert any(r.startswith("/usr/bin/systemd-run") for r in ran) is started
    assert any(r.startswith("cat") for r in ran) is bool(files), "'||' skips cat when '! test' holds"


def test_and_or_lists_run_left_to_right() -> None:
    ran: list[str] = []
    progs = programs(ran, {"systemctl": 1}, {})
    # (false && x) || y ; z: x skipped, y and z run; the status is the last command's
    assert run_script(parse_command("sh -c 'false && systemctl a || systemctl b; systemd-run c'"), progs) == 0
    assert ran == ["systemctl b", "systemd-run c"]
    assert run_script(parse_command("sh -c 'systemctl a; exit 7; systemd-run never'"), progs) == 7
    assert run_script(parse_command("sh -c 'systemctl a || exit'"), progs) == 1, "exit: the last status"
    assert run_script(parse_command("sh -c '! true'"), progs) == 1


def test_a_plain_command_is_not_parsed_as_shell() -> None:
    script = parse_command("/usr/bin/kdumpctl reload")
    assert len(script) == 1 and script[0][0].commands == (("/usr/bin/kdumpctl", "reload"),)
    # without a shell, ';' and '||' are arguments
    assert parse_command("/usr/bin/systemctl a || b")[0][0].commands == (("/usr/bin/systemctl", "a", "||", "b"),)


@pytest.mark.parametrize("line", [
    "sh -c 'echo 1 > /sys/kernel/x'", "sh -c 'systemd-run x &'", "sh -c 'cat $F'", "sh -c 'a ||'",
    "sh -c '(a)'", "sh -c 'a | | b'",
])
def test_what_is_not_modelled_is_refused(line: str) -> None:
    with pytest.raises(ShellError):
        run_script(parse_command(line), programs([], {}, {}))


def test_an_unknown_program_is_an_error_not_a_status() -> None:
    with pytest.raises(ShellError, match="no model of '/usr/bin/logger'"):
        run_script(parse_command("sh -c '/usr/bin/logger x || exit 0'"), programs([], {}, {}))
