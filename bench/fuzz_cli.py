"""Fuzz every command that reads a file, each case in its own process with a timeout and an
address-space limit, and print how many cases ended in each outcome.

Inputs are mutations of the real files in ../shared/vectors (copied into a temporary directory,
which is removed afterwards): snapshot roots for ``build``/``status``/``audit --root``, raw headers
and vmcores for ``show``/``diff``/``audit``, step files for ``scenario run``, and odd sizes for
``simulate resize``; plus FIFOs, ``/dev/zero`` and 4 GiB sparse files where a file is expected.

Outcomes: ``ok`` (exit 0), ``finding`` (exit 1), ``clean-error`` (exit 2, one line on stderr naming
the input), and the failures: ``unclean-error`` (exit 2 without exactly one line naming the input),
``traceback``, ``hang`` (past the timeout), ``crash`` (a signal, MemoryError, any other status).

Run: ``python bench/fuzz_cli.py [--cases N] [--seed S] [--timeout SEC] [--jobs J]``; exit 1 when
any case failed (the failing command lines are printed).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO.parent / "shared" / "vectors"
SCEN = VECTORS / "6.12.43" / "base"
AS_LIMIT = 2 << 30
CPU = "sys/devices/system/cpu"

ROOT_FILES = ["proc/iomem", "proc/kallsyms", "proc/cmdline", "proc/sys/kernel/osrelease", "sys/kernel/vmcoreinfo",
              "sys/kernel/kexec_crash_loaded", "sys/kernel/kexec_crash_size", "sys/kernel/crash_elfcorehdr_size",
              f"{CPU}/possible", f"{CPU}/present", f"{CPU}/online", f"{CPU}/kernel_max", f"{CPU}/crash_hotplug",
              f"{CPU}/cpu0/crash_notes", f"{CPU}/cpu1/crash_notes", f"{CPU}/cpu0/crash_notes_size",
              "sys/devices/system/memory/crash_hotplug", "var/log/dmesg", "proc/kcore"]
ODD = ["0", "1", "0x1", "1\0", "-1", "\uff16", "0-99999999", "ffffffffffffffff", "", "\n\n", " 1", "1 ", "nan",
       "99999999999999999999999", "0,0", "1-0", "0-1,1"]


@dataclass(frozen=True)
class Case:
    command: str
    args: list[str]
    names: str  # what a clean error must mention


def _mutate_text(rng: random.Random, text: str) -> str:
    lines = text.splitlines(keepends=True) or [""]
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        op = rng.randrange(7)
        if op == 0:
            lines.insert(i, lines[i])
        elif op == 1 and len(lines) > 1:
            del lines[i]
        elif op == 2 and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        elif op == 3:
            j = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:j] + rng.choice("0123456789abcdefABCDEFx -:,\uff16\0\t\n") + lines[i][j + 1:]
        elif op == 4:
            lines[i] = rng.choice(ODD) + "\n"
        elif op == 5:
            s = rng.randrange(1 << rng.choice([20, 32, 52, 64]))
            lines.insert(i, f"{'  ' * rng.randrange(3)}{s:08x}-{s + rng.randrange(1 << 30):08x} : "
                            f"{rng.choice(['System RAM', 'Crash kernel', 'Reserved', 'Kernel code'])}\n")
        else:
            lines.insert(i, "x" * rng.choice([1, 100, 70000]) + "\n")
    return "".join(lines)


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            break
        op = rng.randrange(4)
        if op == 0:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1:
            off = rng.randrange(0, max(1, min(len(buf), 64 + 56 * 16) - 8))
            v = rng.choice([0, 1, 0x38, 0x40, 0x1000, 1 << 32, 1 << 52, 1 << 63, (1 << 64) - 1, rng.randrange(1 << 64)])
            buf[off:off + 8] = v.to_bytes(8, "little")
        elif op == 2:
            del buf[rng.randrange(len(buf) + 1):]
        else:
            off = rng.choice([16, 18, 52, 54, 56, 58])
            if off + 2 <= len(buf):
                buf[off:off + 2] = rng.choice([0, 1, 0xFFFF, 56, 64, 4]).to_bytes(2, "little")
    return bytes(buf)


def _special(rng: random.Random, path: Path) -> str:
    """Replace ``path`` by something that is not a bounded regular file."""
    kind = rng.choice(["fifo", "dev-zero", "dir", "sparse"])
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "dir":
        path.mkdir()
    else:
        with path.open("wb") as f:
            f.truncate(4 << 30)
    return kind


def _root_case(rng: random.Random, work: Path, n: int) -> Path:
    step = rng.choice(["S0", "S1", "S3", "S5"])
    root = work / f"root{n}"
    shutil.copytree(SCEN / step / "root", root, symlinks=True)
    rel = rng.choice(ROOT_FILES)
    p = root / rel
    if rng.random() < 0.15:
        _special(rng, p)
    elif rel == "proc/kcore":
        p.write_bytes(_mutate_bytes(rng, p.read_bytes()[:65536]))
    else:
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError):
            text = ""
        p.write_text(_mutate_text(rng, text), errors="surrogatepass")
    return root


def _core_case(rng: random.Random, work: Path, n: int) -> Path:
    src = rng.choice([SCEN / "vmcore-headers.bin", SCEN / "S0" / "elfcorehdr.bin", SCEN / "S3" / "elfcorehdr.bin"])
    p = work / f"core{n}"
    if rng.random() < 0.1:
        _special(rng, p)
        return p
    data = _mutate_bytes(rng, src.read_bytes())
    p.write_bytes(data)
    if rng.random() < 0.1:
        with p.open("r+b") as f:
            f.truncate(4 << 30)
    return p


def _steps_case(rng: random.Random, work: Path, n: int) -> Path:
    steps: list[object] = [{"op": "load"}, {"op": "add_dimm", "size_mib": 1024, "idx": 1}, {"op": "add_cpus", "n": 2},
                           {"op": "offline_cpu", "cpu": 1}, {"op": "del_dimm", "idx": 1}, {"op": "panic"}]
    odd: list[object] = [None, -3, 1.5, "1", True, 10**30, [], {}, "last_online", 0, 7, 99999]
    for _ in range(rng.randint(1, 2)):
        i = rng.randrange(len(steps))
        st = steps[i]
        if isinstance(st, dict) and rng.random() < 0.8:
            key = rng.choice([*st.keys(), "idx", "n", "cpu", "size_mib", "start", "bogus"])
            st[key] = rng.choice(odd)
        else:
            steps[i] = rng.choice(odd)
    p = work / f"steps{n}.json"
    p.write_text(json.dumps(steps) if rng.random() < 0.95 else json.dumps(steps)[: rng.randrange(40)])
    return p


def make_case(rng: random.Random, work: Path, n: int) -> Case:
    kind = rng.choice(["build", "status", "show", "diff", "audit", "audit-root", "scenario", "resize"])
    if kind in ("build", "status"):
        root = _root_case(rng, work, n)
        args = (["elfcorehdr", "build", "--root", str(root), "-o", str(work / f"h{n}.bin")] if kind == "build"
                else ["status", "--root", str(root)])
        return Case(kind, args, str(root))
    if kind == "show":
        p = _core_case(rng, work, n)
        return Case(kind, ["elfcorehdr", "show", str(p)] + (["--json"] if rng.random() < 0.3 else []), str(p))
    if kind == "diff":
        a, b = _core_case(rng, work, n), SCEN / "S0" / "elfcorehdr.bin"
        return Case(kind, ["elfcorehdr", "diff", str(b), str(a)], str(a))
    if kind == "audit":
        p = _core_case(rng, work, n)
        return Case(kind, ["audit", str(p), "--root", str(SCEN / "S5" / "root")], str(p))
    if kind == "audit-root":
        root = _root_case(rng, work, n)
        return Case(kind, ["audit", str(SCEN / "vmcore-headers.bin"), "--root", str(root)], str(root))
    if kind == "scenario":
        p = _steps_case(rng, work, n)
        return Case(kind, ["scenario", "run", "--steps", str(p), "-o", str(work / f"out{n}")], str(p))
    opt = rng.choice(["--block", "--to", "--from", "--dimm"])
    val = rng.choice(["1", "4K", "99999999999999999999", "0", "-1G", "nan", "1e9G", "128M", "3G", "1T", "\uff11G"])
    return Case(kind, ["simulate", "resize", opt, val], opt)


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run_case(case: Case, timeout: float) -> str:
    try:
        p = subprocess.run([sys.executable, "-m", "crash_hotplug", *case.args], capture_output=True, timeout=timeout,
                           preexec_fn=_limits, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return "hang"
    err = p.stderr.decode(errors="replace")
    if "Traceback" in err:
        return "crash" if "MemoryError" in err else "traceback"
    if p.returncode == 0:
        return "ok"
    if p.returncode == 1:
        return "finding"
    if p.returncode == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        if len(lines) == 1 and case.names in lines[0]:
            return "clean-error"
        if lines and lines[-1].startswith("Error:") and case.command == "resize":
            return "clean-error"  # click's usage error for an option value (names the option)
        return "unclean-error"
    return "crash"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    if not SCEN.is_dir():
        print("fuzz_cli: ../shared/vectors not found; skipped")
        return 0
    rng = random.Random(a.seed)
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    failures: list[tuple[str, Case]] = []
    with tempfile.TemporaryDirectory(prefix="crash-hotplug-fuzz-") as tmp:
        work = Path(tmp)
        batch = 50
        for start in range(0, a.cases, batch):
            cases = [make_case(rng, work, n) for n in range(start, min(a.cases, start + batch))]
            with ThreadPoolExecutor(a.jobs) as pool:
                outcomes = list(pool.map(lambda c: run_case(c, a.timeout), cases))
            for c, o in zip(cases, outcomes, strict=True):
                counts[c.command][o] += 1
                if o not in ("ok", "finding", "clean-error"):
                    failures.append((o, c))
            for child in work.iterdir():  # keep the temporary directory small
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink()
    outcomes_all = ["ok", "finding", "clean-error", "unclean-error", "traceback", "hang", "crash"]
    print(f"{a.cases} cases (seed {a.seed}, timeout {a.timeout:g} s, address space {AS_LIMIT >> 30} GiB)")
    print(f"{'command':<12}" + "".join(f"{o:>15}" for o in outcomes_all))
    total: collections.Counter[str] = collections.Counter()
    for cmd in sorted(counts):
        total.update(counts[cmd])
        print(f"{cmd:<12}" + "".join(f"{counts[cmd][o]:>15}" for o in outcomes_all))
    print(f"{'all':<12}" + "".join(f"{total[o]:>15}" for o in outcomes_all))
    for o, c in failures[:40]:
        print(f"{o}: crash-hotplug {' '.join(c.args)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
