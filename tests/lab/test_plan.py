"""Scenario plans: the shipped files, and one clear error for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crash_hotplug.lab.errors import ScenarioError
from crash_hotplug.lab.plan import load_plan, plan_from_json, shipped_scenarios


def test_shipped_scenarios_parse() -> None:
    names = shipped_scenarios()
    assert {"base", "short", "cpu", "storm"} <= set(names)
    for name in names:
        plan = load_plan(name)
        assert plan.name == name
        assert plan.steps[0]["op"] == "load"


def test_base_is_the_vectors_plan(vectors: Path) -> None:
    for kernel in ("6.1", "6.12.43", "6.12"):
        real = json.loads((vectors / kernel / "base" / "scenario.json").read_text())["plan"]
        assert list(load_plan("base").steps) == real["steps"]


def test_a_vectors_scenario_json_is_a_plan(vectors: Path) -> None:
    data = json.loads((vectors / "6.12.43" / "base" / "scenario.json").read_text())
    assert [s["op"] for s in plan_from_json(data).steps][-1] == "panic"


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"steps": []}, "non-empty"),
        ({"steps": [{"op": "fly"}]}, "unknown op"),
        ({"steps": [{"op": "add_dimm", "idx": 1}]}, "missing 'size_mib'"),
        ({"steps": [{"op": "add_dimm", "idx": 1, "size_mib": 100}]}, "multiple of 128"),
        ({"steps": [{"op": "add_dimm", "idx": True, "size_mib": 128}]}, "'idx' must be int"),
        ({"steps": [{"op": "load", "colour": 1}]}, "unknown argument"),
        ({"steps": [{"op": "panic"}, {"op": "load"}]}, "must be the last"),
        ({"steps": [{"op": "panic", "cpu": "first"}]}, "last_online"),
        ({"steps": [{"op": "load", "syscall": "kexec_fancy"}]}, "syscall"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_plans_are_one_clear_error(plan: object, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        plan_from_json(plan)


def test_unknown_scenario_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no scenario 'nope'"):
        load_plan("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ScenarioError, match="not valid JSON"):
        load_plan(str(bad))


def test_lab_run_bad_input_is_one_line_and_exit_1(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from crash_hotplug.cli.lab import lab

    runner = CliRunner()
    for args, message in (
        (["run", "nope", "--kernel", "6.12"], "no scenario 'nope'"),
        (["run", "short", "--kernel", "linux-5", "--out", str(tmp_path / "r")], "unknown kernel key 'linux-5'"),
    ):
        result = runner.invoke(lab, args)
        assert result.exit_code == 2
        assert message in " ".join(result.output.split())
        assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
