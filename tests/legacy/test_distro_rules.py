"""The kdump udev rules distributions ship (tests/data/udev, origins in its README), installed into
a snapshot of a real 6.12 guest: status gives, per subsystem and action, what a hand reading of
each rule file gives, and names the rule file and line that reloads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from crash_hotplug.cli import cli
from crash_hotplug.legacy.udev import HotplugEvent, kdump_effect, load_rules
from crash_hotplug.legacy.udevd import KDUMP_UTILS_RULES, bundled_rules_text
from tests.conftest import VECTORS, needs_vectors

DATA = Path(__file__).resolve().parent.parent / "data" / "udev"
EVENTS = ("cpu add", "cpu remove", "cpu online", "cpu offline",
          "memory add", "memory online", "memory offline", "memory remove")

# rule set -> (crash_hotplug value) -> {event: "file:line" of the reloading command, or None}
DEB = "/lib/udev/rules.d/50-kdump-tools.rules"
RH = "/usr/lib/udev/rules.d/98-kexec.rules"
SUSE = "/run/udev/rules.d/70-kdump.rules"
EXPECTED: dict[str, dict[str, str | None]] = {
    # PROGRAM= runs kdump-config try-reload on memory online/offline, cpu add/remove/online
    "debian-kdump-tools": {"cpu add": f"{DEB}:3", "cpu remove": f"{DEB}:4", "cpu online": f"{DEB}:5",
                           "memory online": f"{DEB}:1", "memory offline": f"{DEB}:2"},
    # Ubuntu 20.04: the last line is cpu offline
    "ubuntu-kdump-tools": {"cpu add": f"{DEB}:3", "cpu remove": f"{DEB}:4", "cpu offline": f"{DEB}:5",
                           "memory online": f"{DEB}:1", "memory offline": f"{DEB}:2"},
    # PROGRAM="/bin/systemctl try-restart kdump.service", one line per event
    "rhel7-kexec-tools": {"cpu add": f"{RH}:1", "cpu remove": f"{RH}:2", "memory online": f"{RH}:3",
                          "memory offline": f"{RH}:4"},
    # GOTO kdump_reload -> RUN+= the throttler on line 14, no crash_hotplug check
    "rhel8-kexec-tools": {e: f"{RH}:14" for e in ("cpu add", "cpu remove", "memory online", "memory offline")},
    # crash_hotplug == 1 jumps past the reload (lines 2-3), else the throttler on line 18
    "kdump-utils": {e: f"{RH}:18" for e in ("cpu add", "cpu remove", "memory online", "memory offline")},
    # memory add|remove -> kdump_try_restart: cat kexec_crash_loaded, RESULT!="0", RUN+= load-once.sh
    "suse-kdump": {"memory add": f"{SUSE}:14", "memory remove": f"{SUSE}:14"},
    "suse-kdump-1.9": {"memory add": f"{SUSE}:14", "memory remove": f"{SUSE}:14"},
}
#: rule sets whose file is the package data the simulator runs (one copy): set -> (path, bundled name)
PACKAGED = {"kdump-utils": (RH.lstrip("/"), KDUMP_UTILS_RULES)}
#: rule sets that check crash_hotplug and leave the update to the kernel when it reads 1
AWARE = {"kdump-utils", "suse-kdump"}


def status(root: Path) -> tuple[int, dict[str, object]]:
    res = CliRunner().invoke(cli, ["status", "--root", str(root), "--json"], catch_exceptions=False)
    return res.exit_code, json.loads(res.output)


def install(tmp_path: Path, rule_set: str, crash_hotplug: str | None, kernel: str = "6.12.43") -> Path:
    assert VECTORS is not None
    root = tmp_path / "root"
    shutil.copytree(VECTORS / f"{kernel}/base/S0/root", root)
    if rule_set in PACKAGED:
        path, name = PACKAGED[rule_set]
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(bundled_rules_text(name))
    else:
        shutil.copytree(DATA / rule_set, root, dirs_exist_ok=True)
    for sub in ("cpu", "memory"):
        f = root / f"sys/devices/system/{sub}/crash_hotplug"
        if crash_hotplug is not None:
            f.write_text(crash_hotplug + "\n")
    return root


@needs_vectors
@pytest.mark.parametrize("rule_set", sorted(EXPECTED))
@pytest.mark.parametrize("crash_hotplug", ["1", "0"])
def test_status_per_event_matches_a_hand_reading(tmp_path: Path, rule_set: str, crash_hotplug: str) -> None:
    code, st = status(install(tmp_path, rule_set, crash_hotplug))
    udev = st["udev"]
    assert isinstance(udev, list)
    got = {f"{v['subsystem']} {v['action']}": v for v in udev}
    for event in EVENTS:
        want = None if rule_set in AWARE and crash_hotplug == "1" else EXPECTED[rule_set].get(event)
        v = got[event]
        assert v["reloads"] is (want is not None), (rule_set, event, v)
        if want is not None:
            assert any(b.startswith(want + ":") for b in v["by"]), (want, v["by"])
    risks = [r["code"] for r in st["risks"]]  # type: ignore[attr-defined]
    reloads = any(EXPECTED[rule_set].values()) and not (rule_set in AWARE and crash_hotplug == "1")
    assert ("reload-races" in risks) is reloads
    if crash_hotplug == "0":
        assert "kexec-load-without-hotplug" in risks
    assert code == (1 if risks else 0)


@needs_vectors
def test_kdump_utils_with_crash_hotplug_is_safe(tmp_path: Path) -> None:
    code, st = status(install(tmp_path, "kdump-utils", "1"))
    assert code == 0 and st["verdict"] == "safe" and st["udev_rule_files"] == [RH]


@needs_vectors
def test_6_1_without_crash_hotplug(tmp_path: Path) -> None:
    """6.1 has no crash_hotplug: Debian's rule keeps the header true by reloading (and races),
    SUSE's x86 rule reloads on memory only, so CPU hot-add leaves the header stale."""
    code, st = status(install(tmp_path, "debian-kdump-tools", None, kernel="6.1"))
    codes = [r["code"] for r in st["risks"]]  # type: ignore[attr-defined]
    assert code == 1 and codes == ["reload-races"]
    code, st = status(install(tmp_path / "s", "suse-kdump", None, kernel="6.1"))
    codes = [r["code"] for r in st["risks"]]  # type: ignore[attr-defined]
    assert code == 1 and "stale-cpu" in codes and "stale-memory" not in codes


def test_etc_overrides_and_dev_null_masks(tmp_path: Path) -> None:
    lib = tmp_path / "usr/lib/udev/rules.d"
    lib.mkdir(parents=True)
    shutil.copy(DATA / "rhel8-kexec-tools/usr/lib/udev/rules.d/98-kexec.rules", lib)
    etc = tmp_path / "etc/udev/rules.d"
    etc.mkdir(parents=True)
    (etc / "98-kexec.rules").symlink_to("/dev/null")
    rs = load_rules(tmp_path)
    assert rs.files == () and any("masked" in o for o in rs.overridden)
    (etc / "98-kexec.rules").unlink()
    (etc / "98-kexec.rules").write_text('SUBSYSTEM=="memory", RUN+="/usr/bin/kdumpctl reload"\n')
    rs = load_rules(tmp_path)
    assert [f.path for f in rs.files] == ["/etc/udev/rules.d/98-kexec.rules"]
    (etc / "10-a.rules").write_text('GOTO="nowhere"\nthis is not a rule\n')
    rs = load_rules(tmp_path)
    assert [f.path for f in rs.files] == ["/etc/udev/rules.d/10-a.rules", "/etc/udev/rules.d/98-kexec.rules"]
    assert len(rs.warnings) == 1 and ":2:" in rs.warnings[0]


def test_unknown_program_is_unknown_not_no() -> None:
    from crash_hotplug.legacy.udev import evaluate, parse_rules

    rf = parse_rules('SUBSYSTEM=="memory", PROGRAM="/usr/bin/is-it-on", RESULT=="yes", '
                     'RUN+="/usr/bin/kdumpctl reload"\n', "/etc/udev/rules.d/x.rules")
    res = evaluate([rf], HotplugEvent("memory", "online"))
    assert res.reload_verdict is None and res.reloads_kdump
    assert any("PROGRAM" in a for a in res.deciding_assumptions)
    res = evaluate([rf], HotplugEvent("cpu", "add"))
    assert res.reload_verdict is False


def test_commands() -> None:
    assert kdump_effect("/usr/sbin/kdump-config try-reload").kind == "reload"  # type: ignore[union-attr]
    assert kdump_effect("/bin/systemctl try-restart kdump.service").kind == "reload"  # type: ignore[union-attr]
    assert kdump_effect("/usr/lib/kdump/load-once.sh").kind == "throttled-reload"  # type: ignore[union-attr]
    assert kdump_effect("/usr/bin/kdumpctl reload").kind == "reload"  # type: ignore[union-attr]
    sh = "/bin/sh -c '/usr/bin/systemctl is-active kdump.service || exit 0; /usr/bin/systemd-run " \
         "--quiet --no-block /usr/lib/udev/kdump-udev-throttler'"
    assert kdump_effect(sh).kind == "throttled-reload"  # type: ignore[union-attr]
    assert kdump_effect("/bin/systemctl try-restart foo.service") is None
    assert kdump_effect("/usr/sbin/kdump-config unload").kind == "unload"  # type: ignore[union-attr]


def test_test_import_goto_and_run_operators() -> None:
    from crash_hotplug.legacy.udev import ABSENT, Probe, evaluate, parse_rules

    text = "\n".join([
        'SUBSYSTEM!="memory", GOTO="end"',
        'TEST=="/sys/kernel/fadump/registered", GOTO="end"',
        'IMPORT{cmdline}="nokdumpreload", GOTO="end"',
        'ENV{KDUMP}="1"',
        'ENV{KDUMP}=="1", RUN+="/usr/bin/logger hotplug"',
        'RUN+="/usr/bin/kdumpctl reload"',
        'ACTION=="offline", RUN="/usr/bin/logger only"',
        'ACTION=="add", RUN:="/usr/bin/kdumpctl reload"',
        'ACTION=="add", RUN="/bin/true"',
        'GOTO="no_such_label"',
        'LABEL="end"',
    ]) + "\n"
    rf = parse_rules(text, "/etc/udev/rules.d/t.rules")
    probe = Probe(read=lambda p: ABSENT, exists=lambda p: False, cmdline="quiet")
    on = evaluate([rf], HotplugEvent("memory", "online"), probe)
    assert on.reload_verdict is True and on.runs[-1][1] == "/usr/bin/kdumpctl reload"
    assert ("/etc/udev/rules.d/t.rules:5", "/usr/bin/logger hotplug") in on.runs
    assert evaluate([rf], HotplugEvent("memory", "offline"), probe).reload_verdict is False, "RUN= replaced it"
    assert evaluate([rf], HotplugEvent("memory", "add"), probe).reload_verdict is True, "RUN:= is final"
    assert evaluate([rf], HotplugEvent("cpu", "add"), probe).reload_verdict is False
    fadump = Probe(read=lambda p: ABSENT, exists=lambda p: True, cmdline="quiet")
    assert evaluate([rf], HotplugEvent("memory", "online"), fadump).reload_verdict is False
    noreload = Probe(read=lambda p: ABSENT, exists=lambda p: False, cmdline="quiet nokdumpreload")
    assert evaluate([rf], HotplugEvent("memory", "online"), noreload).reload_verdict is False
    unknown = evaluate([rf], HotplugEvent("memory", "online"))  # TEST and cmdline unknown
    assert unknown.reload_verdict is None
