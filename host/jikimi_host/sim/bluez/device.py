"""The remote devices BlueZ knows (Device1 objects): found by address, added, kept while in use,
forgotten a while after discovery stops; their Trusted and Alias properties."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from bumble import hci
from bumble.device import Connection
from dbus_fast import Variant

from jikimi_host.sim.bluez.dbus_api import ADAPTER_PATH, DEVICE, address_text, error
from jikimi_host.sim.bluez.objects import ObjectTree

TEMPORARY_TIMEOUT_S = 30.0  # main.conf TemporaryTimeout


@dataclass(eq=False)
class RemoteDevice:
    path: str
    address: hci.Address  # the Address property: the identity address once bonded
    connection: Connection | None = None
    task: asyncio.Task | None = None  # a Connect or Pair in progress
    kind: str = ""  # "connect" or "pair"
    abort: str = ""  # why Disconnect/CancelPairing cancelled the task
    resolving: asyncio.Task | None = None
    expiry: asyncio.TimerHandle | None = None
    alias: str = ""  # set through the Alias property
    gatt: list[str] = field(default_factory=list)  # exported GATT object paths, in order


class Devices:
    """The Device1 objects by path. `discovering()` says whether a discovery session is on:
    while one is, no device expires."""

    def __init__(self, tree: ObjectTree, discovering: Callable[[], bool]) -> None:
        self.tree = tree
        self.discovering = discovering
        self.by_path: dict[str, RemoteDevice] = {}
        tree.writable(DEVICE, "Trusted", self._set_trusted)
        tree.writable(DEVICE, "Alias", self._set_alias)

    def find(self, address: hci.Address) -> RemoteDevice | None:
        for device in self.by_path.values():
            if device.address == address:
                return device
        return None

    def get(self, path: str) -> RemoteDevice:
        device = self.by_path.get(path)
        if device is None:
            raise error("DoesNotExist", "Does Not Exist")
        return device

    def add(self, address: hci.Address, bonded: bool) -> RemoteDevice:
        text = address_text(address)
        path = f"{ADAPTER_PATH}/dev_{text.replace(':', '_')}"
        device = RemoteDevice(path, address)
        self.by_path[path] = device
        self.tree.export(path, {DEVICE: {
            "Address": Variant("s", text), "AddressType": Variant("s", "public" if address.is_public else "random"),
            "Alias": Variant("s", text.replace(":", "-")), "Paired": Variant("b", bonded),
            "Bonded": Variant("b", bonded), "Trusted": Variant("b", False), "Blocked": Variant("b", False),
            "LegacyPairing": Variant("b", False), "Connected": Variant("b", False), "UUIDs": Variant("as", []),
            "Adapter": Variant("o", ADAPTER_PATH), "ServicesResolved": Variant("b", False),
        }})
        return device

    def props(self, device: RemoteDevice) -> dict[str, Variant]:
        """Its Device1 properties (it is exported)."""
        return self.tree.objects[device.path][DEVICE]

    def bonded(self, device: RemoteDevice) -> bool:
        props = self.tree.props(device.path, DEVICE)
        return props is not None and bool(props["Paired"].value)

    def keep(self, device: RemoteDevice) -> None:
        if device.expiry is not None:
            device.expiry.cancel()
            device.expiry = None

    def expire_later(self, device: RemoteDevice) -> None:
        """A device only seen in a discovery (not bonded, not connected) is removed a while after."""
        if self.discovering() or device.connection is not None or device.task is not None or self.bonded(device):
            return
        self.keep(device)
        device.expiry = asyncio.get_running_loop().call_later(TEMPORARY_TIMEOUT_S, self._expire, device)

    def _expire(self, device: RemoteDevice) -> None:
        device.expiry = None
        if not self.discovering() and device.connection is None and device.task is None and not self.bonded(device):
            self.forget(device)

    def forget(self, device: RemoteDevice) -> None:
        self.keep(device)
        self.by_path.pop(device.path, None)
        self.tree.unexport(device.path)

    def _set_trusted(self, path: str, value: Variant) -> None:
        self.tree.set(path, DEVICE, Trusted=Variant("b", bool(value.value)))

    def _set_alias(self, path: str, value: Variant) -> None:
        device = self.by_path[path]
        device.alias = value.value
        props = self.props(device)
        alias = value.value or (props["Name"].value if "Name" in props else props["Address"].value.replace(":", "-"))
        self.tree.set(path, DEVICE, Alias=Variant("s", alias))
