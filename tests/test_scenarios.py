"""Scenario scripts (tests/scenarios/*.json) on the device core: the incidents the product is for.

Each scenario runs under CPython and under the real MicroPython interpreter through the same
runner (tests/mpy/scenario_runner.py); the two timelines must be identical, must contain the
`expect` lines in order, and must not contain any `forbid` line. Wraparound: the same scenario
started just before the tick counter wraps gives the same timeline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jikimi import ticks

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.json"))
RUNNER = Path(__file__).parent / "mpy" / "scenario_runner.py"


def run_cpython(scenario: Path, flash: Path, start: int = 0) -> str:
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(scenario), str(flash), str(start)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_micropython(micropython, scenario: Path, flash: Path, start: int = 0) -> str:
    return micropython.script("scenario_runner.py", str(scenario), str(flash), str(start)).check().stdout


def check_expectations(timeline: str, scenario: dict) -> None:
    lines = timeline.splitlines()
    at = 0
    for wanted in scenario["expect"]:
        for index in range(at, len(lines)):
            if wanted in lines[index]:
                at = index + 1
                break
        else:
            pytest.fail(f"{scenario['name']}: expected {wanted!r} after line {at}:\n{timeline}")
    for unwanted in scenario["forbid"]:
        hits = [line for line in lines if unwanted in line]
        assert not hits, f"{scenario['name']}: {unwanted!r} must not happen: {hits}"


def fresh_flash(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


@pytest.mark.micropython
@pytest.mark.parametrize("scenario_path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario_on_both_runtimes(scenario_path, micropython, tmp_path):
    scenario = json.loads(scenario_path.read_text())
    on_cpython = run_cpython(scenario_path, fresh_flash(tmp_path, "cpython"))
    check_expectations(on_cpython, scenario)
    on_micropython = run_micropython(micropython, scenario_path, fresh_flash(tmp_path, "micropython"))
    assert on_micropython == on_cpython


@pytest.mark.micropython
@pytest.mark.parametrize("name", ["loud_alarm_hold", "pocket_bumps", "door_intrusion", "cancel_window"])
def test_scenario_is_the_same_across_the_tick_wraparound(name, micropython, tmp_path):
    path = Path(__file__).parent / "scenarios" / f"{name}.json"
    reference = run_cpython(path, fresh_flash(tmp_path, "reference"))
    start = ticks.PERIOD - 4000  # wraps 4 s in, in the middle of the gestures
    assert run_cpython(path, fresh_flash(tmp_path, "cpython"), start) == reference
    assert run_micropython(micropython, path, fresh_flash(tmp_path, "micropython"), start) == reference
