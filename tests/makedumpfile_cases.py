"""Model vmcores and what Debian's makedumpfile makes of them, for the tests of every vmcore format.

Three runs of the model, each on a small machine (256 MiB, 64 MiB crashkernel) so a whole vmcore is
a few hundred MiB at most:

- ``complete``: 6.12.43 with the upstream handler; a DIMM and a CPU hot-added, a CPU offlined, a
  panic: the dump is complete (audit exit 0).
- ``no-hotplug-6.1``: 6.1 (no crash hotplug, no udev reload); a DIMM and two CPUs hot-added, a
  panic on a hot-added CPU: CPUs 2 and 3 and the DIMM are missing (audit exit 1).
- ``dimm-removed``: 6.12.43 upstream; two DIMMs hot-added, the lower one removed, a panic right
  after: the header still lists the removed DIMM, which is extra memory (audit exit 1). The
  removed DIMM sits below a present one, so makedumpfile's trim of ``max_mapnr`` to the last
  present section does not hide it.
- ``dimm-removed-top``: the same with one DIMM, so the removed memory was above all other memory:
  the ELF shows it as extra, but makedumpfile trims ``max_mapnr`` to the last present section
  (``get_mem_map``) and leaves it out of every kdump-compressed file.

:meth:`ModelDump.convert` runs the real makedumpfile on the ELF vmcore with the given output
options and dump level, once per combination (``-c``, ``-l``, ``-E``, ``-F``, ``-F -E`` ...); the
``model_dumps`` fixture in ``tests/conftest.py`` makes them in a temporary directory removed after
the session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crash_hotplug.crash.panic import write_panic_artifacts
from crash_hotplug.machine.machine import Machine
from crash_hotplug.scenario import ScenarioRun

__all__ = [
    "MODEL_DUMP_CASES",
    "Makedumpfile",
    "ModelDump",
    "ModelDumpCase",
    "make_model_dump",
    "makedumpfile_path",
    "trixie_makedumpfile",
]

PANIC: dict[str, Any] = {"op": "panic", "cpu": "last_online"}


@dataclass(frozen=True)
class ModelDumpCase:
    """One model run that ends in a panic: kernel profile, design, steps and the expected audit exit."""

    name: str
    kernel: str
    design: str
    steps: tuple[Mapping[str, Any], ...]
    audit_exit: int
    cpus: int = 2


MODEL_DUMP_CASES: dict[str, ModelDumpCase] = {c.name: c for c in (
    ModelDumpCase("complete", "6.12.43", "upstream", (
        {"op": "load"}, {"op": "add_dimm", "idx": 1, "size_mib": 128}, {"op": "add_cpus", "n": 1},
        {"op": "offline_cpu", "cpu": 1}, PANIC), audit_exit=0),
    ModelDumpCase("no-hotplug-6.1", "6.1", "none", (
        {"op": "load"}, {"op": "add_dimm", "idx": 1, "size_mib": 128}, {"op": "add_cpus", "n": 2}, PANIC),
        audit_exit=1),
    ModelDumpCase("dimm-removed", "6.12.43", "upstream", (
        {"op": "load"}, {"op": "add_dimm", "idx": 1, "size_mib": 128}, {"op": "add_dimm", "idx": 2, "size_mib": 128},
        {"op": "del_dimm", "idx": 1}, PANIC), audit_exit=1),
    ModelDumpCase("dimm-removed-top", "6.12.43", "upstream", (
        {"op": "load"}, {"op": "add_dimm", "idx": 1, "size_mib": 128}, {"op": "del_dimm", "idx": 1}, PANIC),
        audit_exit=1),
)}


@dataclass(frozen=True)
class Makedumpfile:
    """A makedumpfile binary to run, with the environment it needs and the version it reports."""

    path: str
    env: Mapping[str, str] | None = None
    version: str = ""

    def run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        env = None if self.env is None else {**os.environ, **self.env}
        return subprocess.run([self.path, *argv], env=env, **kw)


def trixie_makedumpfile() -> Makedumpfile:
    """Debian trixie's makedumpfile (1.7.6, built with zstd, which bookworm's 1.7.2 is not), from the
    archive through the lab's private apt set-up, unpacked once into the cache. It runs on bookworm
    with trixie's libzstd1 beside it (its other libraries keep their sonames and symbols)."""
    from crash_hotplug.lab.debian import cache_dir, default_archive, extract_from_deb

    archive = default_archive()
    md_deb, md_ver = archive.download("makedumpfile", "trixie")
    zstd_deb, zstd_ver = archive.download("libzstd1", "trixie")
    dest = cache_dir() / "tools" / f"makedumpfile-trixie-{md_ver.replace(':', '_')}-zstd-{zstd_ver.replace(':', '_')}"
    if not (dest / "usr/bin/makedumpfile").is_file():
        part = dest.with_name(f"{dest.name}.{os.getpid()}")
        shutil.rmtree(part, ignore_errors=True)
        extract_from_deb(md_deb, part, ["./usr/bin/makedumpfile"])
        extract_from_deb(zstd_deb, part, ["./usr/lib/x86_64-linux-gnu/libzstd.so.1*"], merge=True)
        shutil.rmtree(dest, ignore_errors=True)
        part.rename(dest)
    return Makedumpfile(str(dest / "usr/bin/makedumpfile"), {"LD_LIBRARY_PATH": str(dest / "usr/lib/x86_64-linux-gnu")},
                        md_ver)


def makedumpfile_path() -> str:
    """The makedumpfile binary (``bash tasks test`` installs Debian's); AssertionError when absent."""
    path = shutil.which("makedumpfile")
    assert path is not None, "makedumpfile is not installed (bash tasks test installs Debian's package)"
    return path


@dataclass
class ModelDump:
    """A model run at its panic: the snapshot (``root``), the whole ELF vmcore, and makedumpfile's files."""

    case: ModelDumpCase
    dir: Path
    root: Path
    vmcore: Path
    panic_cpu: int
    _made: dict[tuple[tuple[str, ...], int, str], Path] = field(default_factory=dict, repr=False)

    def convert(self, *options: str, level: int = 1, tool: Makedumpfile | None = None) -> Path:
        """``makedumpfile OPTIONS -d LEVEL vmcore OUT`` (``-F`` writes to stdout, as into a pipe) with
        ``tool`` (default: the installed one, Debian bookworm's); made once per (options, level,
        tool) and kept for the session."""
        mdf = tool or Makedumpfile(makedumpfile_path())
        key = (tuple(options), level, mdf.path)
        done = self._made.get(key)
        if done is not None:
            return done
        tag = "".join(o.strip("-") for o in options) or "kdump"
        out = self.dir / f"{self.case.name}-d{level}.{tag}{'' if tool is None else '.' + str(len(self._made))}"
        argv = [*options, "-d", str(level), "--message-level", "1", str(self.vmcore)]
        if "-F" in options:
            with out.open("wb") as f:
                res = mdf.run(argv, stdout=f, stderr=subprocess.PIPE, timeout=300, check=False)
        else:
            res = mdf.run([*argv, str(out)], capture_output=True, timeout=300, check=False)
        why = res.stderr.decode()[-2000:]
        assert res.returncode == 0, f"{mdf.path} {' '.join(argv)} failed ({res.returncode}): {why}"
        self._made[key] = out
        return out


def make_model_dump(case: ModelDumpCase, out_dir: Path) -> ModelDump:
    """Run ``case`` on a 256 MiB machine and write its snapshot and whole vmcore under ``out_dir/<name>``."""
    machine = Machine.new(mem_gib=0.25, cpus=case.cpus, crashkernel="64M", kernel=case.kernel)
    run = ScenarioRun.start(machine, case.design).run(case.steps)
    assert run.panic is not None and run.panic.vmcore is not None, f"{case.name}: no dump: {run.panic}"
    d = out_dir / case.name
    root, vmcore = write_panic_artifacts(run.machine, run.panic, d)
    assert vmcore is not None
    return ModelDump(case, d, root, vmcore, run.panic.panic_cpu)
