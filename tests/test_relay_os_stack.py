"""The relay on the operating system's Bluetooth stack (`jikimi relay --transport os`: adafruit_ble
→ `_bleio` → bleak → BlueZ over D-Bus), with the fake BlueZ (`jikimi_host.sim.bluez`) on the
virtual radio standing in for bluetoothd, and the real firmware on a virtual board.

The OS stack cannot pair from the relay, so the owner pairs with the OS first and every device
entry needs the address the OS shows; with no stack to talk to, the relay says so and exits.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jikimi_host.relay.config import write_config
from jikimi_host.rig.firmware import PASSKEY, expect_log, log_records
from jikimi_host.rig.os_stack import find_in_pairing_window
from jikimi_host.rig.pytest_plugin import DeliveredStore
from jikimi_host.rig.relay import RelayProcess
from jikimi_host.sim.bluez import ADAPTER_PATH
from jikimi_host.wait import until

GUARDIANS = ["+821000000001", "+821000000002"]  # fictional; only the sim "sends"


def write_relay_config(tmp_path: Path, address: str | None) -> Path:
    """The relay's config, its one device at `address` (None: no address, as if to be paired)."""
    device = {"name": "비상벨", "passkey": "123456"} | ({} if address is None else {"address": address})
    return write_config(tmp_path / "relay.toml", {
        "owner": "김지은", "database": "relay.sqlite", "cancel_window_s": 600, "retry_base_s": 1,
        "guardians": [{"name": "어머니", "number": "010-0000-0001"},
                      {"name": "Alex", "number": "+82 10 0000 0002", "language": "en"}],
        "devices": [device],
    })


def run_relay(tmp_path: Path, address: str | None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    config = write_relay_config(tmp_path, address)
    return subprocess.run([sys.executable, "-m", "jikimi_host.cli", "relay", "--config", str(config),
                           "--transport", "os"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env=env)


def test_a_device_without_an_address_is_refused_and_the_owner_is_told_to_pair_with_the_os(tmp_path):
    result = run_relay(tmp_path, address=None)
    assert result.returncode == 2
    assert "'비상벨' has no address" in result.stderr
    assert "bluetoothctl" in result.stderr and "pair" in result.stderr


def test_with_no_bluetooth_stack_the_relay_says_so_and_exits(tmp_path):
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={tmp_path}/no-bus")
    result = run_relay(tmp_path, address="C0:98:E5:49:00:01", env=env)
    assert result.returncode == 1, result.stderr
    assert "the OS Bluetooth stack is not reachable" in result.stderr
    assert "Traceback" not in result.stderr


def acks(bell) -> int:
    return sum(1 for r in log_records(bell) if r.get("msg") == "command" and r.get("type") == "ack")


async def settled(state, quiet_s: float, what: str) -> None:
    """Wait until state() has not changed for quiet_s."""
    loop = asyncio.get_running_loop()
    while True:
        last, since = state(), loop.time()
        await until(lambda: state() != last or loop.time() - since >= quiet_s, what=what)
        if state() == last:
            return


def connections(relay: RelayProcess) -> list[dict]:
    return [r for r in relay.records if r["kind"] == "link" and r["text"].startswith("connected")]


def disconnections(relay: RelayProcess) -> list[dict]:
    return [r for r in relay.records if r["kind"] == "link" and r["text"].startswith("disconnected")]


@pytest.mark.micropython
async def test_a_bell_paired_by_the_os_reaches_the_guardians_through_the_os_stack(tmp_path, bell, bluez, owner,
                                                                                 system_bus):
    # The owner pairs the bell with the computer first, typing the passkey from its label.
    path, _ = await find_in_pairing_window(owner, bell)
    owner.agent.passkey = PASSKEY
    await owner.pair(path)
    await owner.call(ADAPTER_PATH, "org.bluez.Adapter1", "StopDiscovery")
    await owner.call(path, "org.bluez.Device1", "Disconnect")
    identity = (await owner.objects())[path]["org.bluez.Device1"]["Address"]  # what `devices Paired` shows

    config = write_relay_config(tmp_path, identity)
    relay = await RelayProcess(config, "os", {"DBUS_SYSTEM_BUS_ADDRESS": system_bus}).start()
    try:
        await relay.expect(lambda r: r["kind"] == "ready", what="ready")
        await relay.expect(lambda r: connections(relay), timeout_s=60, what="connected through the OS stack")
        assert any("(OS stack)" in r["text"] for r in relay.of("link"))
        await expect_log(bell, "ble", type="set_time", code="OK")  # the relay's commands get through

        acks_before = acks(bell)
        await bell.press("button", hold_s=2.0)  # hold 1 s: an alarm
        await relay.expect(lambda r: r["kind"] == "event" and r["event"]["type"] == "alarm_raised", what="alarm")
        store = DeliveredStore(tmp_path / "relay.sqlite")
        await until(lambda: sorted(r for c, r, _ in store.delivered() if c == "sms") == GUARDIANS,
                    timeout_s=30, what="one SMS to each guardian")
        await until(lambda: acks(bell) > acks_before, what="the bell hearing the relay's ack")

        await relay.command("silence 비상벨")  # the owner taps "silence" in the app
        await relay.expect(lambda r: r["kind"] == "result" and r["command"] == "silence_siren", what="silenced")
        await relay.command("cancel 비상벨")  # a silenced alarm stays active, even over a reboot
        await relay.expect(lambda r: r["kind"] == "result" and r["command"] == "cancel_alarm", what="cancelled")

        # The bell reboots: the OS stack notices, and the relay connects again through it.
        await bell.power_cut()
        await until(lambda: disconnections(relay), what="the relay noticing")
        await bell.start()
        await relay.expect(lambda r: len(connections(relay)) >= 2, timeout_s=90, what="connected again")
        await bell.press("button", hold_s=2.0)
        await until(lambda: len([e for e in relay.of("event") if e["event"]["type"] == "alarm_raised"]) == 2,
                    timeout_s=30, what="the alarm after the reboot")

        # bluetoothd crashes while the link is quiet, and nothing tells the relay; it finds out by
        # itself (radio_os.LIVENESS_S) and reaches the bell again once bluetoothd is back.
        await until(lambda: len([e for e in relay.of("event") if e["event"]["type"] == "alarm_acked"]) == 2,
                    what="the second alarm acked")
        await settled(lambda: (len(relay.records), acks(bell)), 2.0, what="nothing more to send either way")
        from jikimi_host.relay.radio_os import LIVENESS_S  # here: importing _bleio starts a bleak thread

        drops = len(disconnections(relay))
        await bluez.crash()
        await until(lambda: len(disconnections(relay)) > drops, timeout_s=LIVENESS_S + 30, what="the relay noticing")
        await bluez.start()
        await relay.expect(lambda r: len(connections(relay)) >= 3, timeout_s=90, what="connected after the restart")
    finally:
        await relay.stop()
