"""IRQ discipline on the virtual board (issue 14): the real firmware under MicroPython, the real
NimBLE stack, a Bumble phone.

- A phone flooding the Commands characteristic gets what fits in the bell's write ring answered
  and the rest dropped and counted (STATUS `dropped`); the heap stays put and the alarm works.
- A chattering contact (hundreds of edges in a burst) overflows the edge ring: the bell counts
  the drops, reads the pin again, does not alarm, and still alarms on a real hold afterwards.
- A power cut while a new bond is being stored leaves the whole bond or none: never a damaged
  file or half a bond (the secret IRQs write no flash; the task writes bonds.json atomically).

tests/test_link_irq.py checks the same link code under CPython, one IRQ at a time.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from jikimi import protocol as p
from jikimi_host.rig.firmware import (CONFIG, PASSKEY, PhoneApp, firmware_board, log_records, pair_at_power_up, records_since)
from jikimi_host.sim.hands import hold_button_through_power_up
from jikimi_host.sim.phone import Phone
from jikimi_host.errors import WaitTimeout
from jikimi_host.wait import until

pytestmark = pytest.mark.micropython
HOLD_MS = CONFIG["gestures"]["hold_ms"]
RIG = dict(CONFIG, test_console=True)  # `mem` on the console: the bell's live heap


@pytest.fixture
async def rig_bell(tmp_path, radio):
    async for board in firmware_board(tmp_path / "flash", radio, RIG):
        yield board


async def heap(bell) -> int:
    """The bell's live heap after a collection (the test console's `mem`)."""
    mark = len(log_records(bell))
    bell.console.write(b"mem\n")
    found = await until(lambda: records_since(bell, mark, "mem"), what="the mem line")
    return found[0]["alloc"]


async def answered_status(app: PhoneApp, attempts: int = 10) -> tuple[p.Message, int]:
    """REQUEST_STATUS until it is answered, as a phone does when a command gets no RESULT (a
    write the bell had no room for is dropped, PROTOCOL.md §12). Returns the STATUS and how many
    REQUEST_STATUS it took."""
    for attempt in range(1, attempts + 1):
        before = len(app.frames)
        await app.send(p.REQUEST_STATUS)
        counter = app.counter
        try:
            await until(lambda: any(m.type == p.RESULT and m.counter == counter for m in app.frames[before:]),
                        timeout_s=5, what="the RESULT")
        except WaitTimeout:
            continue  # dropped: send it again, with a new counter
        found = await until(lambda: [m for m in app.frames[before:] if m.type == p.STATUS], what="the STATUS")
        return found[-1], attempt
    raise AssertionError(f"no REQUEST_STATUS answered in {attempts} attempts")


def commands_logged(bell, mark: int) -> int:
    return len(records_since(bell, mark, "ble", msg="command"))


async def test_a_phone_flooding_commands_gets_some_answered_the_rest_counted_and_the_alarm_still_works(rig_bell, radio):
    bell = rig_bell
    app = await pair_at_power_up(bell, radio)
    await answered_status(app)
    before = await heap(bell)
    mark = len(log_records(bell))
    sent = 200
    # Write commands (no response) go out as fast as the link carries them; NimBLE takes them
    # although Commands only offers write with response.
    for _ in range(sent):
        app.counter += 1
        frame = p.encode(p.Message(p.SET_TIME, counter=app.counter, time=800_000_000 + app.counter))
        await app.commands.write_value(frame, with_response=False)
    status, attempts = await answered_status(app)
    sent += attempts
    # Every write was answered or dropped and counted; none vanished, none is queued.
    await until(lambda: commands_logged(bell, mark) + status.dropped >= sent, what="every write accounted for")
    dropped_lines = records_since(bell, mark, "ble", msg="commands_dropped")
    assert status.dropped > 0 and dropped_lines, "the flood never filled the ring: nothing tested"
    assert commands_logged(bell, mark) + status.dropped == sent
    assert dropped_lines[-1]["total"] == status.dropped
    assert not records_since(bell, 0, "task_error")
    # Bounded: what the flood left on the heap is at most a few frames, not 200 of them.
    after = await heap(bell)
    assert after - before < 2048, (before, after)
    await bell.press("button", hold_s=HOLD_MS / 1000 + 0.5)
    await until(lambda: app.of(p.ALARM_RAISED), what="the alarm after the flood")


async def test_a_chattering_contact_neither_alarms_nor_hides_the_hold_that_follows(bell, radio):
    app = await pair_at_power_up(bell, radio)
    mark = len(log_records(bell))
    released = 1 - bell.active_level("button")
    # 600 edges with no time between them (far faster than any debounce accepts), ending
    # released: an IRQ storm the inputs task cannot keep up with. The board lands them at once,
    # as a chip's pin sees them (boards/sim/simlink.py: a reader thread descheduled mid-train
    # once held the contact closed for 3 s on a loaded host, which the core rightly took for a
    # hold). One burst: what must never come of it is a gesture or an event.
    bell.bounce("button", released, [0] * 600)
    await until(lambda: records_since(bell, mark, "inputs_dropped"), what="the edge ring overflowing")
    # A press made of the chatter would be accepted within milliseconds and alarm HOLD_MS later:
    # give it twice that, then nothing may have come.
    await asyncio.sleep(2 * HOLD_MS / 1000)
    assert not [r for r in records_since(bell, mark, "core") if r["msg"].startswith(("gesture", "event"))]
    status, _ = await answered_status(app)
    lines = records_since(bell, mark, "inputs_dropped")
    assert status.dropped == lines[-1]["total"] == sum(line["edges"] for line in lines) > 0
    assert {name for line in lines for name in line["resynced"]} == {"button"}  # the pin read again
    assert not app.of(p.ALARM_RAISED)

    await bell.press("button", hold_s=HOLD_MS / 1000 + 0.5)  # a real hold, right after
    await until(lambda: app.of(p.ALARM_RAISED), what="the alarm of the real hold")
    (alarm,) = app.of(p.ALARM_RAISED)
    assert alarm.trigger == p.TRIGGER_HOLD


# -- a power cut while a new bond is stored -----------------------------------------------------

# the log line of an authenticated, bonded link (MicroPython's json.dumps orders keys its own way)
SECURE = r'^J (?=.*"msg": "secure")(?=.*"authenticated": 1)(?=.*"bonded": 1).*$'


def bond_on_flash(bell) -> dict:
    """bonds.json as the power cut left it, parsed (it must parse)."""
    return json.loads((bell.flash / "bonds.json").read_text())


@pytest.mark.parametrize("delay_ms", [0, 20, 50, 100])
async def test_a_power_cut_while_a_bond_is_stored_leaves_the_whole_bond_or_none(bell, radio, delay_ms):
    await hold_button_through_power_up(bell, CONFIG["gestures"]["pairing_hold_ms"])
    await until(lambda: records_since(bell, 0, "core", msg="pairing open"), what="the pairing window")
    phone = await Phone(radio).start()
    await phone.connect(bell.ble.on_air_address)
    start = len(bell.console.text())
    pairing = asyncio.ensure_future(phone.pair(PASSKEY))
    await bell.console.expect(SECURE, timeout_s=60, start=start)
    await asyncio.sleep(delay_ms / 1000)
    await bell.power_cut()
    try:
        await pairing
    except Exception:
        pass  # the phone's side may not have finished: the bell went away
    await phone.disconnect()

    mark = len(log_records(bell))
    await bell.start()
    await until(lambda: records_since(bell, mark, "ready"), what="the reboot")
    assert not records_since(bell, mark, "bonds_error")  # the file was whole
    assert not (bell.flash / "bonds.json.bad").exists()
    assert not (bell.flash / "bonds.json.tmp").exists()  # a half write is cleared at boot
    data = bond_on_flash(bell)
    peers = data["peers"]
    peer_secrets = sorted(name for name in data["secrets"] if name.split(":")[0] in ("1", "2"))
    if peers:  # the whole bond: both secrets and a fresh counter, and the phone comes back with it
        (key,) = peers
        assert peer_secrets == [f"1:{key}", f"2:{key}"] and data["counters"] == {key: 0}
        outcome = "bond kept"
        app = PhoneApp(phone)
        await phone.connect(bell.ble.identity_address)
        await phone.encrypt()
        await app.open()
    else:  # no bond at all: the owner pairs again in a new window
        assert peer_secrets == [] and data["counters"] == {}
        outcome = "no bond"
        await bell.power_cut()
        mark = len(log_records(bell))
        await hold_button_through_power_up(bell, CONFIG["gestures"]["pairing_hold_ms"])
        await until(lambda: records_since(bell, mark, "core", msg="pairing open"), what="a new window")
        await phone.connect(bell.ble.on_air_address)
        await phone.pair(PASSKEY)
        await until(lambda: records_since(bell, mark, "ble", msg="bonded"), what="the new bond")
        app = PhoneApp(phone)
        await app.open()
    print(f"power cut {delay_ms} ms after the secure line: {outcome}")
    await bell.press("button", hold_s=HOLD_MS / 1000 + 0.5)
    await until(lambda: app.of(p.ALARM_RAISED), what=f"the alarm ({outcome})")
