"""Shared fixtures: the real MicroPython interpreter and the golden protocol vectors."""

from __future__ import annotations

import json
import shutil
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from jikimi_host.toolchain.interpreter import MicroPythonResult, find_micropython, run_micropython
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
    from jikimi_host.processes import stop_process
    from jikimi_host.sim.bluez import start_system_bus

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


# How long each test took on the 2-core CI machine (setup + call + teardown, seconds; those under
# 1 s are left out). The run starts the longest first (the Makefile hands each xdist worker two
# tests at a time) and ends on the many short ones, which fill the workers as they run out of
# work: no worker is left with a 10 s scenario while the others idle. Only the order depends on
# it; `make durations` measures it again.
DURATIONS_FILE = Path(__file__).with_name("durations.json")
KEPT_FROM_S = 1.0  # shorter tests are left out of the file...
UNMEASURED_S = 0.5  # ...and taken for this long, as is a new test


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--write-durations", type=Path, default=None, metavar="FILE",
                     help="write each test's duration (setup + call + teardown) to FILE as JSON")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    durations = json.loads(DURATIONS_FILE.read_text())
    items.sort(key=lambda item: -durations.get(item.nodeid.removeprefix("tests/"), UNMEASURED_S))  # stable


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    name = report.nodeid.removeprefix("tests/")
    _measured[name] = _measured.get(name, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--write-durations")
    if path is None or hasattr(session.config, "workerinput"):  # xdist: the controller writes it
        return
    kept = {name: round(seconds, 1) for name, seconds in sorted(_measured.items(), key=lambda kv: -kv[1])
            if seconds >= KEPT_FROM_S}
    path.write_text(json.dumps(kept, indent=0, ensure_ascii=False) + "\n")


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium, which Playwright drives for the bench page's tests (no browser download)."""
    found = os.environ.get("JIKIMI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("no Chromium here: the bench page is tested in Debian's `chromium` (apt-get install chromium; "
                    ".ci/run installs it), or set JIKIMI_CHROMIUM to a Chromium binary", pytrace=False)
    return found
