"""A stalker in radio range, against the real firmware on a virtual board.

Each test is one attack from issue 12, played by a stranger's phone on the same virtual radio as
the bell and its owner's phone: pairing without the passkey, holding the bell's connection,
guessing the passkey, and using up command counters. Nothing here depends on how the virtual
board's BLE is built: the bell's behaviour is read from what the phones see and from its
structured log and flash.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from bumble.pairing import PairingConfig, PairingDelegate

from jikimi import protocol as p
from jikimi_host.relay.pairing import Passkey
from jikimi_host.rig.firmware import (CONFIG, PASSKEY, PhoneApp, expect_event, expect_log, firmware_board, log_records, pair_at_power_up, records_since)
from jikimi_host.sim.hands import hold_button_through_power_up
from jikimi_host.sim.phone import Phone
from jikimi_host.wait import until

IO = PairingDelegate.IoCapability
WRONG_PASSKEY = (PASSKEY + 1) % 1000000


@pytest.fixture
async def bell(tmp_path, radio):
    async for board in firmware_board(tmp_path / "bell", radio, CONFIG):
        yield board


def stranger(radio, n: int, io=IO.NO_OUTPUT_NO_INPUT, sc: bool = True, mitm: bool = False,
             passkey: int = 0) -> Phone:
    """A stranger's phone: its own I/O capabilities and pairing options."""
    phone = Phone(radio, name=f"stranger-{n}")
    delegate = Passkey(passkey) if io == IO.KEYBOARD_INPUT_ONLY else PairingDelegate(io_capability=io)
    phone.device.pairing_config_factory = lambda connection: PairingConfig(
        sc=sc, mitm=mitm, bonding=True, delegate=delegate)
    return phone


def bonds_on_flash(bell) -> list[str]:
    path = bell.flash / "bonds.json"
    return json.loads(path.read_text())["peers"] if path.exists() else []


async def try_pairing(phone: Phone, timeout_s: float = 30.0) -> bool:
    """Pair on the phone's connection; True if the phone's side of pairing succeeded."""
    try:
        await asyncio.wait_for(phone.connection.pair(), timeout_s)
        return True
    except Exception:  # refused, failed or dropped
        return False


async def dropped(phone: Phone, timeout_s: float = 30.0) -> None:
    await until(lambda: not phone.connected, timeout_s, "the bell to drop the stranger")


async def test_strangers_pairing_just_works_outside_the_window_keep_no_bond_and_evict_nobody(bell, radio):
    owner = await pair_at_power_up(bell, radio)
    await expect_log(bell, "core", msg="pairing closed")
    owner_bond = bonds_on_flash(bell)
    assert len(owner_bond) == 1
    for n in range(CONFIG.get("ble", {}).get("max_bonds", 4)):  # as many as the bell keeps bonds
        phone = await stranger(radio, n).start()
        await phone.connect(bell.ble.on_air_address)
        await try_pairing(phone)  # Just Works: no passkey asked
        await dropped(phone)
        await phone.device.power_off()
    await until(lambda: len(records_since(bell, 0, "ble", msg="dropped", reason="unauthenticated")) == 4, what="4 drops")
    assert bonds_on_flash(bell) == owner_bond
    # The owner's phone still re-encrypts with its bond and gets the next alarm.
    await owner.phone.disconnect()
    await owner.phone.connect(bell.ble.identity_address)
    await owner.phone.encrypt()
    await owner.open()
    await bell.press("button", hold_s=1.5)
    await until(lambda: owner.of(p.ALARM_RAISED), 20, "the alarm at the owner's phone")


async def test_inside_the_window_only_the_passkey_bonds_every_other_method_is_dropped(bell, radio):
    await hold_button_through_power_up(bell, CONFIG["gestures"]["pairing_hold_ms"])
    await expect_log(bell, "core", msg="pairing open")
    methods = [  # what a phone can offer, besides LE Secure Connections passkey entry
        dict(io=IO.NO_OUTPUT_NO_INPUT),  # Just Works
        dict(io=IO.NO_OUTPUT_NO_INPUT, sc=False),  # legacy Just Works
        dict(io=IO.DISPLAY_OUTPUT_AND_YES_NO_INPUT, mitm=True),  # numeric comparison, if it could
    ]
    for n, method in enumerate(methods):
        phone = await stranger(radio, n, **method).start()
        await phone.connect(bell.ble.on_air_address)
        await try_pairing(phone)
        await dropped(phone)
        await phone.device.power_off()
    assert bonds_on_flash(bell) == [] and not records_since(bell, 0, "ble", msg="bonded")
    assert not records_since(bell, 0, "ble", msg="pairing_failed")  # none of them was a passkey attempt
    # The window is still open for the owner, whose passkey pairing is the one that bonds.
    owner = await Phone(radio).start()
    await owner.connect(bell.ble.on_air_address)
    await owner.pair(PASSKEY)
    await expect_log(bell, "ble", msg="bonded", bonds=1)
    assert len(bonds_on_flash(bell)) == 1


async def test_outside_the_window_even_the_right_passkey_does_not_pair(bell, radio):
    await bell.start()
    await expect_log(bell, "ready")
    for n, method in enumerate([dict(io=IO.KEYBOARD_INPUT_ONLY, mitm=True, passkey=PASSKEY),
                                dict(io=IO.KEYBOARD_INPUT_ONLY, mitm=True, sc=False, passkey=PASSKEY),
                                dict(io=IO.DISPLAY_OUTPUT_AND_YES_NO_INPUT, mitm=True),  # numeric comparison
                                dict(io=IO.NO_OUTPUT_NO_INPUT, sc=False),  # legacy Just Works
                                dict(io=IO.NO_OUTPUT_NO_INPUT)]):
        phone = await stranger(radio, n, **method).start()
        await phone.connect(bell.ble.on_air_address)
        await try_pairing(phone)
        await dropped(phone)
        await phone.device.power_off()
    await until(lambda: records_since(bell, 0, "ble", msg="pairing_refused", reason="window_closed"), what="refusals")
    assert bonds_on_flash(bell) == [] and not records_since(bell, 0, "ble", msg="bonded")


async def test_a_stranger_who_connects_and_idles_neither_hides_the_bell_nor_stays(bell, radio):
    owner = await pair_at_power_up(bell, radio)
    await owner.phone.disconnect()
    lurker = await stranger(radio, 0).start()
    await lurker.connect(bell.ble.on_air_address)  # connects, never pairs, just sits there
    await bell.press("button", hold_s=1.5)
    await expect_event(bell, "alarm_raised")
    # The bell still advertises for its owner, whose phone gets the alarm at once.
    await owner.phone.connect(bell.ble.identity_address, attempts=2)
    await owner.phone.encrypt()
    await owner.open()
    await until(lambda: owner.of(p.ALARM_RAISED), 20, "the alarm at the owner's phone")
    assert lurker.connected
    await dropped(lurker, timeout_s=30)  # after the documented 10 s
    await until(lambda: records_since(bell, 0, "ble", msg="dropped", reason="timeout"), what="the timeout in the log")


async def test_a_flood_of_strangers_cannot_keep_the_owner_out(bell, radio):
    owner = await pair_at_power_up(bell, radio)
    await owner.phone.disconnect()
    strangers = [await stranger(radio, n).start() for n in range(6)]
    for phone in strangers:  # more than the bell has connections: each new one makes room
        await phone.connect(bell.ble.on_air_address, attempts=3)
    await until(lambda: records_since(bell, 0, "ble", msg="dropped", reason="room"), what="a stranger dropped for room")
    await bell.press("button", hold_s=1.5)
    await owner.phone.connect(bell.ble.identity_address, attempts=3)
    await owner.phone.encrypt()
    await owner.open()
    await until(lambda: owner.of(p.ALARM_RAISED), 20, "the alarm at the owner's phone")


async def test_guessing_the_passkey_gets_three_tries_then_the_window_closes_and_the_passkey_retires(tmp_path, radio):
    lockout_s = 1.0
    config = dict(CONFIG, ble={"pairing_lockout_ms": int(lockout_s * 1000)})
    async for bell in firmware_board(tmp_path / "bell", radio, config):
        await hold_button_through_power_up(bell, CONFIG["gestures"]["pairing_hold_ms"])
        await expect_log(bell, "core", msg="pairing open")
        for attempt in (1, 2, 3):
            guess = await stranger(radio, attempt, io=IO.KEYBOARD_INPUT_ONLY, mitm=True, passkey=WRONG_PASSKEY).start()
            await guess.connect(bell.ble.on_air_address)
            assert not await try_pairing(guess)
            failed = await expect_log(bell, "ble", msg="pairing_failed", attempt=attempt)
            await guess.device.power_off()
            if attempt == 3:
                break
            # Locked out: even the right passkey is refused now, so a try tells nothing.
            lucky = await stranger(radio, 10 + attempt, io=IO.KEYBOARD_INPUT_ONLY, mitm=True, passkey=PASSKEY).start()
            await lucky.connect(bell.ble.on_air_address)
            assert not await try_pairing(lucky)
            await lucky.device.power_off()
            assert failed["locked_ms"] == int(lockout_s * 1000) << (attempt - 1)  # doubling
            await asyncio.sleep(failed["locked_ms"] / 1000 + 0.2)  # the log line came after the lock
        assert len(records_since(bell, 0, "ble", msg="pairing_refused", reason="locked_out")) == 2
        await expect_log(bell, "ble", msg="pairing_window_closed", reason="failures")
        await expect_log(bell, "ble", msg="passkey_retired")
        assert bonds_on_flash(bell) == []

        # The passkey is spent: the owner's next window refuses it, and says why.
        await bell.power_cut()
        mark = len(log_records(bell))
        await hold_button_through_power_up(bell, CONFIG["gestures"]["pairing_hold_ms"])
        await until(lambda: records_since(bell, mark, "core", msg="pairing open"), what="the pairing window")
        owner = await Phone(radio).start()
        await owner.connect(bell.ble.on_air_address)
        with pytest.raises(Exception):
            await owner.pair(PASSKEY, timeout_s=30)
        await until(lambda: records_since(bell, mark, "ble", msg="pairing_refused", reason="passkey_retired"),
                    what="the bell saying why")
        await owner.disconnect()

        # A newly provisioned passkey (jikimi provision) pairs again.
        await bell.power_cut()
        bell.deploy({"config.json": json.dumps(dict(config, passkey="271828"))})
        mark = len(log_records(bell))
        await hold_button_through_power_up(bell, CONFIG["gestures"]["pairing_hold_ms"])
        await until(lambda: records_since(bell, mark, "core", msg="pairing open"), what="the pairing window")
        await owner.connect(bell.ble.on_air_address)
        await owner.pair(271828)
        await until(lambda: records_since(bell, mark, "ble", msg="bonded"), what="the new passkey to bond")


async def test_a_used_up_counter_goes_with_its_bond_and_pairing_again_starts_afresh(bell, radio):
    owner = await pair_at_power_up(bell, radio)
    owner.counter = 0xFFFFFFFE
    await owner.send(p.REQUEST_STATUS)  # counter 0xFFFFFFFF: the highest there is
    owner.counter = 0xFFFFFFFE
    await owner.send(p.REQUEST_STATUS)
    replayed = await until(lambda: [m for m in owner.of(p.RESULT) if m.code == p.E_REPLAYED], 20, "REPLAYED")
    assert replayed[0].detail == 0xFFFFFFFF  # nothing this phone sends can be accepted now
    await owner.phone.disconnect()

    # The owner forgets all phones (the window, then a double press) and pairs again.
    await bell.power_cut()
    mark = len(log_records(bell))
    await hold_button_through_power_up(bell, CONFIG["gestures"]["pairing_hold_ms"])
    await until(lambda: records_since(bell, mark, "core", msg="pairing open"), what="the pairing window")
    for _ in range(2):
        await bell.press("button", hold_s=0.1)
        await asyncio.sleep(0.1)
    await until(lambda: records_since(bell, mark, "ble", msg="bonds_forgotten"), what="bonds forgotten")
    assert json.loads((bell.flash / "bonds.json").read_text())["counters"] == {}
    fresh = PhoneApp(await Phone(radio, name="same owner, paired again").start())
    await fresh.phone.connect(bell.ble.on_air_address)
    await fresh.phone.pair(PASSKEY)
    await until(lambda: records_since(bell, mark, "ble", msg="bonded"), what="the new bond")
    await fresh.open()
    await fresh.send(p.REQUEST_STATUS)  # counter 1 again
    ok = await until(lambda: [m for m in fresh.of(p.RESULT) if m.counter == 1], 20, "RESULT of counter 1")
    assert ok[0].code == p.E_OK
    stored = json.loads((bell.flash / "bonds.json").read_text())
    assert list(stored["counters"]) == stored["peers"]  # one counter, the bond's


async def test_only_admission_leaves_a_counter_unused_an_admitted_command_uses_it(bell, radio):
    owner = await pair_at_power_up(bell, radio)
    owner.counter = 4
    await owner.send(p.REQUEST_STATUS)  # 5: accepted
    owner.counter = 2
    await owner.send(p.REQUEST_STATUS)  # 3: REPLAYED, the counter stays at 5
    await owner.send(p.REQUEST_STATUS)  # 4: REPLAYED, still 5
    owner.counter = 5
    await owner.send(p.CANCEL_ALARM, epoch=0, alarm_seq=1)  # 6: admitted, refused (no such alarm)
    results = await until(lambda: len(owner.of(p.RESULT)) >= 4 and owner.of(p.RESULT), 20, "4 results")
    assert [(m.counter, p.error_name(m.code), m.detail) for m in results] == [
        (5, "OK", 0), (3, "REPLAYED", 5), (4, "REPLAYED", 5), (6, "BAD_FIELD", 0)]
    owner.counter = 5
    await owner.send(p.REQUEST_STATUS)  # 6 again: used by the refused command (PROTOCOL.md §7.1)
    again = await until(lambda: len(owner.of(p.RESULT)) >= 5 and owner.of(p.RESULT)[4], 20, "the 5th result")
    assert (again.counter, p.error_name(again.code), again.detail) == (6, "REPLAYED", 6)
