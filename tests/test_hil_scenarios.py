"""The HIL scenario suite: the same incidents on every target the rig supports — the virtual
board (default, in CI) or a real ESP32 (`pytest tests/test_hil_scenarios.py --jikimi-target
/dev/ttyUSB0 --jikimi-radio usb:0`; README "HIL rig"). Only the rig's fixtures are used here:
`jikimi_target` (the device), `jikimi_relay` (the phone, paired), `jikimi_store` (what it sent)."""

from __future__ import annotations

import asyncio

import pytest

from jikimi_host.wait import until
from jikimi_host.rig.pytest_plugin import DEVICE_NAME, GUARDIANS, RELAY_CANCEL_WINDOW_S

pytestmark = [pytest.mark.micropython, pytest.mark.jikimi_scenario]
HOLD_S = 2.0  # the scenario config's hold_ms is 1 s, with a second of room: a loaded host can deliver the press late
EMERGENCY = "112"


async def texted_everyone(store, count: int = 1, timeout_s: float = 20) -> None:
    await until(lambda: all(len(store.texts_to(g)) >= count for g in GUARDIANS), timeout_s,
                f"{count} text(s) to every guardian")
    assert all(len(store.texts_to(g)) == count for g in GUARDIANS), [store.texts_to(g) for g in GUARDIANS]


async def reported_to_112(store) -> None:
    await until(lambda: store.calls_to(EMERGENCY) and store.texts_to(EMERGENCY), RELAY_CANCEL_WINDOW_S + 20,
                "the 112 report and call")
    assert len(store.calls_to(EMERGENCY)) == 1 and len(store.texts_to(EMERGENCY)) == 1


async def test_reference_incident_hold_siren_guardians_then_112(jikimi_target, jikimi_relay, jikimi_store):
    await jikimi_target.press("button", hold_s=HOLD_S)
    await jikimi_target.expect_event("alarm_raised")
    assert await jikimi_target.siren_on()
    await texted_everyone(jikimi_store)
    assert not jikimi_store.texts_to(EMERGENCY)  # not inside the cancel window
    await reported_to_112(jikimi_store)


async def test_silent_alarm_triple_press_makes_no_sound_and_still_reports(jikimi_target, jikimi_relay, jikimi_store):
    for _ in range(3):
        await jikimi_target.press("button", hold_s=0.1)
        await asyncio.sleep(0.1)
    assert "mode=2 trigger=2" in await jikimi_target.expect_event("alarm_raised")
    await texted_everyone(jikimi_store)
    assert not await jikimi_target.siren_on()
    await reported_to_112(jikimi_store)
    assert not await jikimi_target.siren_on()


async def test_cancel_inside_the_window_tells_guardians_and_never_112(jikimi_target, jikimi_relay, jikimi_store):
    await jikimi_target.press("button", hold_s=HOLD_S)
    await texted_everyone(jikimi_store)
    await asyncio.sleep(0.5)
    await jikimi_target.press("button", hold_s=HOLD_S)
    await jikimi_target.expect_event("alarm_cancelled")
    await texted_everyone(jikimi_store, count=2)
    await asyncio.sleep(RELAY_CANCEL_WINDOW_S + 1)  # past the window: nothing may go to 112
    assert not jikimi_store.texts_to(EMERGENCY) and not jikimi_store.calls_to(EMERGENCY)


async def test_door_armed_from_the_phone_then_opened_raises_the_intrusion_alarm(jikimi_target, jikimi_relay,
                                                                               jikimi_store):
    await jikimi_relay.command(f"arm {DEVICE_NAME}")
    await jikimi_target.expect_event("armed")
    await jikimi_target.set_input("door", 1)
    assert "trigger=4" in await jikimi_target.expect_event("alarm_raised", timeout_s=10)
    await texted_everyone(jikimi_store)
    await reported_to_112(jikimi_store)
    await jikimi_relay.command(f"disarm {DEVICE_NAME}")
    await jikimi_target.expect_event("disarmed")
    async def siren_off() -> bool:
        return not await jikimi_target.siren_on()

    await until(siren_off, 10, "the siren stopping on disarm")


async def test_low_battery_tells_guardians_only(jikimi_target, jikimi_relay, jikimi_store):
    await jikimi_target.set_battery_mv(3300)
    assert "low=1" in await jikimi_target.expect_event("battery", timeout_s=30)
    await texted_everyone(jikimi_store)
    await asyncio.sleep(1)
    assert not jikimi_store.texts_to(EMERGENCY) and not jikimi_store.calls_to(EMERGENCY)


async def test_an_alarm_while_the_phone_is_away_is_delivered_when_it_is_back(jikimi_target, jikimi_relay,
                                                                            jikimi_store):
    await jikimi_relay.stop()  # the phone is out of range (or its app was killed)
    await jikimi_target.press("button", hold_s=HOLD_S)
    await jikimi_target.expect_event("alarm_raised")
    assert await jikimi_target.siren_on()  # the siren does not wait for the phone
    await jikimi_relay.start()
    await texted_everyone(jikimi_store, timeout_s=60)


def connections(relay) -> list[dict]:
    return [r for r in relay.records if r["kind"] == "link" and r["text"].startswith(f"connected to {DEVICE_NAME}")]


async def test_after_a_reboot_the_bond_holds_and_alarms_still_arrive(jikimi_target, jikimi_relay, jikimi_store):
    before, records = len(connections(jikimi_relay)), len(jikimi_relay.records)
    await jikimi_target.reset()
    await until(lambda: len(connections(jikimi_relay)) > before, 60, "the relay reconnecting after the reboot")
    assert not [r for r in jikimi_relay.records[records:] if "pairing" in r.get("text", "")]  # no re-pairing
    await jikimi_target.press("button", hold_s=HOLD_S)
    await texted_everyone(jikimi_store, timeout_s=30)


async def test_a_power_cut_before_the_ack_loses_nothing(jikimi_power_cut, jikimi_relay, jikimi_store):
    target = jikimi_power_cut
    await jikimi_relay.stop()
    await target.press("button", hold_s=HOLD_S)
    await target.expect_event("alarm_raised")
    await target.power_cut()  # the battery falls out before any phone heard of it
    await target.boot()
    await jikimi_relay.start()
    await texted_everyone(jikimi_store, timeout_s=60)
