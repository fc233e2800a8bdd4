"""The adapter, hci0 (Adapter1): its properties, discovery sessions and filters, scanning, and
the Device1 objects that advertisements create and update."""

from __future__ import annotations

import asyncio
from typing import Any

from bumble import hci
from bumble.core import UUID
from bumble.device import Advertisement, Device
from dbus_fast import Message, Variant

from jikimi_host.sim.bluez.dbus_api import (ADAPTER, ADAPTER_PATH, DEVICE, Reply, error, invalid_arguments,
                                            uuid_text)
from jikimi_host.sim.bluez.device import Devices, RemoteDevice
from jikimi_host.sim.bluez.objects import ObjectTree
from jikimi_host.sim.bluez.tasks import Tasks

ADAPTER_ADDRESS = "C3:42:4C:55:45:5A"  # a static random address: the virtual link routes LE by it
RSSI_THRESHOLD = 8
DISCOVERY_FILTERS = {"UUIDs": "as", "RSSI": "n", "Pathloss": "q", "Transport": "s", "DuplicateData": "b",
                     "Discoverable": "b", "Pattern": "s"}


def advertised(advertisement: Advertisement) -> dict[str, Variant]:
    """Device1 properties from advertising data, as BlueZ parses EIR/AD."""
    props: dict[str, Variant] = {}
    uuids: list[str] = []
    manufacturer: dict[int, Variant] = {}
    service_data: dict[str, Variant] = {}
    for ad_type, data in advertisement.data.ad_structures:
        ad_type = int(ad_type)
        size = {0x02: 2, 0x03: 2, 0x04: 4, 0x05: 4, 0x06: 16, 0x07: 16}.get(ad_type)
        if size:
            uuids += [uuid_text(UUID.from_bytes(data[i:i + size])) for i in range(0, len(data) - size + 1, size)]
        elif ad_type == 0x01:
            props["AdvertisingFlags"] = Variant("ay", bytes(data))
        elif ad_type in (0x08, 0x09) and (ad_type == 0x09 or "Name" not in props):
            props["Name"] = Variant("s", bytes(data).decode(errors="replace"))
        elif ad_type == 0x0A and data:
            props["TxPower"] = Variant("n", int.from_bytes(data[:1], "little", signed=True))
        elif ad_type == 0xFF and len(data) >= 2:
            manufacturer[int.from_bytes(data[:2], "little")] = Variant("ay", bytes(data[2:]))
        elif ad_type in (0x16, 0x20, 0x21):
            size = {0x16: 2, 0x20: 4, 0x21: 16}[ad_type]
            if len(data) >= size:
                service_data[uuid_text(UUID.from_bytes(data[:size]))] = Variant("ay", bytes(data[size:]))
    if uuids:
        props["UUIDs"] = Variant("as", uuids)
    if manufacturer:
        props["ManufacturerData"] = Variant("a{qv}", manufacturer)
    if service_data:
        props["ServiceData"] = Variant("a{sv}", service_data)
    if advertisement.rssi != Advertisement.RSSI_NOT_AVAILABLE:
        props["RSSI"] = Variant("n", advertisement.rssi)
    return props


class Adapter:
    """hci0 on the Bumble `controller`: discovery as per-client sessions (a client that leaves
    the bus loses its session), and the scanning that discovery and connections need."""

    def __init__(self, tree: ObjectTree, tasks: Tasks, controller: Device, devices: Devices) -> None:
        self.tree = tree
        self.tasks = tasks
        self.controller = controller
        self.devices = devices
        self.filters: dict[str, dict[str, Any]] = {}  # bus name -> discovery filter
        self.sessions: set[str] = set()  # bus names discovering
        self._waiters: dict[RemoteDevice, list[asyncio.Future[hci.Address]]] = {}  # for a device's next advertisement
        self._scan_lock = asyncio.Lock()
        tree.method(ADAPTER, "SetDiscoveryFilter", "a{sv}", self._set_discovery_filter)
        tree.method(ADAPTER, "GetDiscoveryFilters", "", self._get_discovery_filters)
        tree.method(ADAPTER, "StartDiscovery", "", self._start_discovery)
        tree.method(ADAPTER, "StopDiscovery", "", self._stop_discovery)
        tree.writable(ADAPTER, "Alias", lambda path, value: tree.set(path, ADAPTER, Alias=Variant("s", value.value)))
        tree.writable(ADAPTER, "Pairable",
                      lambda path, value: tree.set(path, ADAPTER, Pairable=Variant("b", value.value)))
        tree.writable(ADAPTER, "Discoverable",
                      lambda path, value: tree.set(path, ADAPTER, Discoverable=Variant("b", value.value)))
        tree.on_client_gone(self._client_gone)
        controller.on(controller.EVENT_ADVERTISEMENT, self._on_advertisement)

    def export(self) -> None:
        """hci0, powered, with BlueZ's usual properties (its own UUIDs: GAP and GATT)."""
        self.tree.export(ADAPTER_PATH, {ADAPTER: {
            "Address": Variant("s", ADAPTER_ADDRESS), "AddressType": Variant("s", "random"),
            "Name": Variant("s", "jikimi-ci"), "Alias": Variant("s", "jikimi-ci"), "Class": Variant("u", 0),
            "Powered": Variant("b", True), "PowerState": Variant("s", "on"),
            "Discoverable": Variant("b", False), "DiscoverableTimeout": Variant("u", 180),
            "Pairable": Variant("b", True), "PairableTimeout": Variant("u", 0),
            "Discovering": Variant("b", False),
            "UUIDs": Variant("as", [uuid_text(UUID.from_16_bits(0x1800)), uuid_text(UUID.from_16_bits(0x1801))]),
            "Modalias": Variant("s", "usb:v1D6Bp0246d054F"), "Roles": Variant("as", ["central", "peripheral"]),
        }})

    def discovering(self) -> bool:
        return bool(self.sessions)

    def _client_gone(self, name: str) -> None:
        self.filters.pop(name, None)
        if name in self.sessions:
            self.sessions.discard(name)
            self.tasks.spawn(self._discovery_changed())

    # -- discovery --------------------------------------------------------------------------

    async def _set_discovery_filter(self, path: str, msg: Message) -> Reply:
        given: dict[str, Variant] = msg.body[0]
        parsed: dict[str, Any] = {}
        for key, value in given.items():
            if DISCOVERY_FILTERS.get(key) != value.signature:
                raise invalid_arguments()
            parsed[key] = value.value
        if "UUIDs" in parsed:
            try:
                parsed["UUIDs"] = {uuid_text(UUID(u)) for u in parsed["UUIDs"]}
            except ValueError:
                raise invalid_arguments() from None
        if parsed.get("Transport", "le") not in ("auto", "bredr", "le"):
            raise invalid_arguments()
        if parsed:
            self.filters[msg.sender or ""] = parsed
        else:
            self.filters.pop(msg.sender or "", None)
        return "", []

    async def _get_discovery_filters(self, path: str, msg: Message) -> Reply:
        return "as", [list(DISCOVERY_FILTERS)]

    async def _start_discovery(self, path: str, msg: Message) -> Reply:
        if msg.sender in self.sessions:
            raise error("InProgress", "Operation already in progress")
        self.sessions.add(msg.sender or "")
        await self._discovery_changed()
        return "", []

    async def _stop_discovery(self, path: str, msg: Message) -> Reply:
        if msg.sender not in self.sessions:
            raise error("Failed", "No discovery started")
        self.sessions.discard(msg.sender or "")
        await self._discovery_changed()
        return "", []

    async def _discovery_changed(self) -> None:
        discovering = bool(self.sessions)
        await self.update_scanning()
        was = self.tree.objects[ADAPTER_PATH][ADAPTER]["Discovering"].value
        if discovering == was:
            return
        self.tree.set(ADAPTER_PATH, ADAPTER, Discovering=Variant("b", discovering))
        if not discovering:  # BlueZ forgets the signal strength, and later the devices it only saw
            for device in list(self.devices.by_path.values()):
                self.tree.invalidate(device.path, DEVICE, "RSSI", "TxPower")
                self.devices.expire_later(device)
        else:
            for device in self.devices.by_path.values():
                self.devices.keep(device)

    async def update_scanning(self) -> None:
        """Scan while discovering or while a Connect/Pair waits for the device's advertisement."""
        async with self._scan_lock:
            wanted = bool(self.sessions) or any(self._waiters.values())
            if wanted and not self.controller.is_scanning:
                await self.controller.start_scanning(active=True, filter_duplicates=False)
            elif not wanted and self.controller.is_scanning:
                await self.controller.stop_scanning()

    def _wanted(self, props: dict[str, Variant]) -> bool:
        """Does a discovery session's filter let this advertisement through?"""
        uuids = set(props["UUIDs"].value) if "UUIDs" in props else set()
        rssi = props["RSSI"].value if "RSSI" in props else -127
        for session in self.sessions:
            wanted = self.filters.get(session, {})
            if "RSSI" in wanted and rssi < wanted["RSSI"]:
                continue
            if wanted.get("UUIDs") and not wanted["UUIDs"] & uuids:
                continue
            return True
        return False

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        address = advertisement.address
        resolver = self.controller.address_resolver
        identity = resolver.resolve(address) if resolver is not None and address.is_resolvable else None
        device = self.devices.find(identity or address)
        if device is not None and advertisement.is_connectable:
            for waiter in self._waiters.pop(device, []):
                if not waiter.done():
                    waiter.set_result(address)
        if not self.sessions:
            return  # a connection's scan (the kernel's background scan) reports nothing
        props = advertised(advertisement)
        if not self._wanted(props):
            return
        if device is None:
            device = self.devices.add(identity or address, bonded=False)
        self.devices.keep(device)
        current = self.devices.props(device)
        if "UUIDs" in props:  # BlueZ accumulates what a device ever advertised
            props["UUIDs"] = Variant("as", current["UUIDs"].value + [
                u for u in props["UUIDs"].value if u not in current["UUIDs"].value])
        for key in ("ManufacturerData", "ServiceData"):
            if key in props and key in current:
                props[key] = Variant(props[key].signature, {**current[key].value, **props[key].value})
        if "Name" in props and not device.alias:
            props["Alias"] = props["Name"]
        rssi = props.pop("RSSI", None)
        self.tree.set(device.path, DEVICE, **props)
        if rssi is not None:
            # With a discovery filter set (bleak always sets one) BlueZ reports the RSSI of every
            # advertisement, so that a scanner sees a device it already knows; otherwise only
            # changes of RSSI_THRESHOLD dBm.
            old = current.get("RSSI")
            filtered = any(self.filters.get(session) for session in self.sessions)
            if filtered or old is None or abs(old.value - rssi.value) >= RSSI_THRESHOLD:
                self.tree.set(device.path, DEVICE, always=True, RSSI=rssi)

    async def heard(self, device: RemoteDevice) -> hci.Address:
        """The address a bonded device advertises at now (connectable): its next advertisement."""
        waiter: asyncio.Future[hci.Address] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(device, []).append(waiter)
        try:
            await self.update_scanning()
            return await waiter
        finally:
            waiters = self._waiters.get(device, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(device, None)
            self.tasks.spawn(self.update_scanning())
