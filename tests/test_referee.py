"""MicroPython's own two-device BLE tests as an outside referee of the virtual radio: each
multitest (MicroPython's multi_bluetooth/ble_* and perf_*, aioble's multitests/ble_*) runs on
two MicroPython Unix-port processes (NimBLE) on a radio process of its own
(jikimi_host.sim.referee). They were written against real controllers, so one that passes says
the emulation behaves like a radio there.

Needs the NimBLE build of MicroPython and MicroPython's test files (see referee's docstring for
where they are looked for); skipped, naming what is missing, without them. The perf tests'
figures are printed and written to `referee-perf.json` in the test's tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jikimi_host.sim import referee

# Unix-port hosts answer no BLE traffic while a test waits on multitest.wait(): that is a
# read(stdin) in the MicroPython process, and NimBLE on the Unix port runs only from
# MicroPython's scheduler (MICROPY_PY_BLUETOOTH_USE_SYNC_EVENTS), which a blocking read does not
# run. On a board, the runner's raw REPL reads stdin with the scheduler running.
STDIN_WAIT = ("MicroPython Unix port: instance0 blocks in multitest.wait() (read(stdin), no "
              "scheduler, so NimBLE does not run) while the peer needs its answer: ")
EXPECTED_FAILURES = {
    "multi_bluetooth/ble_mtu.py": STDIN_WAIT + "the central's characteristic discovery goes unanswered "
                                               "while the peripheral waits for 'client:discovery'",
    "multi_bluetooth/ble_mtu_peripheral.py": STDIN_WAIT + "the central's characteristic discovery goes "
                                                          "unanswered while the peripheral waits for "
                                                          "'client:discovery'",
    "aioble/ble_notify.py": STDIN_WAIT + "the central's service discovery goes unanswered while the "
                                         "peripheral waits for 'discovery'",
}


def _collect() -> list:
    try:
        tests = referee.discover()
    except referee.RefereeUnavailable as error:
        return [pytest.param(None, id="unavailable", marks=pytest.mark.skip(reason=str(error)))]
    params = []
    for test in tests:
        marks = [pytest.mark.micropython]
        if test.name in EXPECTED_FAILURES:
            marks.append(pytest.mark.xfail(strict=True, reason=EXPECTED_FAILURES[test.name]))
        params.append(pytest.param(test, id=test.name, marks=marks))
    return params


@pytest.mark.timeout(referee.DEFAULT_TIMEOUT_S + 120)
@pytest.mark.parametrize("multitest", _collect())
def test_multitest_passes_on_the_virtual_radio(multitest: referee.Multitest, tmp_path: Path) -> None:
    result = referee.run_multitest(multitest, tmp_path)
    if result.metrics:
        print(f"{result.name}: " + "; ".join(result.metrics))
        (tmp_path / "referee-perf.json").write_text(json.dumps(
            {"test": result.name, "seconds": round(result.seconds, 1), "metrics": result.metrics}))
    assert not result.leftover_pids, f"processes left running after the test: {result.leftover_pids}"
    assert result.passed, f"{result.name}: {result.outcome} after {result.seconds:.1f} s\n{result.output}"
