"""Shared fixtures: the real MicroPython interpreter and the golden protocol vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from jikimi_host.micropython import MicroPythonResult, find_micropython, run_micropython
from jikimi_host.paths import PROTOCOL_VECTORS

# No per-example deadline: the tests share 2 cores with boards, relays and a labgrid bench, and a
# 200 ms deadline failed a round trip that took 12 ms when rerun. Speed is the benchmarks' job.
settings.register_profile("jikimi", deadline=None)
settings.load_profile("jikimi")

MPY_SCRIPTS = Path(__file__).parent / "mpy"


class MicroPythonRunner:
    """Runs snippets and scripts under the real `micropython` binary for firmware tests."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.binary = find_micropython()

    def run(self, code: str, **kwargs: Any) -> str:
        """Run a snippet; return its stdout; fail the test with its output if it raised."""
        return run_micropython(code=code, cwd=self.tmp_path, **kwargs).check().stdout

    def script(self, name: str, *args: str, **kwargs: Any) -> MicroPythonResult:
        """Run tests/mpy/<name> with `args`; the result, not checked."""
        return run_micropython(script=MPY_SCRIPTS / name, args=args, cwd=self.tmp_path, **kwargs)


@pytest.fixture
def micropython(tmp_path: Path) -> MicroPythonRunner:
    return MicroPythonRunner(tmp_path)


@pytest.fixture
def radio(jikimi_radio):
    """A virtual radio (Bumble LocalLink) for virtual boards and phones: the rig plugin's."""
    return jikimi_radio


@pytest.fixture(scope="session")
def vectors() -> dict:
    return json.loads(PROTOCOL_VECTORS.read_text())


# The firmware on a virtual board (jikimi_host.rig.firmware), with the test config CONFIG.
@pytest.fixture
async def bell(tmp_path, radio):
    from jikimi_host.rig.firmware import CONFIG, firmware_board

    async for board in firmware_board(tmp_path / "flash", radio, CONFIG):
        yield board


@pytest.fixture
async def door_alarm(tmp_path, radio):
    from jikimi_host.rig.firmware import CONFIG, firmware_board

    config = dict(CONFIG, roles=["door"], door={"exit_delay_ms": 0, "entry_delay_ms": 2000})
    async for board in firmware_board(tmp_path / "door-flash", radio, config):
        yield board


# The OS Bluetooth stack (jikimi_host.rig.os_stack): a private system bus with the fake BlueZ
# on the virtual radio, and the owner at bluetoothctl with an agent registered.
@pytest.fixture
async def system_bus(tmp_path, monkeypatch):
    from jikimi_host.sim.bluez import start_system_bus, stop_process

    process, address = await start_system_bus(tmp_path / "dbus")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)  # where bleak (dbus-fast) finds "the system bus"
    try:
        yield address
    finally:
        await stop_process(process)


@pytest.fixture
async def bluez(tmp_path, radio, system_bus):
    from jikimi_host.rig.os_stack import BlueZProcess

    fake = BlueZProcess(system_bus, await radio.serve_hci(), tmp_path)
    try:
        await fake.start()
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def owner(system_bus, bluez):
    from dbus_fast.aio import MessageBus
    from jikimi_host.rig.os_stack import Owner

    bus = await MessageBus(bus_address=system_bus).connect()
    try:
        owner = Owner(bus)
        await owner.register_agent()
        yield owner
    finally:
        bus.disconnect()


# The slowest tests (15 s and more on the 2-core CI machine: `--durations=40`), slowest first.
# They run before the rest (the Makefile hands each xdist worker two tests at a time), so that no
# worker is still starting one of them while the others run out of work: the run's tail is short.
SLOWEST_FIRST = (
    "test_cli.py::test_the_demo_plays_the_whole_incident",
    "test_benchmarks.py::test_the_benchmark_runs_and_prints_its_figures[bench_heap.py]",
    "test_relay_e2e.py::test_guardians_hear_once_when_a_paired_bell_falls_silent",
    "test_hil_serial_target.py::test_the_scenarios_run_on_a_board_behind_a_serial_port",
    "test_labgrid_bench.py::test_two_pytest_workers_run_the_scenarios_on_two_places",
    "test_relay_os_stack.py::test_a_bell_paired_by_the_os_reaches_the_guardians",
    "test_relay_disk_full.py::test_the_disk_fills_up",
    "test_relay_e2e.py::test_with_the_modem_backend",
    "test_relay_e2e.py::test_a_strict_modem_refusing_texts",
    "test_relay_location_updates.py::test_a_relay_on_gpsd_texts_a_walking_owners_new_position",
    "test_relay_owner_stop.py::test_the_owner_stops_an_overdue_text",
    "test_labgrid_bench.py::test_a_console_that_does_not_answer",
    "test_watchdog.py::test_a_hung_ticker",
    "test_watchdog.py::test_a_stalled_loop",
    "test_protocol_claims.py::test_unacked_events_come_oldest_first",
    "test_relay_e2e.py::test_a_bell_and_a_door_alarm_on_one_relay",
    "test_relay_owner_cancel.py::test_a_bell_out_of_reach_when_the_owner_cancels",
    "test_heap_budget.py::test_the_frozen_image_runs",
    "test_benchmarks.py::test_the_benchmark_runs_and_prints_its_figures[bench_app.py]",
    "test_attacks.py::test_guessing_the_passkey",
    "test_attacks.py::test_a_stranger_who_connects_and_idles",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.nodeid.removeprefix("tests/")
        return next((i for i, prefix in enumerate(SLOWEST_FIRST) if name.startswith(prefix)), len(SLOWEST_FIRST))

    items.sort(key=rank)  # stable: the others keep pytest's order
