"""The fake BlueZ (jikimi_host.sim.bluez) as the OS Bluetooth stack between the real firmware on a
virtual board and D-Bus clients: the owner pairs through the OS first (an agent types the passkey
from the label, as with bluetoothctl), the OS keeps the bond across a restart, and an unmodified
bleak then connects by the bell's identity address, reads Info, subscribes to Events, commands
the bell, hears the button, and notices the bell going away."""

import asyncio

import pytest
from bleak import BleakClient
from bleak.exc import BleakDBusError
from jikimi import protocol as p
from jikimi_host.rig.firmware import PASSKEY, expect_log
from jikimi_host.rig.os_stack import CallError, find_in_pairing_window
from jikimi_host.sim.bluez import ADAPTER_PATH
from jikimi_host.wait import until

pytestmark = pytest.mark.micropython


async def test_the_owner_pairs_through_the_os_with_the_passkey_from_the_label(bell, bluez, owner):
    path, rpa = await find_in_pairing_window(owner, bell)

    owner.agent.passkey = (PASSKEY + 1) % 1000000  # a typo
    with pytest.raises(CallError) as failed:
        await owner.pair(path)
    assert (failed.value.name, failed.value.text) == ("org.bluez.Error.AuthenticationFailed", "Authentication Failed")
    assert owner.agent.asked == [path]
    props = (await owner.objects())[path]["org.bluez.Device1"]
    assert props["Paired"] is False and props["Address"] == rpa

    # The bell refuses pairing for a while after a failed attempt (PROTOCOL.md §2.3): wait it out.
    failure = await expect_log(bell, "ble", msg="pairing_failed", attempt=1)
    await asyncio.sleep(failure["locked_ms"] / 1000 + 0.2)
    owner.agent.passkey = PASSKEY
    await owner.pair(path)
    await expect_log(bell, "ble", msg="secure", authenticated=1, bonded=1)
    identity = bell.ble.identity_address.to_string(with_type_qualifier=False)
    props = (await owner.objects())[path]["org.bluez.Device1"]
    assert props["Paired"] is True and props["Bonded"] is True
    assert props["Address"] == identity  # known by its identity address from now on, as BlueZ does
    with pytest.raises(CallError) as again:
        await owner.pair(path)
    assert again.value.name == "org.bluez.Error.AlreadyExists"
    await owner.call(ADAPTER_PATH, "org.bluez.Adapter1", "StopDiscovery")

    # bluetoothd restarts (a reboot of the laptop): the bond is still there, under the identity address
    assert await bluez.stop() == 0  # SIGTERM: a clean exit
    await bluez.start()
    objects = await owner.objects()
    props = objects[f"{ADAPTER_PATH}/dev_{identity.replace(':', '_')}"]["org.bluez.Device1"]
    assert props["Paired"] is True and props["Bonded"] is True and props["Connected"] is False
    assert props["Address"] == identity


async def test_bleak_talks_to_a_bell_the_os_paired(bell, bluez, owner):
    path, _ = await find_in_pairing_window(owner, bell)
    owner.agent.passkey = PASSKEY
    await owner.pair(path)
    await owner.call(ADAPTER_PATH, "org.bluez.Adapter1", "StopDiscovery")
    await expect_log(bell, "core", msg="pairing closed")
    await owner.call(path, "org.bluez.Device1", "Disconnect")
    await owner.device(lambda props: props["Paired"] and not props["Connected"], what="disconnected")
    identity = bell.ble.identity_address.to_string(with_type_qualifier=False)

    frames: list[p.Message] = []
    gone = asyncio.Event()
    client = BleakClient(identity, disconnected_callback=lambda _: gone.set(), timeout=20)
    await client.connect()  # scans for the identity address (the bell advertises an RPA), encrypts with the bond
    try:
        info = p.decode(await client.read_gatt_char(p.uuid(p.UUID_INFO)))
        assert info.type == p.INFO and info.max_frame == p.MAX_FRAME

        await client.start_notify(p.uuid(p.UUID_EVENTS), lambda _, data: frames.append(p.decode(bytes(data))))
        await client.write_gatt_char(p.uuid(p.UUID_COMMANDS), p.encode(p.Message(p.REQUEST_STATUS, counter=1)), response=True)
        result = await until(lambda: [m for m in frames if m.type == p.RESULT], timeout_s=10, what="RESULT")
        assert (result[0].counter, result[0].command, result[0].code) == (1, p.REQUEST_STATUS, p.E_OK)
        await until(lambda: [m for m in frames if m.type == p.STATUS], timeout_s=10, what="STATUS")

        # a replayed counter is refused by the bell (not by the OS): the write itself succeeds
        await client.write_gatt_char(p.uuid(p.UUID_COMMANDS), p.encode(p.Message(p.REQUEST_STATUS, counter=1)), response=True)
        replayed = await until(lambda: [m for m in frames if m.type == p.RESULT and m.code == p.E_REPLAYED],
                               timeout_s=10, what="REPLAYED")
        assert replayed[0].detail == 1

        await bell.press("button", hold_s=2.0)  # hold 1 s: an alarm
        alarms = await until(lambda: [m for m in frames if m.type == p.ALARM_RAISED], timeout_s=10, what="alarm")
        assert alarms[0].trigger == p.TRIGGER_HOLD

        await bell.power_cut()  # the battery is pulled out
        await asyncio.wait_for(gone.wait(), 10)
        assert not client.is_connected
    finally:
        await client.disconnect()


async def test_without_a_bond_bleak_reads_info_and_a_command_is_refused_as_not_paired(bell, bluez, owner):
    path, rpa = await find_in_pairing_window(owner, bell)
    client = BleakClient(rpa, timeout=20)
    await client.connect()
    try:
        assert p.decode(await client.read_gatt_char(p.uuid(p.UUID_INFO))).type == p.INFO
        with pytest.raises(BleakDBusError) as refused:
            await client.write_gatt_char(p.uuid(p.UUID_COMMANDS), p.encode(p.Message(p.REQUEST_STATUS, counter=1)),
                                         response=True)
        assert (refused.value.dbus_error, refused.value.dbus_error_details) == ("org.bluez.Error.NotPermitted",
                                                                                "Not paired")
        objects = await owner.objects()
        assert objects[path]["org.bluez.Device1"]["ServicesResolved"] is True
        assert any(o.get("org.bluez.GattCharacteristic1", {}).get("UUID") == p.uuid(p.UUID_EVENTS) for o in objects.values())
    finally:
        await client.disconnect()
    objects = await owner.objects()
    assert objects[path]["org.bluez.Device1"]["Connected"] is False
    assert not [o for o in objects if o.startswith(path + "/")]  # the GATT objects went with the link


async def test_a_link_that_drops_as_it_comes_up_is_retried_by_bleak(radio, bluez):
    # In the air this is "connection failed to be established" (0x3E): BlueZ shows Connected true
    # then false and fails Connect with "le-connection-abort-by-local", bleak's cue to try again.
    peripheral = radio.phone_device("peripheral", "D1:11:22:33:44:55")
    await peripheral.power_on()
    dropped: list[asyncio.Task] = []

    def on_connection(connection) -> None:
        if not dropped:  # only the first time
            dropped.append(asyncio.ensure_future(connection.disconnect()))

    peripheral.on(peripheral.EVENT_CONNECTION, on_connection)
    await peripheral.start_advertising(auto_restart=True, advertising_interval_min=50, advertising_interval_max=50)
    disconnections: list[object] = []
    client = BleakClient("D1:11:22:33:44:55", disconnected_callback=disconnections.append, timeout=20)
    await client.connect()
    try:
        assert dropped and client.is_connected
        assert len(disconnections) == 1  # bleak reports the failed attempt as a disconnection
    finally:
        await client.disconnect()
