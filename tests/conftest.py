"""Shared fixtures: the real-kernel vectors (read in place from ../shared/vectors) and helpers."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.makedumpfile_cases import ModelDump

REPO = Path(__file__).resolve().parents[1]
#: the ``model_dumps`` fixture: a model dump by case name
ModelDumps = Callable[[str], "ModelDump"]


def vectors_dir() -> Path | None:
    env = os.environ.get("CRASH_HOTPLUG_VECTORS")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "vectors", REPO / ".." / "shared" / "vectors"]:
        if (cand / "README.md").is_file():
            return cand.resolve()
    return None


VECTORS = vectors_dir()


@dataclass(frozen=True)
class VectorStep:
    kernel: str
    scenario: str
    name: str
    path: Path

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def header(self) -> bytes:
        return (self.path / "elfcorehdr.bin").read_bytes()

    @property
    def meta(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "step.json").read_text())
        return data

    @property
    def id(self) -> str:
        return f"{self.kernel}/{self.scenario}/{self.name}"


def vector_scenarios() -> list[Path]:
    if VECTORS is None:
        return []
    return sorted(p.parent for p in VECTORS.glob("*/*/scenario.json"))


def vector_steps() -> list[VectorStep]:
    out = []
    for scen in vector_scenarios():
        for s in sorted(scen.glob("S*"), key=lambda p: int(p.name[1:])):
            out.append(VectorStep(scen.parent.name, scen.name, s.name, s))
    return out


def last_rebuild_step(step: VectorStep) -> VectorStep:
    """The step whose snapshot the header in memory at ``step`` was built from: the load step,
    or the latest step (up to this one) whose step.json says the header changed."""
    steps = [s for s in vector_steps() if (s.kernel, s.scenario) == (step.kernel, step.scenario)]
    idx = [s.name for s in steps].index(step.name)
    for s in reversed(steps[: idx + 1]):
        if s.meta.get("header_changed_vs_previous_step") in (None, True):
            return s
    return steps[0]


needs_vectors = pytest.mark.skipif(VECTORS is None, reason="../shared/vectors not found beside the repository")


def ppc64_vectors_dir() -> Path | None:
    """../shared/vectors-ppc64 (or $CRASH_HOTPLUG_VECTORS_PPC64), read in place."""
    env = os.environ.get("CRASH_HOTPLUG_VECTORS_PPC64")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "vectors-ppc64"]:
        if (cand / "README.md").is_file():
            return cand.resolve()
    return None


VECTORS_PPC64 = ppc64_vectors_dir()


@dataclass(frozen=True)
class Ppc64Step(VectorStep):
    """One step of a ppc64le capture: the header, the crash kernel's FDT, the snapshot."""

    @property
    def fdt(self) -> bytes:
        return (self.path / "crash-fdt.dtb").read_bytes()


def ppc64_scenarios() -> list[Path]:
    if VECTORS_PPC64 is None:
        return []
    return sorted(p.parent for p in VECTORS_PPC64.glob("*/*/scenario.json"))


def ppc64_steps(scenario: Path | None = None) -> list[Ppc64Step]:
    out = []
    for scen in [scenario] if scenario is not None else ppc64_scenarios():
        for s in sorted(scen.glob("S*"), key=lambda p: int(p.name[1:])):
            out.append(Ppc64Step(scen.parent.name, scen.name, s.name, s))
    return out


needs_ppc64_vectors = pytest.mark.skipif(VECTORS_PPC64 is None,
                                         reason="../shared/vectors-ppc64 not found beside the repository")


@pytest.fixture(scope="session")
def model_dumps() -> Iterator[ModelDumps]:
    """Model vmcores of :data:`tests.makedumpfile_cases.MODEL_DUMP_CASES` by name, made on first use
    in a temporary directory that is removed after the session; ``.convert(...)`` runs makedumpfile."""
    from tests.makedumpfile_cases import MODEL_DUMP_CASES, make_model_dump

    with tempfile.TemporaryDirectory(prefix="crash-hotplug-dumps-") as tmp:
        made: dict[str, ModelDump] = {}

        def get(name: str) -> ModelDump:
            if name not in made:
                made[name] = make_model_dump(MODEL_DUMP_CASES[name], Path(tmp))
            return made[name]

        yield get
