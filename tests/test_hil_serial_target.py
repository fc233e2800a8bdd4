"""The rig's real-board path, proven without a real board: `jikimi sim` runs the firmware in
another process and exposes its console as a serial port (a pty) and its radio as an HCI
transport, as a bench exposes /dev/ttyUSB0 and a USB dongle. The README's steps are followed
literally — `jikimi provision` over the port — and then the scenario suite runs with
`--jikimi-target PORT --jikimi-radio TRANSPORT`: inputs and outputs through the test console."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.micropython
REPO = Path(__file__).resolve().parents[1]
SCENARIO_SETTINGS = [  # the README's provisioning line for the scenario config
    "--name", "rig", "--roles", "panic,door", "--passkey", "493817",
    "--set", "test_console=true", "--set", "gestures.hold_ms=1000", "--set", "gestures.pairing_hold_ms=3000",
    "--set", "alarm.cancel_window_ms=5000", "--set", "door.exit_delay_ms=0", "--set", "door.entry_delay_ms=2000",
    "--set", "battery.confirm=2", "--set", "battery.interval_s=1", "--set", "power.idle_sleep_s=0",
]


@pytest.fixture
def sim(tmp_path):
    """`jikimi sim` in its own process: (pty, hci transport); stopped afterwards."""
    process = subprocess.Popen([sys.executable, "-m", "jikimi_host.cli", "sim", "--quiet", "--flash",
                                str(tmp_path / "flash")], stdout=subprocess.PIPE, text=True)
    try:
        found: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while len(found) < 2 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            if match := re.match(r"(pty|hci): (\S+)", line):
                found[match.group(1)] = match.group(2)
        assert len(found) == 2, f"jikimi sim did not print its pty and hci transport: {found}"
        yield found["pty"], found["hci"]
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_scenarios_run_on_a_board_behind_a_serial_port_through_its_test_console(sim):
    pty, hci = sim
    provision = subprocess.run([sys.executable, "-m", "jikimi_host.cli", "provision", "--port", pty,
                                *SCENARIO_SETTINGS], capture_output=True, text=True, timeout=120)
    assert provision.returncode == 0, provision.stdout + provision.stderr
    assert "passkey 493817" in provision.stdout
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(REPO / "tests" / "test_hil_scenarios.py"), "-q", "-p", "no:cacheprovider",
         "-p", "no:xdist", "--jikimi-target", pty, "--jikimi-radio", hci, "-rs",
         # two scenarios: the reference incident through the test console, and the power cut
         # skipped with the reason; the rest of the suite runs through a serial console on the
         # labgrid places (test_labgrid_bench.py) and on the virtual board
         "-k", "reference or power_cut"],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "1 passed, 1 skipped" in run.stdout, run.stdout[-3000:]
    assert "cannot cut its own power" in run.stdout  # skipped with the reason
