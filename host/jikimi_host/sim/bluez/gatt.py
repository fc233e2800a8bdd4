"""A connected device's GATT database as BlueZ exports it (GattService1, GattCharacteristic1,
GattDescriptor1): exported once browsed, removed on disconnection; ReadValue, WriteValue,
StartNotify/StopNotify as per-client sessions, and ATT errors as BlueZ reports them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bumble import att
from bumble.core import UUID, BaseBumbleError
from bumble.device import Connection
from bumble.gatt_client import CharacteristicProxy, DescriptorProxy, ServiceProxy
from dbus_fast import Message, Variant

from jikimi_host.sim.bluez.dbus_api import (CHARACTERISTIC, DESCRIPTOR, SERVICE, BlueZError, Reply, error,
                                            uuid_text)
from jikimi_host.sim.bluez.device import RemoteDevice
from jikimi_host.sim.bluez.objects import ObjectTree
from jikimi_host.sim.bluez.tasks import LinkLost, Tasks, on_link

logger = logging.getLogger(__name__)

GAP_SERVICE = UUID.from_16_bits(0x1800)
CCCD = UUID.from_16_bits(0x2902)
CHARACTERISTIC_FLAGS = ((0x01, "broadcast"), (0x02, "read"), (0x04, "write-without-response"), (0x08, "write"),
                        (0x10, "notify"), (0x20, "indicate"), (0x40, "authenticated-signed-writes"),
                        (0x80, "extended-properties"))


def att_error(code: int) -> BlueZError:
    """An ATT error as BlueZ reports it (gatt-client.c, create_gatt_dbus_error)."""
    if code == att.ErrorCode.READ_NOT_PERMITTED:
        return error("NotPermitted", "Read not permitted")
    if code == att.ErrorCode.WRITE_NOT_PERMITTED:
        return error("NotPermitted", "Write not permitted")
    if code in (att.ErrorCode.INSUFFICIENT_AUTHENTICATION, att.ErrorCode.INSUFFICIENT_ENCRYPTION,
                att.ErrorCode.INSUFFICIENT_ENCRYPTION_KEY_SIZE):
        return error("NotPermitted", "Not paired")
    if code == att.ErrorCode.INVALID_OFFSET:
        return error("InvalidArguments", "Invalid offset")
    if code == att.ErrorCode.INVALID_ATTRIBUTE_LENGTH:
        return error("InvalidArguments", "Invalid Length")
    if code == att.ErrorCode.INSUFFICIENT_AUTHORIZATION:
        return error("NotAuthorized", "Operation Not Authorized")
    if code == att.ErrorCode.REQUEST_NOT_SUPPORTED:
        return error("NotSupported", "Operation is not supported")
    return error("Failed", f"Operation failed with ATT error: 0x{code:02x}")


@dataclass(eq=False)
class Characteristic:
    device: RemoteDevice
    path: str
    proxy: CharacteristicProxy
    sessions: set[str] = field(default_factory=set)  # bus names with a notify session
    starting: set[str] = field(default_factory=set)
    reading: bool = False
    writing: bool = False
    subscriber: Callable[[bytes], None] | None = None


@dataclass(eq=False)
class Descriptor:
    device: RemoteDevice
    path: str
    proxy: DescriptorProxy
    reading: bool = False
    writing: bool = False


class Gatt:
    """The exported GATT objects of every connected device, by path."""

    def __init__(self, tree: ObjectTree, tasks: Tasks) -> None:
        self.tree = tree
        self.tasks = tasks
        self.characteristics: dict[str, Characteristic] = {}
        self.descriptors: dict[str, Descriptor] = {}
        tree.method(CHARACTERISTIC, "ReadValue", "a{sv}", self._read_characteristic)
        tree.method(CHARACTERISTIC, "WriteValue", "aya{sv}", self._write_characteristic)
        tree.method(CHARACTERISTIC, "StartNotify", "", self._start_notify)
        tree.method(CHARACTERISTIC, "StopNotify", "", self._stop_notify)
        tree.method(DESCRIPTOR, "ReadValue", "a{sv}", self._read_descriptor)
        tree.method(DESCRIPTOR, "WriteValue", "aya{sv}", self._write_descriptor)
        tree.on_client_gone(self._client_gone)

    def _client_gone(self, name: str) -> None:
        """Its notify sessions end."""
        for characteristic in list(self.characteristics.values()):
            if name in characteristic.sessions:
                characteristic.sessions.discard(name)
                self.tasks.spawn(self._notify_sessions_changed(characteristic))

    # -- export -----------------------------------------------------------------------------

    def export(self, device: RemoteDevice, connection: Connection, services: list[ServiceProxy]) -> None:
        """Export the browsed services (but GAP's, which BlueZ's GAP plugin claims), their
        characteristics and descriptors, named by attribute handle as BlueZ names them."""
        for service in services:
            if service.uuid == GAP_SERVICE:
                continue  # claimed by BlueZ's GAP plugin: not exported
            service_path = f"{device.path}/service{service.handle:04x}"
            self.tree.export(service_path, {SERVICE: {
                "UUID": Variant("s", uuid_text(service.uuid)), "Primary": Variant("b", True),
                "Device": Variant("o", device.path), "Includes": Variant("ao", []),
            }})
            device.gatt.append(service_path)
            for proxy in service.characteristics:
                self._export_characteristic(device, connection, service_path, proxy)

    def _export_characteristic(self, device: RemoteDevice, connection: Connection, service_path: str,
                               proxy: CharacteristicProxy) -> None:
        path = f"{service_path}/char{proxy.handle - 1:04x}"  # BlueZ names it by its declaration handle
        props: dict[str, Variant] = {
            "UUID": Variant("s", uuid_text(proxy.uuid)), "Service": Variant("o", service_path),
            "Flags": Variant("as", [name for bit, name in CHARACTERISTIC_FLAGS if proxy.properties & bit]),
            "MTU": Variant("q", connection.att_mtu),
        }
        if proxy.properties & 0x30:
            props["Notifying"] = Variant("b", False)
        characteristic = Characteristic(device, path, proxy)
        characteristic.subscriber = lambda value: self._notified(characteristic, value)
        self.characteristics[path] = characteristic
        self.tree.export(path, {CHARACTERISTIC: props})
        device.gatt.append(path)
        for descriptor in proxy.descriptors:
            desc_path = f"{path}/desc{descriptor.handle:04x}"
            self.descriptors[desc_path] = Descriptor(device, desc_path, descriptor)
            self.tree.export(desc_path, {DESCRIPTOR: {
                "UUID": Variant("s", uuid_text(descriptor.type)), "Characteristic": Variant("o", path),
            }})
            device.gatt.append(desc_path)

    def remove(self, device: RemoteDevice) -> None:
        """The link is gone: its GATT objects go (InterfacesRemoved), last exported first."""
        for path in reversed(device.gatt):
            self.characteristics.pop(path, None)
            self.descriptors.pop(path, None)
            self.tree.unexport(path)
        device.gatt.clear()

    def _notified(self, characteristic: Characteristic, value: bytes) -> None:
        logger.debug("notification on %s: %s", characteristic.path, bytes(value).hex())
        if characteristic.sessions or characteristic.starting:  # else nobody asked for it: dropped
            self.tree.set(characteristic.path, CHARACTERISTIC, always=True, Value=Variant("ay", bytes(value)))

    # -- methods ----------------------------------------------------------------------------

    @staticmethod
    def _connection(device: RemoteDevice) -> Connection:
        if device.connection is None:
            raise error("Failed", "Not connected")
        return device.connection

    async def _gatt(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await on_link(awaitable)
        except att.ATT_Error as err:
            logger.info("ATT error %s", err)
            raise att_error(err.error_code) from None
        except (LinkLost, asyncio.TimeoutError, BaseBumbleError):
            raise error("Failed", "Operation failed") from None

    @staticmethod
    def _offset(options: dict[str, Variant]) -> None:
        if "offset" in options and options["offset"].value:
            raise error("NotSupported", "Operation is not supported")  # not needed by bleak

    async def _read_characteristic(self, path: str, msg: Message) -> Reply:
        return await self._read(self.characteristics[path], CHARACTERISTIC, msg)

    async def _read(self, attribute: Characteristic | Descriptor, interface: str, msg: Message) -> Reply:
        """ReadValue: one read at a time per attribute; the value is also announced as Value."""
        self._connection(attribute.device)
        self._offset(msg.body[0])
        if attribute.reading:
            raise error("InProgress", "In Progress")
        attribute.reading = True
        try:
            value = bytes(await self._gatt(attribute.proxy.read_value()))
        finally:
            attribute.reading = False
        self.tree.set(attribute.path, interface, always=True, Value=Variant("ay", value))
        return "ay", [value]

    async def _write_characteristic(self, path: str, msg: Message) -> Reply:
        characteristic = self.characteristics[path]
        connection = self._connection(characteristic.device)
        value, options = msg.body
        self._offset(options)
        kind = options["type"].value if "type" in options else ""
        properties = characteristic.proxy.properties
        if kind == "request" or (not kind and properties & 0x08):
            with_response = True
        elif kind in ("", "command") and properties & 0x04:
            with_response = False
        else:
            raise error("NotSupported", "Operation is not supported")
        await self._write(characteristic, connection, bytes(value), with_response)
        return "", []

    async def _write(self, attribute: Characteristic | Descriptor, connection: Connection, value: bytes,
                     with_response: bool) -> None:
        """WriteValue: one write at a time per attribute."""
        if attribute.writing:
            raise error("InProgress", "In Progress")
        attribute.writing = True
        try:
            await self._gatt(connection.gatt_client.write_value(attribute.proxy, value, with_response))
        finally:
            attribute.writing = False

    async def _start_notify(self, path: str, msg: Message) -> Reply:
        characteristic = self.characteristics[path]
        sender = msg.sender or ""
        if not characteristic.proxy.properties & 0x30:
            raise error("NotSupported", "Operation is not supported")
        if sender in characteristic.sessions:
            raise error("Failed", "Already notifying")
        if sender in characteristic.starting:
            raise error("InProgress", "In Progress")
        connection = self._connection(characteristic.device)
        if not characteristic.sessions:
            characteristic.starting.add(sender)
            try:
                await self._gatt(connection.gatt_client.subscribe(characteristic.proxy, characteristic.subscriber))
            finally:
                characteristic.starting.discard(sender)
        characteristic.sessions.add(sender)
        self.tree.set(path, CHARACTERISTIC, Notifying=Variant("b", True))
        return "", []

    async def _stop_notify(self, path: str, msg: Message) -> Reply:
        characteristic = self.characteristics[path]
        if msg.sender not in characteristic.sessions:
            raise error("Failed", "No notify session started")
        characteristic.sessions.discard(msg.sender or "")
        await self._notify_sessions_changed(characteristic)
        return "", []

    async def _notify_sessions_changed(self, characteristic: Characteristic) -> None:
        """The last notify session ended: clear the CCCD and Notifying."""
        if characteristic.sessions or self.characteristics.get(characteristic.path) is not characteristic:
            return
        self.tree.set(characteristic.path, CHARACTERISTIC, Notifying=Variant("b", False))
        connection = characteristic.device.connection
        if connection is not None:
            with contextlib.suppress(BlueZError):
                await self._gatt(connection.gatt_client.unsubscribe(characteristic.proxy, characteristic.subscriber))

    async def _read_descriptor(self, path: str, msg: Message) -> Reply:
        return await self._read(self.descriptors[path], DESCRIPTOR, msg)

    async def _write_descriptor(self, path: str, msg: Message) -> Reply:
        descriptor = self.descriptors[path]
        connection = self._connection(descriptor.device)
        value, options = msg.body
        self._offset(options)
        if descriptor.proxy.type == CCCD:  # through StartNotify/StopNotify only
            raise error("NotPermitted", "Write not permitted")
        await self._write(descriptor, connection, bytes(value), True)
        self.tree.set(path, DESCRIPTOR, always=True, Value=Variant("ay", bytes(value)))
        return "", []
