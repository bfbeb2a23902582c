"""Step files for ``scenario run --steps``: checked as a whole before anything runs, every error
one line naming the file, the step index and the field (the issue's tracebacks and unnamed errors)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from crash_hotplug.cli import cli
from crash_hotplug.scenario import SCRIPTED_STEPS, check_steps
from tests.cli_results import one_line_exit_2

LOAD = {"op": "load"}


def run_steps(tmp_path: Path, steps: Any, raw: str | None = None) -> tuple[Result, Path]:
    f = tmp_path / "steps.json"
    f.write_text(raw if raw is not None else json.dumps(steps))
    res = CliRunner().invoke(cli, ["scenario", "run", "-o", str(tmp_path / "out"), "--steps", str(f)],
                             catch_exceptions=False)
    return res, f


@pytest.mark.parametrize("bad, field, why", [
    ({"op": "del_dimm", "idx": None}, "'idx'", "must be an integer, found null"),
    ({"op": "del_dimm", "idx": 1.5}, "'idx'", "must be an integer, found 1.5"),
    ({"op": "del_dimm", "idx": "1"}, "'idx'", "must be an integer"),
    ({"op": "del_dimm", "idx": True}, "'idx'", "must be an integer, found true"),
    ({"op": "del_dimm"}, "'idx'", "missing"),
    ({"op": "add_cpus", "n": -3}, "'n'", "must be in [1, 8192], found -3"),
    ({"op": "add_cpus", "n": 10**30}, "'n'", "must be in"),
    ({"op": "add_dimm", "size_mib": 100}, "'size_mib'", "must be in [128"),
    ({"op": "add_dimm", "size_mib": 1000}, "'size_mib'", "multiple of 128"),
    ({"op": "add_dimm", "size_mib": 1024, "start": "１"}, "'start'", "must be an address"),
    ({"op": "add_dimm", "size_mib": 1024, "start": "0x1001"}, "'start'", "128 MiB-aligned"),
    ({"op": "offline_cpu", "cpu": "1"}, "'cpu'", "must be an integer"),
    ({"op": "offline_cpu", "cpu": 99999}, "'cpu'", "must be in"),
    ({"op": "panic", "cpu": "first"}, "'cpu'", "must be an integer"),
    ({"op": "panic", "busy": "yes"}, "'busy'", "true or false"),
    ({"op": "load", "syscall": "x"}, "'syscall'", "unknown field"),
])
def test_bad_field_names_file_step_and_field(tmp_path: Path, bad: dict[str, Any], field: str, why: str) -> None:
    res, f = run_steps(tmp_path, [LOAD, {"op": "add_dimm", "size_mib": 1024}, bad, {"op": "panic"}])
    one_line_exit_2(res, str(f), "step 2", field, why)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing ran


@pytest.mark.parametrize("steps, needle", [
    ({"steps": 3}, "expected a list of steps"),
    ({"plan": []}, "expected a list of steps"),
    ([1], "step 0: expected an object"),
    ([{"op": None}], "step 0: op null is not one of"),
    ([{"op": "explode"}], 'step 0: op "explode" is not one of'),
    ([{"op": "panic"}, LOAD], "step 1 (load): comes after the panic step"),
])
def test_bad_shapes(tmp_path: Path, steps: Any, needle: str) -> None:
    res, f = run_steps(tmp_path, steps)
    one_line_exit_2(res, str(f), needle)


def test_not_json_and_deep_nesting_and_fifo(tmp_path: Path) -> None:
    res, f = run_steps(tmp_path, None, raw="[{")
    one_line_exit_2(res, str(f), "not JSON")
    res, f = run_steps(tmp_path, None, raw="[" * 100_000 + "]" * 100_000)
    one_line_exit_2(res, str(f))
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    res = CliRunner().invoke(cli, ["scenario", "run", "-o", str(tmp_path / "o"), "--steps", str(fifo)])
    one_line_exit_2(res, str(fifo), "FIFO")


def test_a_step_the_machine_refuses_names_file_and_step(tmp_path: Path) -> None:
    """The issue's "no DIMM N was added" without the file and step."""
    res, f = run_steps(tmp_path, [LOAD, {"op": "add_dimm", "size_mib": 1024}, {"op": "del_dimm", "idx": 7},
                                  {"op": "panic"}])
    one_line_exit_2(res, str(f), "step 2 (del_dimm)", "no DIMM 7 was added")
    res, f = run_steps(tmp_path, [LOAD, {"op": "add_cpus", "n": 100}, {"op": "panic"}])
    one_line_exit_2(res, str(f), "step 1 (add_cpus)", "cannot add 100 CPUs")


def test_the_shipped_steps_and_the_vectors_plans_pass() -> None:
    assert check_steps(list(SCRIPTED_STEPS), "<scripted>") == list(SCRIPTED_STEPS)
    from tests.conftest import vector_scenarios

    for scen in vector_scenarios():
        steps = json.loads((scen / "scenario.json").read_text())["plan"]["steps"]
        check_steps(steps, str(scen))
