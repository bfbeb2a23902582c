"""Benchmark: peak resident memory of ``elfcorehdr show`` and ``audit`` on a 4 GB vmcore.

The vmcore is the 6.12.43 vector's capture (``vmcore-headers.bin``: headers and notes as the capture
kernel showed them) extended, sparse, to the size its PT_LOADs say a whole capture has (about 4 GB),
in a temporary directory that is removed afterwards. Each command runs in its own process; its
peak RSS comes from ``wait4``. Printed next to the file size and to the RSS of ``--help`` (the
interpreter and imports alone). Target: under 200 MB each, independent of the file's size.
Run: ``bash tasks bench`` or ``python bench/bench_vmcore_rss.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO.parent / "shared" / "vectors"
SCEN = VECTORS / "6.12.43" / "base"
TARGET_MB = 200


def peak_rss_mb(args: list[str]) -> tuple[int, float]:
    """(exit status, peak RSS in MB) of ``crash-hotplug ARGS`` in a child process."""
    p = subprocess.Popen([sys.executable, "-m", "crash_hotplug", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode() if p.stderr else ""
    if p.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)}: exit {p.returncode}: {err.strip()}")
    return p.returncode, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    if not (SCEN / "vmcore-headers.bin").is_file():
        print("bench_vmcore_rss: ../shared/vectors not found; skipped")
        return 0
    sys.path.insert(0, str(REPO / "src"))
    from crash_hotplug.crash.vmcore import read_vmcore_file

    size = read_vmcore_file(SCEN / "vmcore-headers.bin").data_end
    with tempfile.TemporaryDirectory(prefix="crash-hotplug-rss-") as tmp:
        vmcore = Path(tmp) / "vmcore"
        vmcore.write_bytes((SCEN / "vmcore-headers.bin").read_bytes())
        with vmcore.open("r+b") as f:
            f.truncate(size)
        on_disk = os.stat(vmcore).st_blocks * 512
        _, base = peak_rss_mb(["--help"])
        rows = [("--help (baseline)", base, 0)]
        for name, args in (("elfcorehdr show", ["elfcorehdr", "show", str(vmcore)]),
                           ("elfcorehdr show --json", ["elfcorehdr", "show", str(vmcore), "--json"]),
                           ("audit", ["audit", str(vmcore), "--root", str(SCEN / "S5" / "root")])):
            code, rss = peak_rss_mb(args)
            rows.append((name, rss, code))
    print(f"vmcore: {size} bytes ({size / 2**30:.2f} GiB; sparse, {on_disk} bytes on disk), removed after the run")
    worst = 0.0
    for name, rss, code in rows:
        print(f"  {name:<24} peak RSS {rss:7.1f} MB   exit {code}   RSS/file size {rss * 2**20 / size:.4f}")
        if not name.startswith("--help"):
            worst = max(worst, rss)
    verdict = "ok" if worst < TARGET_MB else "OVER TARGET"
    print(f"  worst {worst:.1f} MB vs target {TARGET_MB} MB: {verdict}")
    return 0 if worst < TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
