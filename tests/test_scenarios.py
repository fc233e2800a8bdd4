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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# Random scenario scripts: whatever happens, both runtimes must tell the same story. Times are
# on a coarse grid so that steps often coincide (their order must not depend on the runtime).
AT = st.integers(0, 120).map(lambda t: t * 500)

INPUT_STEPS = st.tuples(
    AT,
    st.sampled_from(["button", "door", "pull_pin", "tamper"]),
    st.integers(0, 1),
    st.lists(st.integers(1, 6), max_size=6).map(lambda gaps: gaps[: len(gaps) // 2 * 2]),
).map(lambda s: [s[0], "bounce", s[1], s[2], s[3]])
COMMAND_STEPS = st.tuples(
    AT,
    st.sampled_from([
        {"type": "ack", "seq": 1}, {"type": "ack", "seq": 2}, {"type": "cancel_alarm", "alarm_seq": 1},
        {"type": "arm"}, {"type": "disarm"}, {"type": "silence_siren"}, {"type": "locate", "seconds": 3},
        {"type": "request_status"}, {"type": "set_time", "time": 800000000},
    ]),
).map(lambda s: [s[0], "command", s[1]])
OTHER_STEPS = st.one_of(
    AT.map(lambda t: [t, "reboot"]),
    st.tuples(AT, st.integers(3000, 4300)).map(lambda s: [s[0], "battery", s[1]]),
)
random_scenarios = st.fixed_dictionaries({
    "name": st.just("random"),
    "config": st.fixed_dictionaries({
        "roles": st.sampled_from([["panic"], ["door"], ["panic", "door", "pull_pin"]]),
        "door": st.just({"exit_delay_ms": 3000, "entry_delay_ms": 3000}),
    }),
    "levels": st.fixed_dictionaries({"button": st.integers(0, 1), "door": st.integers(0, 1)}),
    "until_ms": st.just(65000),
    "sample_ms": st.sampled_from([50, 250]),
    "steps": st.lists(st.one_of(INPUT_STEPS, INPUT_STEPS, COMMAND_STEPS, OTHER_STEPS), max_size=40),
})


@pytest.mark.micropython
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=random_scenarios)
def test_random_scenarios_give_identical_timelines(scenario, micropython, tmp_path_factory):
    folder = tmp_path_factory.mktemp("random")
    path = folder / "scenario.json"
    path.write_text(json.dumps(scenario))
    assert run_micropython(micropython, path, fresh_flash(folder, "m")) == run_cpython(path, fresh_flash(folder, "c"))
