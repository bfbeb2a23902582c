"""Writing a snapshot from a root keeps every byte the header depends on."""

from __future__ import annotations

from pathlib import Path

from crash_hotplug.crash.x86_64 import elfcorehdr_from_root
from crash_hotplug.snapshot.writer import write_snapshot
from tests.conftest import needs_vectors, vector_steps


@needs_vectors
def test_snapshot_of_a_snapshot_builds_the_same_header(tmp_path: Path) -> None:
    for step in vector_steps()[:6]:
        out = tmp_path / step.id.replace("/", "_")
        rep = write_snapshot(step.root, out)
        assert rep.files_written > 50
        assert not rep.unreadable_files
        assert elfcorehdr_from_root(out) == elfcorehdr_from_root(step.root)
        kcore = (out / "proc/kcore").read_bytes()
        assert kcore == (step.root / "proc/kcore").read_bytes()[: len(kcore)]


@needs_vectors
def test_snapshot_reports_what_it_cannot_see(tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "src"
    shutil.copytree(vector_steps()[0].root, src)
    (src / "proc/kcore").unlink()
    text = (src / "proc/iomem").read_text()
    import re

    (src / "proc/iomem").write_text(re.sub(r"[0-9a-f]+-[0-9a-f]+", "00000000-00000000", text))
    rep = write_snapshot(src, tmp_path / "out")
    joined = "\n".join(rep.cannot_see)
    assert "/proc/iomem: every address reads as zero" in joined
    assert "/proc/kcore: missing" in joined
