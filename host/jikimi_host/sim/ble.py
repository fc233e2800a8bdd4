"""The virtual board's BLE: MicroPython's `bluetooth.BLE` calls (boards/sim/bluetooth.py) mapped
onto a Bumble host stack and a virtual controller on the radio's link.

Advertising, connections, SMP pairing (LE Secure Connections, passkey entry through IRQ 31),
encryption, GATT and ATT errors are Bumble's. What MicroPython leaves to the application stays
with the device code: bond keys are kept by the device's secret handlers (IRQs 29/30) through
`DeviceSecretStore`, never by this process, so they survive exactly as well as the firmware
stores them.

Security flags are checked here, per MicroPython's meaning: *_ENCRYPTED needs an encrypted link,
*_AUTHENTICATED needs a link encrypted with a key from MITM-protected (passkey or numeric
comparison) pairing. (Bumble's own check treats any pairing as authenticated, so the
characteristics are registered as plain readable/writable and checked in the callbacks.)
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bumble import att, gatt, hci
from bumble.controller import Controller
from bumble.core import UUID
from bumble.device import AdvertisingType, Connection, Device, DeviceConfiguration
from bumble.host import Host
from bumble.keys import KeyStore, PairingKeys
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport.common import AsyncPipeSink

from jikimi_host.sim.channel import ChannelClosed, DeviceError

if TYPE_CHECKING:
    from jikimi_host.sim.board import VirtualBoard
    from jikimi_host.sim.radio import VirtualRadio

logger = logging.getLogger(__name__)

# MicroPython IRQ event codes
IRQ_CENTRAL_CONNECT = 1
IRQ_CENTRAL_DISCONNECT = 2
IRQ_GATTS_WRITE = 3
IRQ_GATTS_INDICATE_DONE = 20
IRQ_MTU_EXCHANGED = 21
IRQ_ENCRYPTION_UPDATE = 28
IRQ_GET_SECRET = 29
IRQ_SET_SECRET = 30
IRQ_PASSKEY_ACTION = 31
PASSKEY_ACTION_INPUT = 2
PASSKEY_ACTION_DISPLAY = 3
PASSKEY_ACTION_NUMERIC_COMPARISON = 4

# MicroPython characteristic flags
FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010
FLAG_INDICATE = 0x0020
FLAG_READ_ENCRYPTED = 0x0200
FLAG_READ_AUTHENTICATED = 0x0400
FLAG_WRITE_ENCRYPTED = 0x1000
FLAG_WRITE_AUTHENTICATED = 0x2000

# Secret types: NimBLE's store object types, plus MicroPython's own IRK (modbluetooth_nimble.c)
SECRET_PEER_SEC = 2
SECRET_OUR_IRK = 10

# config(io=...) -> Bumble I/O capability
IO_CAPABILITIES = {
    0: PairingDelegate.IoCapability.DISPLAY_OUTPUT_ONLY,
    1: PairingDelegate.IoCapability.DISPLAY_OUTPUT_AND_YES_NO_INPUT,
    2: PairingDelegate.IoCapability.KEYBOARD_INPUT_ONLY,
    3: PairingDelegate.IoCapability.NO_OUTPUT_NO_INPUT,
    4: PairingDelegate.IoCapability.DISPLAY_OUTPUT_AND_KEYBOARD_INPUT,
}
PASSKEY_TIMEOUT_S = 30.0
DEFAULT_BUFFER = 20  # MicroPython's default characteristic buffer (bytes)


def address_key(address: hci.Address) -> bytes:
    """The secret key for a peer: its address type then the 6 address bytes (as NimBLE's
    ble_addr_t, little-endian)."""
    kind = 0 if address.address_type in (hci.Address.PUBLIC_DEVICE_ADDRESS,
                                         hci.Address.PUBLIC_IDENTITY_ADDRESS) else 1
    return bytes([kind]) + bytes(address)


def irq_address(address: hci.Address) -> tuple[int, str]:
    """(addr_type, hex of the address in display order), as MicroPython's IRQs give them."""
    kind = 0 if address.address_type in (hci.Address.PUBLIC_DEVICE_ADDRESS,
                                         hci.Address.PUBLIC_IDENTITY_ADDRESS) else 1
    return kind, bytes(reversed(bytes(address))).hex()


class DeviceSecretStore(KeyStore):
    """Bumble's key store, kept by the device's secret IRQs (29 get, 30 set)."""

    def __init__(self, bridge: "BleBridge") -> None:
        self.bridge = bridge

    @staticmethod
    def _key(name: str) -> bytes:
        return address_key(hci.Address(name))

    async def get(self, name: str) -> PairingKeys | None:
        value = await self.bridge.irq_request(IRQ_GET_SECRET, [SECRET_PEER_SEC, 0, self._key(name).hex()])
        return None if value is None else PairingKeys.from_dict(json.loads(bytes.fromhex(value))["keys"])

    async def update(self, name: str, keys: PairingKeys) -> None:
        # NimBLE reports the pairing's encryption (IRQ 28) before it stores the keys (IRQ 30),
        # so a phone that drops the link at once still leaves the device both, in that order.
        self.bridge.pairing_complete(name, keys)
        current = await self.get(name)
        if current is not None:  # Bumble updates in parts; keep what it does not resend
            merged = current.to_dict()
            merged.update(keys.to_dict())
            keys = PairingKeys.from_dict(merged)
        value = json.dumps({"address": name, "keys": keys.to_dict()}).encode()
        stored = await self.bridge.irq_request(IRQ_SET_SECRET, [SECRET_PEER_SEC, self._key(name).hex(), value.hex()])
        if not stored:
            raise RuntimeError("the device's secret handler did not store the bond")

    async def delete(self, name: str) -> None:
        await self.bridge.irq_request(IRQ_SET_SECRET, [SECRET_PEER_SEC, self._key(name).hex(), None])

    async def get_all(self) -> list[tuple[str, PairingKeys]]:
        found = []
        for index in range(64):
            value = await self.bridge.irq_request(IRQ_GET_SECRET, [SECRET_PEER_SEC, index, None])
            if value is None:
                break
            entry = json.loads(bytes.fromhex(value))
            found.append((entry["address"], PairingKeys.from_dict(entry["keys"])))
        return found


class DevicePairingDelegate(PairingDelegate):
    """Asks the device code (IRQ 31, answered by gap_passkey) for what the user would do."""

    def __init__(self, bridge: "BleBridge", connection: Connection, io: int) -> None:
        super().__init__(io_capability=IO_CAPABILITIES.get(io, PairingDelegate.IoCapability.NO_OUTPUT_NO_INPUT))
        self.bridge = bridge
        self.connection = connection

    async def _ask(self, action: int, number: int) -> int | None:
        future = asyncio.get_running_loop().create_future()
        self.bridge.passkey_waiters[self.connection.handle] = (action, future)
        self.bridge.irq(IRQ_PASSKEY_ACTION, [self.connection.handle, action, number])
        try:
            return await asyncio.wait_for(future, PASSKEY_TIMEOUT_S)
        except TimeoutError:
            return None
        finally:
            self.bridge.passkey_waiters.pop(self.connection.handle, None)

    async def generate_passkey(self) -> int:
        passkey = await self._ask(PASSKEY_ACTION_DISPLAY, 0)
        if passkey is None:
            # The device did not answer: pair with a passkey nobody knows, so pairing fails.
            return secrets.randbelow(1000000)
        return passkey

    async def get_number(self) -> int | None:
        return await self._ask(PASSKEY_ACTION_INPUT, 0)

    async def compare_numbers(self, number: int, digits: int) -> bool:
        return bool(await self._ask(PASSKEY_ACTION_NUMERIC_COMPARISON, number))


@dataclass
class Attr:
    """One registered characteristic or descriptor value."""

    handle: int
    flags: int
    attribute: gatt.Attribute
    value: bytes = b""
    size: int = DEFAULT_BUFFER
    append: bool = False


@dataclass
class LinkState:
    connection: Connection
    encrypted: bool = False
    authenticated: bool = False
    bonded: bool = False
    pairing: bool = False
    tasks: set = field(default_factory=set)


class BleBridge:
    """The BLE half of one virtual board; a fresh Bumble device for every boot."""

    def __init__(self, board: "VirtualBoard", radio: "VirtualRadio") -> None:
        self.board = board
        self.radio = radio
        self.public_address = hci.Address(":".join(f"{b:02X}" for b in board.unique_id),
                                          hci.Address.PUBLIC_DEVICE_ADDRESS)
        # Bumble's virtual link routes LE packets by random address, so the board is on the air
        # with a static random address derived from its MAC (the top two bits set), for every
        # addr_mode but 2 (resolvable private addresses made from its IRK).
        static = bytes([board.unique_id[0] | 0xC0]) + board.unique_id[1:]
        self.identity_address = hci.Address(":".join(f"{b:02X}" for b in static),
                                            hci.Address.RANDOM_DEVICE_ADDRESS)
        for op in ("active", "config_get", "config_set", "gap_advertise", "gap_disconnect", "gap_pair",
                   "gap_passkey", "gatts_register_services", "gatts_read", "gatts_write", "gatts_notify",
                   "gatts_indicate", "gatts_set_buffer"):
            board.handlers["ble_" + op] = getattr(self, op)
        self.device: Device | None = None
        self.controller: Controller | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.settings: dict[str, Any] = {
            "addr_mode": 0, "bond": False, "mitm": False, "le_secure": False, "io": 3, "mtu": 23,
            "gap_name": b"MPY NIMBLE", "rxbuf": 64,
        }
        self.attrs: dict[int, Attr] = {}
        self.links: dict[int, LinkState] = {}
        self.passkey_waiters: dict[int, tuple[int, asyncio.Future]] = {}
        self.irk: bytes | None = None

    @property
    def on_air_address(self) -> hci.Address:
        """The address the board advertises now: its identity address, or with addr_mode=2
        the current resolvable private address."""
        if self.device is None:
            raise RuntimeError("BLE is not active")
        return self.device.random_address

    async def power_off(self) -> None:
        """The board lost power or rebooted: the radio goes silent, links drop."""
        device, controller = self.device, self.controller
        self.device = self.controller = None
        self._reset_state()
        if device is not None and device.le_rpa_periodic_update_task is not None:
            device.le_rpa_periodic_update_task.cancel()
        if controller is not None:
            self.radio.detach(controller)

    # -- to the device --------------------------------------------------------------------

    def irq(self, event: int, data: list) -> None:
        self.board._send({"irq": event, "data": data})

    async def irq_request(self, event: int, data: list) -> Any:
        channel = self.board._channel()
        if channel is None:
            raise ChannelClosed("the device is not running")
        return await channel.request({"irq": event, "data": data})

    # -- bluetooth.BLE calls --------------------------------------------------------------

    async def active(self, flag: bool | None) -> bool:
        if flag is None:
            return self.device is not None
        if flag and self.device is None:
            await self._power_on()
        elif not flag and self.device is not None:
            await self.power_off()
        return self.device is not None

    async def _power_on(self) -> None:
        config = DeviceConfiguration(name=self.settings["gap_name"].decode(errors="replace"),
                                     address=self.identity_address)
        config.le_enabled = True
        config.classic_enabled = False
        if self.settings["addr_mode"] == 2:
            config.le_privacy_enabled = True
            config.irk = await self._our_irk()
        self.controller = self.radio.attach(f"board-{self.board.unique_id.hex()}", self.public_address)
        device = Device(config=config, host=Host(self.controller, AsyncPipeSink(self.controller)))
        device.keystore = DeviceSecretStore(self)
        device.pairing_config_factory = self._pairing_config
        device.on(device.EVENT_CONNECTION, self._on_connection)
        device.add_default_services()
        self.device = device
        await device.power_on()

    async def _our_irk(self) -> bytes:
        if self.irk is None:
            value = await self.irq_request(IRQ_GET_SECRET, [SECRET_OUR_IRK, 0, b"irk".hex()])
            if value is not None and len(bytes.fromhex(value)) == 16:
                self.irk = bytes.fromhex(value)
            else:
                self.irk = secrets.token_bytes(16)
                await self.irq_request(IRQ_SET_SECRET, [SECRET_OUR_IRK, b"irk".hex(), self.irk.hex()])
        return self.irk

    def _pairing_config(self, connection: Connection) -> PairingConfig:
        return PairingConfig(
            sc=bool(self.settings["le_secure"]),
            mitm=bool(self.settings["mitm"]),
            bonding=bool(self.settings["bond"]),
            delegate=DevicePairingDelegate(self, connection, int(self.settings["io"])),
            identity_address_type=PairingConfig.AddressType.RANDOM,
        )

    def config_get(self, name: str) -> Any:
        if name == "mac":
            return list(irq_address(self.identity_address))
        if name == "gap_name":
            return self.settings["gap_name"].hex()
        if name not in self.settings:
            raise DeviceError(errno.EINVAL, f"unknown config value {name!r}")
        return self.settings[name]

    async def config_set(self, name: str, value: Any) -> None:
        if name not in self.settings:
            raise DeviceError(errno.EINVAL, f"unknown config value {name!r}")
        if name == "gap_name":
            value = bytes.fromhex(value)
        if name == "addr_mode" and value != self.settings["addr_mode"] and self.device is not None:
            # The own address is the controller's: start the stack again with the new mode
            # (before advertising, which is when firmware sets it).
            settings, attrs = dict(self.settings), self.attrs
            await self.power_off()
            self.settings = settings
            self.settings[name] = value
            await self._power_on()
            if attrs:
                raise DeviceError(errno.EBUSY, "set addr_mode before registering services")
            return
        self.settings[name] = value

    def _require_device(self) -> Device:
        if self.device is None:
            raise DeviceError(errno.EPERM, "BLE is not active")
        return self.device

    async def gap_advertise(self, interval_us: int | None, adv: str | None, resp: str | None,
                            connectable: bool) -> None:
        device = self._require_device()
        if device.is_advertising:
            await device.stop_advertising()
        if interval_us is None:
            return
        kind = (AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE if connectable
                else AdvertisingType.UNDIRECTED_SCANNABLE)
        own = hci.OwnAddressType.RANDOM  # see identity_address
        interval_ms = max(20.0, interval_us / 1000)
        await device.start_advertising(
            advertising_type=kind, own_address_type=own,
            advertising_data=bytes.fromhex(adv) if adv is not None else None,
            scan_response_data=bytes.fromhex(resp) if resp is not None else None,
            advertising_interval_min=interval_ms, advertising_interval_max=interval_ms,
        )

    def _link(self, conn_handle: int) -> LinkState:
        state = self.links.get(conn_handle)
        if state is None:
            raise DeviceError(errno.ENOTCONN, f"no connection {conn_handle}")
        return state

    async def gap_disconnect(self, conn_handle: int) -> bool:
        state = self.links.get(conn_handle)
        if state is None:
            return False
        await state.connection.disconnect()
        return True

    def gap_pair(self, conn_handle: int) -> None:
        state = self._link(conn_handle)
        self._require_device().request_pairing(state.connection)

    def gap_passkey(self, conn_handle: int, action: int, passkey: int) -> None:
        waiter = self.passkey_waiters.get(conn_handle)
        if waiter is None or waiter[0] != action:
            raise DeviceError(errno.EINVAL, "no passkey request of that kind on that connection")
        if not waiter[1].done():
            waiter[1].set_result(int(passkey))

    # -- GATT server ----------------------------------------------------------------------

    def gatts_register_services(self, definition: list) -> list[list[int]]:
        device = self._require_device()
        if self.attrs:  # registering again replaces the services, as on MicroPython
            device.gatt_server = type(device.gatt_server)(device)
            device.add_default_services()
            self.attrs.clear()
        services, order = [], []
        for service_uuid, characteristics in definition:
            chars, service_order = [], []
            for char_uuid, flags, descriptors in characteristics:
                descs = []
                for desc_uuid, desc_flags in descriptors:
                    desc = gatt.Descriptor(UUID(desc_uuid), gatt.Attribute.READABLE | gatt.Attribute.WRITEABLE)
                    desc.value = self._value_for(desc, desc_flags)
                    descs.append((desc, desc_flags))
                properties = gatt.Characteristic.Properties(flags & 0xFF)
                char = gatt.Characteristic(
                    UUID(char_uuid), properties, gatt.Attribute.READABLE | gatt.Attribute.WRITEABLE,
                    descriptors=[d for d, _ in descs],
                )
                char.value = self._value_for(char, flags)
                if flags & (FLAG_NOTIFY | FLAG_INDICATE):
                    char.descriptors.append(self._cccd(device, char))
                chars.append(char)
                service_order.append((char, flags))
                service_order.extend(descs)
            services.append(gatt.Service(UUID(service_uuid), chars))
            order.append(service_order)
        device.add_services(services)
        handles = []
        for service_order in order:
            row = []
            for attribute, flags in service_order:
                self.attrs[attribute.handle] = Attr(attribute.handle, flags, attribute)
                row.append(attribute.handle)
            handles.append(row)
        return handles

    @staticmethod
    def _cccd(device: Device, char: gatt.Characteristic) -> gatt.Descriptor:
        """The CCCD that NimBLE adds to a notify/indicate characteristic: like Bumble's, but a
        write of other than 2 bytes fails with Invalid Attribute Value Length, as in NimBLE."""
        server = device.gatt_server

        def write(bearer: att.Bearer, value: bytes) -> None:
            if len(value) != 2:
                raise att.ATT_Error(att.ErrorCode.INVALID_ATTRIBUTE_LENGTH)
            server.write_cccd(bearer, char, value)

        return gatt.Descriptor(
            gatt.GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR,
            gatt.Attribute.READABLE | gatt.Attribute.WRITEABLE,
            att.AttributeValueV2(lambda bearer: server.read_cccd(bearer, char), write),
        )

    def _value_for(self, attribute: gatt.Attribute, flags: int) -> gatt.CharacteristicValue:
        # NimBLE checks the access flags before the security flags.
        def read(connection: Connection) -> bytes:
            attr = self.attrs[attribute.handle]
            if isinstance(attribute, gatt.Characteristic) and not attr.flags & FLAG_READ:
                raise att.ATT_Error(att.ErrorCode.READ_NOT_PERMITTED, attr.handle)
            self._check(connection, attr, FLAG_READ_ENCRYPTED, FLAG_READ_AUTHENTICATED)
            return attr.value

        async def write(connection: Connection, value: bytes) -> None:
            attr = self.attrs[attribute.handle]
            if isinstance(attribute, gatt.Characteristic) and not attr.flags & (FLAG_WRITE | FLAG_WRITE_NO_RESPONSE):
                raise att.ATT_Error(att.ErrorCode.WRITE_NOT_PERMITTED, attr.handle)
            self._check(connection, attr, FLAG_WRITE_ENCRYPTED, FLAG_WRITE_AUTHENTICATED)
            data = attr.value + value if attr.append else value
            attr.value = bytes(data[: attr.size])
            # As NimBLE on ESP32 runs the IRQ handler before it answers the write, the phone's
            # next write cannot replace the value before the device has read this one.
            try:
                await self.irq_request(IRQ_GATTS_WRITE, [connection.handle, attr.handle])
            except (ChannelClosed, TimeoutError):
                pass

        return gatt.CharacteristicValue(read=read, write=write)

    def _check(self, connection: Connection, attr: Attr, encrypted_flag: int, authenticated_flag: int) -> None:
        state = self.links.get(connection.handle)
        encrypted = state is not None and state.encrypted
        authenticated = state is not None and state.authenticated
        if attr.flags & authenticated_flag and not authenticated:
            raise att.ATT_Error(att.ATT_INSUFFICIENT_AUTHENTICATION_ERROR, attr.handle)
        if attr.flags & encrypted_flag and not encrypted:
            raise att.ATT_Error(att.ATT_INSUFFICIENT_ENCRYPTION_ERROR, attr.handle)

    def _attr(self, handle: int) -> Attr:
        attr = self.attrs.get(handle)
        if attr is None:
            raise DeviceError(errno.EINVAL, f"no attribute with handle {handle}")
        return attr

    def gatts_read(self, handle: int) -> str:
        attr = self._attr(handle)
        value = attr.value
        if attr.append:  # an append buffer is emptied by reading it
            attr.value = b""
        return value.hex()

    async def gatts_write(self, handle: int, data: str, send_update: bool) -> None:
        attr = self._attr(handle)
        attr.value = bytes.fromhex(data)
        if send_update and self.device is not None:
            if attr.flags & FLAG_NOTIFY:
                await self.device.notify_subscribers(attr.attribute, attr.value)
            elif attr.flags & FLAG_INDICATE:
                await self.device.indicate_subscribers(attr.attribute, attr.value)

    async def gatts_notify(self, conn_handle: int, handle: int, data: str | None) -> None:
        state = self._link(conn_handle)
        attr = self._attr(handle)
        value = attr.value if data is None else bytes.fromhex(data)
        # MicroPython sends whether or not the peer subscribed: force=True.
        await self._require_device().notify_subscriber(state.connection, attr.attribute, value, force=True)

    def gatts_indicate(self, conn_handle: int, handle: int, data: str | None) -> None:
        state = self._link(conn_handle)
        attr = self._attr(handle)
        value = attr.value if data is None else bytes.fromhex(data)
        device = self._require_device()

        async def indicate() -> None:
            status = 0
            try:
                await device.indicate_subscriber(state.connection, attr.attribute, value, force=True)
            except Exception:  # timeout or disconnection: NimBLE reports a non-zero status
                status = errno.ETIMEDOUT
            self.irq(IRQ_GATTS_INDICATE_DONE, [conn_handle, handle, status])

        task = asyncio.ensure_future(indicate())
        state.tasks.add(task)
        task.add_done_callback(state.tasks.discard)

    def gatts_set_buffer(self, handle: int, length: int, append: bool) -> None:
        attr = self._attr(handle)
        attr.size = int(length)
        attr.append = bool(append)

    # -- Bumble events --------------------------------------------------------------------

    def _on_connection(self, connection: Connection) -> None:
        if connection.role != hci.Role.PERIPHERAL:
            return
        state = LinkState(connection)
        self.links[connection.handle] = state
        kind, address = irq_address(connection.peer_address)
        self.irq(IRQ_CENTRAL_CONNECT, [connection.handle, kind, address])

        @connection.on(connection.EVENT_DISCONNECTION)
        def _(reason: int) -> None:
            self.links.pop(connection.handle, None)
            for task in state.tasks:
                task.cancel()
            self.irq(IRQ_CENTRAL_DISCONNECT, [connection.handle, kind, address])

        @connection.on(connection.EVENT_CONNECTION_ATT_MTU_UPDATE)
        def _() -> None:
            self.irq(IRQ_MTU_EXCHANGED, [connection.handle, connection.att_mtu])

        @connection.on(connection.EVENT_PAIRING_START)
        def _() -> None:
            state.pairing = True

        @connection.on(connection.EVENT_PAIRING)
        def _(keys: PairingKeys) -> None:
            if state.pairing:  # not bonding: no keys were stored, so not reported yet
                self._paired(state, keys)

        @connection.on(connection.EVENT_PAIRING_FAILURE)
        def _(reason: int) -> None:
            state.pairing = False
            self._encryption_update(state)

        @connection.on(connection.EVENT_CONNECTION_ENCRYPTION_CHANGE)
        def _() -> None:
            state.encrypted = bool(connection.encryption)
            if state.pairing:
                return  # reported once pairing has finished, as NimBLE does
            task = asyncio.ensure_future(self._encrypted_with_stored_key(state))
            state.tasks.add(task)
            task.add_done_callback(state.tasks.discard)

    def _paired(self, state: LinkState, keys: PairingKeys) -> None:
        state.pairing = False
        state.authenticated = bool(keys.ltk and keys.ltk.authenticated)
        state.bonded = bool(self.settings["bond"])
        self._encryption_update(state)

    def pairing_complete(self, name: str, keys: PairingKeys) -> None:
        """Bumble is about to store a pairing's keys: report the link's encryption first."""
        for state in self.links.values():
            if state.pairing and str(state.connection.peer_address) == name:
                self._paired(state, keys)
                return

    async def _encrypted_with_stored_key(self, state: LinkState) -> None:
        keys = None
        if self.device is not None and self.device.keystore is not None:
            try:
                keys = await self.device.keystore.get(str(state.connection.peer_address))
            except (ChannelClosed, TimeoutError):
                return
        state.bonded = keys is not None
        state.authenticated = bool(state.encrypted and keys and keys.ltk and keys.ltk.authenticated)
        self._encryption_update(state)

    def _encryption_update(self, state: LinkState) -> None:
        connection = state.connection
        self.irq(IRQ_ENCRYPTION_UPDATE, [
            connection.handle, state.encrypted, state.authenticated, state.bonded,
            (connection.encryption_key_size or 16) if state.encrypted else 0,
        ])
