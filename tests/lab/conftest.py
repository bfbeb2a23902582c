"""Fixtures for the lab tests: the real-kernel vectors read as run directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import VECTORS

KERNELS = ("6.1", "6.12.43", "6.12")


@pytest.fixture(scope="session")
def vectors() -> Path:
    if VECTORS is None:
        pytest.skip("the real-kernel vectors (../shared/vectors) are not beside this clone")
    return VECTORS


@pytest.fixture(params=KERNELS)
def vector_run(request: pytest.FixtureRequest, vectors: Path) -> Path:
    return vectors / request.param / "base"
