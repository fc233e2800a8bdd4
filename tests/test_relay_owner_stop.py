"""The relay never gives up a message by itself; the owner can (issue 15): `stop N` stops it trying
message N, the id its `overdue` line gives (a guardian's number that no longer works, say). What
was to follow it (that guardian's "cancelled" text) is stopped with it; nothing else changes."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from jikimi_host.relay import config as rc
from jikimi_host.relay.service import Relay, SimTelephony
from jikimi_host.relay.store import RelayStore
from jikimi_host.relay.telephony import TelephonyError
from test_relay_store import ALEX, BELL, GUARDIANS, MOM, T0, alarm, cancel, kinds_to, make_config, send_due


def test_a_stopped_message_is_never_sent_nor_is_what_was_to_follow_it(tmp_path):
    with RelayStore(tmp_path / "relay.sqlite", make_config()) as store:
        store.record_event(BELL, alarm(1), T0)
        send_due(store, T0, fail={MOM})  # her number no longer works
        store.record_event(BELL, cancel(2, alarm_seq=1, at=T0 + 5), T0 + 5)
        moms = next(r for r in store.outbox() if r.recipient == MOM and r.kind == "alarm")
        assert store.owner_stop(moms.id, T0 + 6) == "pending"
        send_due(store, T0 + 3600)
        assert kinds_to(store, MOM) == []
        assert {r.state for r in store.outbox() if r.recipient == MOM} == {"cancelled"}  # her "cancelled" text too
        assert all(kinds_to(store, g) == [("alarm", "sms"), ("cancelled", "sms")] for g in GUARDIANS if g != MOM)
        assert any(e.action == "stopped" and e.outbox_id == moms.id for e in store.audit_log())
        assert store.owner_stop(moms.id, T0 + 7) == "cancelled"  # nothing left to stop
        with pytest.raises(KeyError):
            store.owner_stop(999, T0)


class DeadNumber(SimTelephony):
    """The sim, except that one number's texts fail (a number that is no longer in service)."""

    def __init__(self, number: str) -> None:
        self.number = number
        self.tries = 0

    async def send_sms(self, number: str, text: str) -> str:
        if number == self.number:
            self.tries += 1
            raise TelephonyError("+CMS ERROR: 28 (unidentified subscriber)", retryable=False)
        return "sim"


class Said:
    """What the relay has printed (its --json lines), read as it goes."""

    def __init__(self, capsys) -> None:
        self.capsys = capsys
        self.lines: list[dict] = []

    def __call__(self, kind: str) -> list[dict]:
        out = self.capsys.readouterr().out
        self.lines += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return [r for r in self.lines if r["kind"] == kind]


async def test_the_owner_stops_an_overdue_text_with_the_id_its_overdue_line_gives(tmp_path, capsys):
    said = Said(capsys)
    config = rc.parse({
        "owner": "김지은", "database": str(tmp_path / "relay.sqlite"), "retry_base_s": 1, "retry_max_s": 1,
        "overdue_after_s": 10, "emergency_sms": False, "emergency_call": False,
        "guardians": [{"name": "어머니", "number": "010-0000-0001"},
                      {"name": "Alex", "number": "010-0000-0002", "language": "en"}],
        "devices": [{"name": "비상벨", "passkey": "093514", "address": BELL}]})
    telephony = DeadNumber(MOM)
    relay = Relay(config, "tcp-client:127.0.0.1:9", telephony, as_json=True)
    relay.store.record_event(BELL, alarm(1), time.time(), device_name="비상벨")
    tasks = [asyncio.create_task(relay.sender()), asyncio.create_task(relay.overdue_check())]
    try:
        deadline = time.monotonic() + 60
        while not said("overdue"):
            assert time.monotonic() < deadline, "no overdue line"
            await asyncio.sleep(0.2)
        line = said("overdue")[0]
        assert line["to"] == MOM and f"`stop {line['outbox_id']}` stops it" in line["text"]
        await relay.command("stop", str(line["outbox_id"]))
        stopped = said("stopped")
        assert stopped and "THE RELAY WILL NOT TELL THIS RECIPIENT OF THE ALARM" in stopped[0]["text"]
        tries = telephony.tries
        await asyncio.sleep(3)  # three retry periods: no more tries
        assert telephony.tries == tries
        assert [r.state for r in relay.store.outbox() if r.recipient == ALEX] == ["sent"]
        for argument, error in ((str(line["outbox_id"]), "is cancelled already: nothing to stop"),
                                ("999", "there is no message 999"), ("mom", "stop needs the number")):
            await relay.command("stop", argument)
            assert error in said("error")[-1]["text"]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        relay.store.close()
        relay.keystore.close()
