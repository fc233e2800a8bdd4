"""MicroPython's own two-device BLE tests as an outside referee of the virtual radio: each
multitest (MicroPython's multi_bluetooth/ble_* and perf_*, aioble's multitests/ble_*) runs on
two MicroPython Unix-port processes (NimBLE) on a radio process of its own
(jikimi_host.sim.referee). They were written against real controllers, so one that passes says
the emulation behaves like a radio there.

Needs the NimBLE build of MicroPython and MicroPython's test files (see referee's docstring for
where they are looked for); skipped, naming what is missing, without them. The perf tests'
figures are printed (pytest -s, or -rP) and appended as JSON lines to `referee-perf.jsonl` in
pytest's base temporary folder (e.g. /tmp/pytest-of-$USER/pytest-N/referee-perf.jsonl);
`python -m jikimi_host.sim.referee` prints them as a table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from jikimi_host.sim import referee


def _collect() -> list:
    try:
        referee.require_bluetooth()
        tests = referee.discover()
    except referee.RefereeUnavailable as error:
        return [pytest.param(None, id="unavailable", marks=pytest.mark.skip(reason=str(error)))]
    params = []
    for test in tests:
        marks = [pytest.mark.micropython]
        if test.name in referee.KNOWN_FAILURES:
            # Not run here: each waits out its runner's 10 s timeout, which `make test` cannot
            # spare. `make referee` runs every test and shows these as failing with the reason.
            marks.append(pytest.mark.xfail(run=False, reason=referee.KNOWN_FAILURES[test.name]))
        params.append(pytest.param(test, id=test.name, marks=marks))
    return params


@pytest.mark.timeout(referee.DEFAULT_TIMEOUT_S + 120)
@pytest.mark.parametrize("multitest", _collect())
def test_multitest_passes_on_the_virtual_radio(multitest: referee.Multitest, tmp_path: Path,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    result = referee.run_multitest(multitest, tmp_path)
    if not result.passed and referee.fails_of_its_own_making(result.name, result.output):
        print(f"{result.name}: failed in a way of its own making, run again:\n{result.output}")
        result = referee.run_multitest(multitest, tmp_path / "again")
    if result.metrics:
        print(f"{result.name}: " + "; ".join(result.metrics))
        base = tmp_path_factory.getbasetemp()
        root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # shared by the workers
        with open(root / "referee-perf.jsonl", "a") as perf:
            perf.write(json.dumps({"test": result.name, "seconds": round(result.seconds, 1),
                                   "metrics": result.metrics}) + "\n")
    assert not result.leftover_pids, f"processes left running after the test: {result.leftover_pids}"
    assert result.passed, f"{result.name}: {result.outcome} after {result.seconds:.1f} s\n{result.output}"


@pytest.mark.parametrize(("name", "output", "again"), [
    ("multi_bluetooth/perf_l2cap.py", "  File \"<stdin>\", line 61, in wait_for_event\n"
                                      "ValueError: Timeout waiting for 1\n", True),  # seen in CI
    ("multi_bluetooth/ble_l2cap.py", "ValueError: Timeout waiting for 7\n", True),
    ("multi_bluetooth/ble_l2cap.py", "l2cap_connect\n_IRQ_L2CAP_DISCONNECT\n", True),
    ("multi_bluetooth/perf_l2cap.py", "ValueError: Timeout waiting for 23\n", False),  # a channel
    ("multi_bluetooth/perf_l2cap.py", "ValueError: Timeout waiting for 25\n", True),  # a 1 s step
    ("multi_bluetooth/ble_l2cap.py", "ValueError: Timeout waiting for 26\n", True),
    ("multi_bluetooth/ble_gap_connect.py", "ValueError: Timeout waiting for 1\n", False),  # 4 s
    ("multi_bluetooth/ble_gap_pair.py", "gap_connect\n_IRQ_PERIPHERAL_DISCONNECT\nTraceback (most recent "
                                        "call last):\n", True),  # the connection attempt gave up
    ("multi_bluetooth/ble_gap_pair.py", "gap_connect\n_IRQ_PERIPHERAL_CONNECT\n_IRQ_PERIPHERAL_DISCONNECT\n"
                                        "Traceback (most recent call last):\n", False),  # dropped later
    ("multi_bluetooth/ble_gap_pair.py", "gap_pair\nTraceback (most recent call last):\n  File \"<stdin>\", "
                                        "line 73, in wait_for_event\nValueError: Timeout waiting for 28\n",
     True),  # pairing ran out of its 4 s (seen in a full run)
    ("multi_bluetooth/ble_gap_pair.py", "gattc_read\nTraceback (most recent call last):\n"
                                        "ValueError: Timeout waiting for 16\n", False),  # paired, read lost
    ("aioble/ble_write_capture.py", "connected\nwritten b'central0'\nwritten b'central2'\n"
                                    "written b'central0' True\n", True),  # seen in a fresh-clone run
    ("aioble/ble_write_capture.py", "connected\nwritten b'central0'\nwritten b'central1'\n"
                                    "written b'central0' True\nwritten b'central2' True\n", False),  # a captured write lost
])
def test_only_an_upstream_scripts_own_failure_is_run_again(name: str, output: str, again: bool) -> None:
    assert referee.fails_of_its_own_making(name, output) == again
