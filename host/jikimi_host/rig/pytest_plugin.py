"""The Jikimi HIL rig as a pytest plugin (entry point `pytest11: jikimi`).

Options choose the target and the radio:

    --jikimi-target virtual          the firmware on a virtual board (default)
    --jikimi-target PORT             a real board on a serial port or rfc2217://host:port, flashed and
                                     provisioned with the scenario config (SCENARIO_CONFIG) and
                                     "test_console": true
    --jikimi-target labgrid:PLACE    a board so provisioned in a labgrid place, locked for the session
    --jikimi-target labgrid:TAG=VAL  any place with those tags (comma-separated), reserved and locked
                                     for the session; waits up to --jikimi-place-wait s while all are
                                     taken (each pytest-xdist worker gets its own); the coordinator is
                                     labgrid's LG_COORDINATOR; console, power and radio are the place's
    --jikimi-radio virtual           the virtual radio (default; only with the virtual target)
    --jikimi-radio TRANSPORT         a Bumble HCI transport for the phone side: usb:0, serial:...

Fixtures:

    jikimi_target   the device: inputs, outputs, structured log, reset, power cut where possible
    jikimi_relay    a relay process (sim telephony) paired with the target; `.command("arm rig")`
    jikimi_store    what the relay delivered: `.texts_to(number)`, `.calls_to(number)`

Scenarios that need to cut power ask for `jikimi_power_cut` and are skipped with the reason when
the target cannot.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import signal
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from jikimi_host.relay.config import write_config
from jikimi_host.rig.labgrid import PREFIX as LABGRID_PREFIX
from jikimi_host.rig.labgrid import LabgridError, LabgridPlace
from jikimi_host.rig.relay import RelayProcess
from jikimi_host.rig.targets import (SCENARIO_CONFIG, SCENARIO_PASSKEY, LabgridTarget, SerialTarget, Target,
                                     VirtualTarget)

DEVICE_NAME = "rig"
GUARDIANS = ("+821000000001", "+821000000002")  # fictional; only the sim backend "sends"
RELAY_CANCEL_WINDOW_S = SCENARIO_CONFIG["alarm"]["cancel_window_ms"] // 1000


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jikimi", "Jikimi HIL rig")
    group.addoption("--jikimi-target", default="virtual",
                    help="'virtual' (default), a real board's serial port / rfc2217:// URL, or labgrid:PLACE / labgrid:TAG=VALUE")
    group.addoption("--jikimi-radio", default="virtual",
                    help="'virtual' (default) or a Bumble HCI transport for the phone side (usb:0, ...)")
    group.addoption("--jikimi-place-wait", type=float, default=300.0,
                    help="seconds to wait for a labgrid place matching labgrid:TAG=VALUE (default 300)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "jikimi_scenario: a HIL scenario that runs on every target")
    # A run ended by SIGTERM (`kill`, a CI job's timeout) tears down as Ctrl-C does: each fixture's
    # `finally` stops what it started. Without this the process just died, and what runs in a
    # session of its own (gpsfake and its gpsd, out of reach of a signal to the run's group) was
    # left running. Each xdist worker installs it in its own main thread.
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class DeliveredStore:
    """The relay database, read-only (it never waits for the relay's writes)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def delivered(self) -> list[tuple[str, str, str]]:
        if not self.path.exists():
            return []
        with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1)) as db:
            try:
                return db.execute("SELECT channel, recipient, text FROM delivered ORDER BY id").fetchall()
            except sqlite3.OperationalError:  # no schema yet
                return []

    def texts_to(self, number: str) -> list[str]:
        return [text for channel, recipient, text in self.delivered() if channel == "sms" and recipient == number]

    def calls_to(self, number: str) -> list[str]:
        return [text for channel, recipient, text in self.delivered() if channel == "call" and recipient == number]


def relay_config(database: Path) -> dict[str, Any]:
    """The rig's relay config, for `relay.config.write_config`."""
    return {
        "owner": "김지은", "cancel_window_s": max(5, RELAY_CANCEL_WINDOW_S), "retry_base_s": 1,
        "database": database,
        "guardians": [{"name": f"보호자{i}", "number": n} for i, n in enumerate(GUARDIANS, 1)],
        "devices": [{"name": DEVICE_NAME, "passkey": SCENARIO_PASSKEY}],
    }


@pytest.fixture
async def jikimi_radio(request: pytest.FixtureRequest) -> AsyncIterator[object]:
    from jikimi_host.sim.radio import VirtualRadio

    radio = VirtualRadio()
    yield radio
    await radio.close()


@pytest.fixture(scope="session")
def jikimi_labgrid_place(request: pytest.FixtureRequest) -> Iterator[LabgridPlace]:
    """The labgrid place of `--jikimi-target labgrid:...`, locked for this session (this worker)."""
    option = request.config.getoption("--jikimi-target")
    if not option.startswith(LABGRID_PREFIX):
        pytest.skip("the target is not a labgrid place")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    # Each worker is its own labgrid user: its lock is its own, and it cannot take another's.
    identity = None if worker is None else f"{os.environ.get('LG_USERNAME') or getpass.getuser()}-{worker}"
    try:
        place = LabgridPlace(option[len(LABGRID_PREFIX):], identity=identity,
                             wait_s=request.config.getoption("--jikimi-place-wait"))
        place.acquire()
    except LabgridError as err:
        pytest.fail(str(err), pytrace=False)
    try:
        yield place
    finally:
        place.release()


@pytest.fixture
async def jikimi_target(request: pytest.FixtureRequest, tmp_path: Path, jikimi_radio) -> AsyncIterator[Target]:
    option = request.config.getoption("--jikimi-target")
    target: Target
    if option == "virtual":
        target = VirtualTarget(tmp_path / "flash", jikimi_radio)
    elif option.startswith(LABGRID_PREFIX):
        place = request.getfixturevalue("jikimi_labgrid_place")
        try:
            target = await asyncio.to_thread(LabgridTarget, place)
        except LabgridError as err:
            pytest.fail(str(err), pytrace=False)
    else:
        target = SerialTarget(option)
    try:
        yield target
    finally:
        await target.close()


@pytest.fixture
def jikimi_power_cut(jikimi_target: Target) -> Target:
    if not jikimi_target.can_cut_power:
        pytest.skip(f"{jikimi_target.name} cannot cut its own power (no power switch on this rig)")
    return jikimi_target


@pytest.fixture
def jikimi_store(tmp_path: Path) -> DeliveredStore:
    return DeliveredStore(tmp_path / "relay.sqlite")


@pytest.fixture
async def jikimi_relay(request: pytest.FixtureRequest, tmp_path: Path, jikimi_radio,
                       jikimi_target: Target) -> AsyncIterator[RelayProcess]:
    """A relay process paired with the target (pairing window opened the target's way)."""
    option = request.config.getoption("--jikimi-radio")
    if jikimi_target.hci_transport is not None:  # a labgrid place's own radio
        transport = jikimi_target.hci_transport
    else:
        transport = await jikimi_radio.serve_hci() if option == "virtual" else option
    config = write_config(tmp_path / "relay.toml", relay_config(tmp_path / "relay.sqlite"))
    relay = RelayProcess(config, transport)
    try:
        await relay.start()
        await relay.expect(lambda r: r["kind"] == "ready", what="the relay starting")
        await jikimi_target.boot()
        await jikimi_target.open_pairing()
        await relay.expect(lambda r: r["kind"] == "link" and r["text"].startswith(f"connected to {DEVICE_NAME}"),
                           timeout_s=60, what="the target paired and connected")
        yield relay
    finally:
        await relay.stop()
