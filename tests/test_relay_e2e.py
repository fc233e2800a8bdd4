"""The relay as a real process (`jikimi relay`) on the virtual radio, with the firmware on
virtual boards: the reference incident's texts, kills at every step followed by a restart (every
guardian still has each message exactly once), a bell and a door alarm on one relay, and a
device that falls silent. The incident scenarios themselves are in test_hil_scenarios.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sqlite3
import sys
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from jikimi_host.relay.config import write_config
from jikimi_host.relay.service import CRASH_ENV
from jikimi_host.rig.firmware import CONFIG, PASSKEY, expect_log, firmware_board
from jikimi_host.sim.hands import hold_button_through_power_up
from jikimi_host.rig.pytest_plugin import DeliveredStore
from jikimi_host.rig.relay import RelayProcess
from jikimi_host.wait import until

pytestmark = pytest.mark.micropython
GUARDIANS = ("+821000000001", "+821000000002", "+821000000003")  # fictional; only the sim "sends"
CANCEL_WINDOW_S = 5
RELAY_CONFIG: dict[str, Any] = {
    "owner": "김지은", "cancel_window_s": CANCEL_WINDOW_S, "retry_base_s": 1, "database": "relay.sqlite",
    "guardians": [{"name": "어머니", "number": "010-0000-0001"},
                  {"name": "Alex", "number": "+82 10 0000 0002", "language": "en"},
                  {"name": "언니", "number": "01000000003"}],
    "location": {"lat": 37.56650, "lon": 126.97800, "accuracy_m": 25},
    "devices": [{"name": "비상벨", "passkey": str(PASSKEY)}],  # as a string: leading zeros matter
}


class Rig:
    def __init__(self, tmp: Path, bell, transport: str, relay_config: dict[str, Any] = RELAY_CONFIG) -> None:
        self.tmp = tmp
        self.bell = bell
        self.transport = transport
        self.config_path = write_config(tmp / "relay.toml", relay_config)
        self.relays: list[RelayProcess] = []

    async def relay(self, crash_at: str | None = None) -> RelayProcess:
        env = {CRASH_ENV: crash_at} if crash_at else {}
        relay = RelayProcess(self.config_path, self.transport, env)
        self.relays.append(relay)  # stopped by the fixture whatever happens next
        await relay.start()
        await relay.expect(lambda r: r["kind"] == "ready", what="ready")
        return relay

    def delivered(self) -> list[tuple[str, str, str]]:
        """(channel, recipient, text) of everything the sim backend delivered."""
        return DeliveredStore(self.tmp / "relay.sqlite").delivered()

    def count(self, channel: str, recipient: str, contains: str = "") -> int:
        return sum(1 for c, r, t in self.delivered() if c == channel and r == recipient and contains in t)

    async def pair(self, board=None) -> None:
        """The owner holds the button at power-up; the relay finds the board and pairs."""
        board = board or self.bell
        await hold_button_through_power_up(board, CONFIG["gestures"]["pairing_hold_ms"])
        await expect_log(board, "core", msg="pairing closed", timeout_s=60)

    async def stop(self) -> None:
        for relay in self.relays:
            await relay.stop()


@pytest.fixture
async def rig(tmp_path, radio):
    transport = await radio.serve_hci()
    async for bell in firmware_board(tmp_path / "flash", radio, CONFIG):
        rig = Rig(tmp_path, bell, transport)
        try:
            yield rig
        finally:
            await rig.stop()


async def test_the_reference_incident_hold_then_guardian_sms_then_112_report_and_call(rig):
    relay = await rig.relay()
    await rig.pair()
    await relay.expect(lambda r: r["kind"] == "link" and r["text"].startswith("connected"), what="connected")
    await rig.bell.press("button", hold_s=2.0)  # hold_ms is 1 s in the test config
    await relay.expect(lambda r: r["kind"] == "event" and r["event"]["type"] == "alarm_raised", what="alarm")
    await until(lambda: all(rig.count("sms", g) == 1 for g in GUARDIANS), timeout_s=30, what="guardian SMS")
    assert rig.count("sms", "112") == 0 and rig.count("call", "112") == 0  # inside the cancel window
    await until(lambda: rig.count("sms", "112") == 1 and rig.count("call", "112") == 1,
                timeout_s=CANCEL_WINDOW_S + 15, what="the 112 report and call after the cancel window")
    korean = [t for c, r, t in rig.delivered() if r == GUARDIANS[0]][0]
    english = [t for c, r, t in rig.delivered() if r == GUARDIANS[1]][0]
    assert "김지은" in korean and "37.5665" in korean
    assert "37.5665" in english and korean != english
    await expect_log(rig.bell, "ble", type="ack", code="OK")  # the relay acknowledged the event


@pytest.mark.parametrize("step", ["stored", "attempt", "sent"])
async def test_a_relay_killed_at_any_step_and_restarted_texts_each_guardian_exactly_once(rig, step):
    relay = await rig.relay()
    await rig.pair()
    await relay.expect(lambda r: r["kind"] == "link" and r["text"].startswith("connected"), what="connected")
    await relay.stop()
    crashing = await rig.relay(crash_at=step)  # dies at that step, like a SIGKILL there
    await crashing.expect(lambda r: r["kind"] == "link" and r["text"].startswith("connected"), what="connected")
    await rig.bell.press("button", hold_s=2.0)
    assert await crashing.exited() == 70
    again = await rig.relay()
    await until(lambda: all(rig.count("sms", g) >= 1 for g in GUARDIANS), timeout_s=30,
                what="guardian SMS after the restart")
    await until(lambda: rig.count("call", "112") == 1, timeout_s=CANCEL_WINDOW_S + 20, what="the 112 call")
    sms = Counter(r for c, r, t in rig.delivered() if c == "sms")
    assert all(sms[g] == 1 for g in GUARDIANS), sms
    assert sms["112"] == 1
    if step == "stored":  # stored but never acked: the bell sent it again; stored once
        await again.expect(lambda r: r["kind"] == "duplicate", what="the resent event recognised")


async def test_a_relay_sigkilled_mid_incident_loses_and_duplicates_nothing(rig):
    relay = await rig.relay()
    await rig.pair()
    await relay.expect(lambda r: r["kind"] == "link" and r["text"].startswith("connected"), what="connected")
    await rig.bell.press("button", hold_s=2.0)
    await relay.expect(lambda r: r["kind"] == "sms", what="the first SMS")
    await relay.kill()
    await rig.relay()
    await until(lambda: rig.count("call", "112") == 1, timeout_s=CANCEL_WINDOW_S + 20, what="the 112 call")
    sms = Counter(r for c, r, t in rig.delivered() if c == "sms")
    assert all(sms[g] == 1 for g in GUARDIANS) and sms["112"] == 1, sms


async def test_a_bell_and_a_door_alarm_on_one_relay_the_door_intrusion_escalates_like_an_alarm(tmp_path, radio):
    transport = await radio.serve_hci()
    door_config = dict(CONFIG, roles=["door"], passkey="402981", door={"exit_delay_ms": 0, "entry_delay_ms": 1000})
    relay_config = dict(RELAY_CONFIG, devices=[*RELAY_CONFIG["devices"], {"name": "현관문", "passkey": "402981"}])
    async for bell in firmware_board(tmp_path / "bell", radio, CONFIG):
        async for door in firmware_board(tmp_path / "door", radio, door_config):
            rig = Rig(tmp_path, bell, transport, relay_config)
            try:
                relay = await rig.relay()
                await rig.pair(bell)
                await rig.pair(door)
                await relay.expect(lambda r: r["kind"] == "link" and r["text"].startswith("connected to 현관문"),
                                   what="the door alarm connected")
                await door.press("reed")  # opened while disarmed: logged only
                await relay.expect(lambda r: r["kind"] == "event" and r["event"]["type"] == "door_opened",
                                   what="door_opened")
                door.release("reed")
                for _ in range(2):  # the owner arms it with a double press, and leaves
                    await door.press("button", hold_s=0.1)
                    await asyncio.sleep(0.15)
                await relay.expect(lambda r: r["kind"] == "event" and r["event"]["type"] == "armed", what="armed")
                assert rig.delivered() == []  # nothing so far was worth a text
                await door.press("reed")  # someone opens the door; nobody disarms
                await relay.expect(lambda r: r["kind"] == "event" and r["event"]["type"] == "alarm_raised"
                                   and r["device"] == "현관문", what="the intrusion alarm")
                await until(lambda: all(rig.count("sms", g) == 1 for g in GUARDIANS), timeout_s=30,
                            what="guardian SMS for the intrusion")
                await until(lambda: rig.count("call", "112") == 1, timeout_s=CANCEL_WINDOW_S + 15, what="112 call")
            finally:
                await rig.stop()


async def test_an_unplugged_controller_stops_the_relay_and_a_restart_finds_the_bell_again(rig, radio):
    relay = await rig.relay()
    await rig.pair()
    await relay.expect(lambda r: r["kind"] == "link" and r["text"].startswith("connected"), what="connected")
    await radio.unplug_hci()  # the relay's USB dongle is pulled out
    assert await relay.exited() == 1  # so that its supervisor (systemd) starts it again
    assert b"HCI transport" in relay.stderr and b"closed" in relay.stderr
    restarted = await rig.relay()  # the dongle is back; the bond is in the database
    await restarted.expect(lambda r: r["kind"] == "link" and r["text"].startswith("connected"), timeout_s=90,
                           what="the bell found again")
    await rig.bell.press("button", hold_s=2.0)
    await until(lambda: all(rig.count("sms", g) == 1 for g in GUARDIANS), timeout_s=30, what="guardian SMS")


async def test_guardians_hear_once_when_a_paired_bell_falls_silent(tmp_path, radio):
    transport = await radio.serve_hci()
    bell_config = dict(CONFIG, ble={"heartbeat_s": 10})
    relay_config = dict(RELAY_CONFIG, heartbeat_s=10, unreachable_after_s=12)
    async for bell in firmware_board(tmp_path / "flash", radio, bell_config):
        rig = Rig(tmp_path, bell, transport, relay_config)
        try:
            relay = await rig.relay()
            await rig.pair()
            await relay.expect(lambda r: r["kind"] == "link" and r["text"].startswith("connected"), what="connected")
            await asyncio.sleep(12)  # heartbeats keep it reachable past unreachable_after_s
            assert not relay.of("unreachable")
            await bell.power_cut()  # the battery is pulled out
            await relay.expect(lambda r: r["kind"] == "unreachable", timeout_s=40, what="unreachable")
            await until(lambda: all(rig.count("sms", g) == 1 for g in GUARDIANS), timeout_s=30,
                        what="one unreachable notice per guardian")
            await asyncio.sleep(6)  # more checks pass: still one each
            assert all(rig.count("sms", g) == 1 for g in GUARDIANS)
            assert rig.count("sms", "112") == 0  # guardians only
        finally:
            await rig.stop()


CALL_S = 12  # the fake 112 operator hangs up after this long


def fake_modem_process(tmp_path: Path, *faults: str):
    """The fake modem as its own process with these fault flags, on a pty linked at tmp/modem;
    yields (link, network log) and stops it afterwards, whatever happened."""
    link, log = tmp_path / "modem", tmp_path / "network.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "jikimi_host.relay.fake_modem", "--link", str(link),
                                "--log", str(log), *faults], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip(), "the fake modem did not start"
        yield link, log
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def fake_modem(tmp_path):
    """It refuses the first text once (+CMS ERROR: 500); the far side ends calls after CALL_S."""
    yield from fake_modem_process(tmp_path, "--fail-sms", "500:1", "--remote-hangup", str(CALL_S))


def call_states(rig: Rig) -> list[str]:
    """The states of the relay's call rows (its database, read-only)."""
    path = rig.tmp / "relay.sqlite"
    if not path.exists():
        return []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
        return [state for (state,) in db.execute("SELECT state FROM outbox WHERE channel = 'call'")]


def network(log: Path) -> list[dict]:
    """What the (fake) network received: one record per complete SMS or call."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def test_with_the_modem_backend_the_texts_and_calls_go_out_as_at_commands(rig, fake_modem):
    link, log = fake_modem
    write_config(rig.config_path, dict(RELAY_CONFIG, backend="modem", modem={"port": link}))
    refused = await RelayProcess(rig.config_path, rig.transport).start()
    assert await refused.exited() == 2  # without --real-modem the relay will not touch a modem
    assert b"--real-modem" in refused.stderr
    relay = await RelayProcess(rig.config_path, rig.transport, args=("--real-modem", "--allow-emergency")).start()
    rig.relays.append(relay)
    await relay.expect(lambda r: r["kind"] == "ready", what="ready")
    await rig.pair()
    await relay.expect(lambda r: r["kind"] == "link" and r["text"].startswith("connected"), what="connected")
    await rig.bell.press("button", hold_s=2.0)
    await until(lambda: {r["to"] for r in network(log) if r["kind"] == "sms"} >= set(GUARDIANS), timeout_s=60,
                what="the guardian SMS on the network")
    await until(lambda: any(r["kind"] == "sms" and r["to"] == "112" for r in network(log)),
                timeout_s=CANCEL_WINDOW_S + 30, what="the 112 report on the network")
    # The owner cancels (a false alarm after all) while the call to 112 is up: the guardians hear
    # at once, not after the call (the network logs a call when it ends). The call is dialled
    # after the report; a cancel before that would rightly withdraw it, so wait for it to be up.
    await until(lambda: call_states(rig) in (["sending"], ["sent"]), timeout_s=30, what="the 112 call being dialled")
    await relay.command("cancel 비상벨")
    await until(lambda: sum(r["kind"] == "sms" and r["to"] in GUARDIANS for r in network(log)) == 2 * len(GUARDIANS),
                timeout_s=30, what="the cancellation texts to the guardians")
    assert not [r for r in network(log) if r["kind"] == "call"], "the cancellations waited for the call"
    await until(lambda: any(r["kind"] == "call" and r["to"] == "112" for r in network(log)),
                timeout_s=CALL_S + 30, what="the 112 call on the network")
    texts = [(r["to"], r["text"]) for r in network(log) if r["kind"] == "sms"]
    alarms: dict[str, str] = {}
    for to, text in texts:
        alarms.setdefault(to, text)  # each one's first text: the alarm
    assert "김지은" in alarms[GUARDIANS[0]] and "Jikimi" in alarms[GUARDIANS[1]]  # Korean intact over UCS-2
    # alarm and cancellation once each, although the modem refused the first text (+CMS ERROR: 500)
    assert Counter(to for to, _ in texts) == Counter({**{g: 2 for g in GUARDIANS}, "112": 2})


@pytest.fixture
def strict_modem(tmp_path):
    """A fake modem (its own process, on a pty linked at tmp/modem) as strict as the one that made
    the relay give up: a bare ERROR to its first 4 wake-up ATs (more than one session start
    tries), then the next 8 texts refused with +CMS ERROR: 500, as with no network; stopped
    afterwards."""
    yield from fake_modem_process(tmp_path, "--error-first-at", "4", "--fail-sms", "500:8")


async def test_a_strict_modem_refusing_texts_for_a_while_never_makes_the_relay_give_up_and_112_off_is_said(
        rig, strict_modem):
    link, log = strict_modem
    write_config(rig.config_path, dict(RELAY_CONFIG, backend="modem", retry_max_s=4, overdue_after_s=10,
                                       modem={"port": link}))
    relay = RelayProcess(rig.config_path, rig.transport, args=("--real-modem",))  # no --allow-emergency
    rig.relays.append(relay)
    await relay.start()
    off = await relay.expect(lambda r: r["kind"] == "no_112", what="the relay saying 112 is off")
    assert "--allow-emergency" in off["text"] and "guardians only" in off["text"]
    await rig.pair()
    await relay.expect(lambda r: r["kind"] == "link" and r["text"].startswith("connected"), what="connected")
    await rig.bell.press("button", hold_s=2.0)
    # The modem refuses every text for a while: the relay keeps trying, and says which are late.
    failed = await relay.expect(lambda r: r["kind"] == "failed", what="a refused text")
    assert failed["state"] == "pending" and "trying again" in failed["text"]
    late = await relay.expect(lambda r: r["kind"] == "overdue", timeout_s=90, what="a text reported overdue")
    assert "still trying" in late["text"] and late["recipient_kind"] == "guardian"
    said_off = lambda: sum(r["kind"] == "no_112" for r in relay.records)  # noqa: E731
    await until(lambda: said_off() >= 2, timeout_s=30, what="112 off, said again with the alarm")
    await relay.command("status 비상벨")
    waiting = await relay.expect(lambda r: r["kind"] == "outbox", what="the owner's status of the outbox")
    assert waiting["overdue"] >= 1
    await until(lambda: said_off() >= 3, timeout_s=30, what="112 off, said again in the status")
    await until(lambda: Counter(r["to"] for r in network(log) if r["kind"] == "sms") == Counter(GUARDIANS),
                timeout_s=120, what="each guardian's text on the network, once")
    # 112 is refused without --allow-emergency (retried, never sent): nothing reaches it.
    await relay.expect(lambda r: r["kind"] == "failed" and "112" in r["text"], timeout_s=CANCEL_WINDOW_S + 60,
                       what="the refused 112 report")
    assert not [r for r in network(log) if r["to"] == "112"]


async def test_a_configured_door_alarm_that_is_away_does_not_keep_the_bell_from_pairing_or_alarming(tmp_path, radio):
    # The door alarm is in the config by address (as with transport "os") but is switched off or
    # out of range. The controller takes one connection attempt at a time: an attempt held open
    # for it must not refuse the bell's pairing, nor delay the bell's alarm.
    away = dict(RELAY_CONFIG, devices=[*RELAY_CONFIG["devices"],
                                       {"name": "현관문", "passkey": "402981", "address": "C0:98:E5:49:00:02"}])
    transport = await radio.serve_hci()
    async for bell in firmware_board(tmp_path / "flash", radio, CONFIG):
        rig = Rig(tmp_path, bell, transport, away)
        try:
            relay = await rig.relay()
            await relay.expect(lambda r: r["kind"] == "link" and "현관문" in r["text"], what="the door looked for")
            await rig.pair()
            await relay.expect(lambda r: r["kind"] == "link" and r["text"].startswith("connected to 비상벨"),
                               timeout_s=60, what="the bell connected")
            await rig.bell.press("button", hold_s=2.0)
            await until(lambda: rig.count("sms", GUARDIANS[0]) == 1, timeout_s=30, what="the guardian's text")
            assert not [r for r in relay.records if "connection already pending" in r.get("text", "")]
        finally:
            await rig.stop()
