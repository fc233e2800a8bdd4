"""Links to remote devices, the kernel's and bluetoothd's part: Device1's Connect, Disconnect,
Pair and CancelPairing, Adapter1's RemoveDevice; connecting (a bonded device at the private
address it advertises now), encrypting with the bond, browsing the GATT database."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from bumble import att, hci
from bumble.core import BaseBumbleError, PhysicalTransport
from bumble.device import Connection, Device, Peer
from bumble.keys import JsonKeyStore
from dbus_fast import Message, Variant

from jikimi_host.sim.bluez.adapter import Adapter
from jikimi_host.sim.bluez.agent import Agents
from jikimi_host.sim.bluez.dbus_api import ADAPTER, DEVICE, BlueZError, Reply, address_text, error, uuid_text
from jikimi_host.sim.bluez.device import Devices, RemoteDevice
from jikimi_host.sim.bluez.gatt import Gatt
from jikimi_host.sim.bluez.objects import ObjectTree
from jikimi_host.sim.bluez.tasks import LinkLost, Tasks, on_link

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 20.0
PAIRING_TIMEOUT_S = 60.0
DISCONNECT_TIMEOUT_S = 5.0
ATT_MTU = 517  # what BlueZ asks for
LINK_FAILED = "le-connection-abort-by-local"  # what bleak retries


class Links:
    """Connect and Pair, one at a time per device (a second is InProgress); Disconnect,
    CancelPairing and RemoveDevice abort the one in progress."""

    def __init__(self, tree: ObjectTree, tasks: Tasks, controller: Device, keystore: JsonKeyStore,
                 devices: Devices, adapter: Adapter, agents: Agents, gatt: Gatt) -> None:
        self.tree = tree
        self.tasks = tasks
        self.controller = controller
        self.keystore = keystore
        self.devices = devices
        self.adapter = adapter
        self.agents = agents
        self.gatt = gatt
        tree.method(DEVICE, "Connect", "", self._connect)
        tree.method(DEVICE, "Disconnect", "", self._disconnect)
        tree.method(DEVICE, "Pair", "", self._pair)
        tree.method(DEVICE, "CancelPairing", "", self._cancel_pairing)
        tree.method(ADAPTER, "RemoveDevice", "o", self._remove_device)

    # -- the link ---------------------------------------------------------------------------

    async def _link(self, device: RemoteDevice) -> Connection:
        """Connect (the kernel's part of Connect/Pair): Connected is true once the link is up."""
        self.devices.keep(device)
        address = device.address
        resolver = self.controller.address_resolver
        if resolver is not None and resolver.can_resolve_to(address):
            # a bonded device with private addresses: the kernel scans for an RPA that resolves to it
            address = await asyncio.wait_for(self.adapter.heard(device), CONNECT_TIMEOUT_S)
        connection = await self.controller.connect(address, transport=PhysicalTransport.LE,
                                                   timeout=CONNECT_TIMEOUT_S)
        device.connection = connection
        connection.on(connection.EVENT_DISCONNECTION, lambda reason: self._detached(device, connection))
        self.tree.set(device.path, DEVICE, Connected=Variant("b", True))
        if connection.handle not in self.controller.connections:  # dropped while we were told it is up
            self._detached(device, connection)
            raise LinkLost()
        return connection

    async def _drop_link(self, device: RemoteDevice) -> None:
        connection = device.connection
        if connection is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.disconnect(), DISCONNECT_TIMEOUT_S)
        self._detached(device, connection)

    def _detached(self, device: RemoteDevice, connection: Connection) -> None:
        """On disconnection (either side, or the peer vanishing): ServicesResolved false, the
        GATT objects removed, Connected false."""
        if device.connection is not connection:
            return
        device.connection = None
        self.tree.set(device.path, DEVICE, ServicesResolved=Variant("b", False))
        self.gatt.remove(device)
        self.tree.set(device.path, DEVICE, Connected=Variant("b", False))
        self.devices.expire_later(device)

    async def _secure(self, device: RemoteDevice, connection: Connection) -> None:
        """Encrypt with the bond, as the kernel does before ATT on a paired device."""
        if connection.is_encrypted:
            return
        if await self.keystore.get(str(connection.peer_address)) is None:
            logger.info("link to %s: no keys for it, not encrypted (the device's address: %s)",
                        connection.peer_address, device.address)
            return
        try:
            await on_link(asyncio.wait_for(connection.encrypt(), CONNECT_TIMEOUT_S))
        except hci.HCI_Error as err:
            await self._drop_link(device)
            missing = err.error_code == hci.HCI_PIN_OR_KEY_MISSING_ERROR
            raise error("Failed", "le-connection-key-missing" if missing else LINK_FAILED) from None

    async def _resolve(self, device: RemoteDevice, connection: Connection) -> None:
        """Browse the GATT database and export it; then ServicesResolved."""
        peer = Peer(connection)
        with contextlib.suppress(att.ATT_Error, asyncio.TimeoutError):
            await on_link(peer.request_mtu(ATT_MTU))
        await on_link(peer.discover_services())
        for service in peer.services:
            await on_link(service.discover_characteristics())
            for characteristic in service.characteristics:
                await on_link(characteristic.discover_descriptors())
        if device.connection is not connection:
            raise LinkLost()
        uuids = list(self.devices.props(device)["UUIDs"].value)
        for service in peer.services:  # BlueZ adds what the database holds to what was advertised
            if (uuid := uuid_text(service.uuid)) not in uuids:
                uuids.append(uuid)
        self.gatt.export(device, connection, peer.services)
        self.tree.set(device.path, DEVICE, UUIDs=Variant("as", uuids))
        self.tree.set(device.path, DEVICE, ServicesResolved=Variant("b", True))

    # -- Device1 methods --------------------------------------------------------------------

    def _begin(self, device: RemoteDevice, kind: str) -> None:
        device.task = asyncio.current_task()
        device.kind = kind
        device.abort = ""

    def _end(self, device: RemoteDevice) -> None:
        device.task = None
        device.kind = ""

    def _aborted(self, device: RemoteDevice) -> bool:
        """Was this Connect/Pair cancelled by Disconnect, CancelPairing or RemoveDevice?"""
        task = asyncio.current_task()
        if device.abort and task is not None and hasattr(task, "uncancel"):
            task.uncancel()
            return True
        return False

    async def _connect(self, path: str, msg: Message) -> Reply:
        device = self.devices.get(path)
        if device.task is not None:
            raise error("InProgress", "In Progress")
        if device.connection is not None:
            if device.resolving is not None:  # a Pair's browse is still going on: it is this connection
                try:
                    await asyncio.shield(device.resolving)
                except (LinkLost, BlueZError, BaseBumbleError):
                    raise error("Failed", LINK_FAILED) from None
            return "", []
        self._begin(device, "connect")
        try:
            connection = await self._link(device)
            await self._secure(device, connection)
            device.resolving = self.tasks.spawn(self._resolve(device, connection))
            await asyncio.shield(device.resolving)
        except (LinkLost, asyncio.TimeoutError, BaseBumbleError) as err:
            logger.info("connecting %s failed: %r", path, err)
            await self._drop_link(device)
            raise error("Failed", LINK_FAILED) from None
        except asyncio.CancelledError:
            if not self._aborted(device):
                raise
            await self._drop_link(device)
            raise error("Failed", LINK_FAILED) from None
        finally:
            device.resolving = None
            self._end(device)
        return "", []

    async def _disconnect(self, path: str, msg: Message) -> Reply:
        device = self.devices.get(path)
        if device.task is not None and device.kind == "connect":
            device.abort = "disconnect"
            device.task.cancel()
        await self._drop_link(device)
        return "", []

    async def _pair(self, path: str, msg: Message) -> Reply:
        device = self.devices.get(path)
        if device.task is not None:
            raise error("InProgress", "In Progress")
        if self.devices.bonded(device):
            raise error("AlreadyExists", "Already Exists")
        agent = self.agents.for_caller(msg.sender or "")
        self._begin(device, "pair")
        linked_for_pairing = device.connection is None
        try:
            try:
                connection = device.connection or await self._link(device)
            except (LinkLost, asyncio.TimeoutError, BaseBumbleError):
                await self._drop_link(device)
                raise error("ConnectionAttemptFailed", "Page Timeout") from None
            self.agents.pairing[connection.handle] = (agent, path)
            try:
                await on_link(asyncio.wait_for(connection.pair(), PAIRING_TIMEOUT_S))
            except LinkLost:
                raise error("AuthenticationCanceled", "Authentication Canceled") from None
            except asyncio.TimeoutError:
                raise error("AuthenticationTimeout", "Authentication Timeout") from None
            except asyncio.CancelledError:
                raise
            except BaseBumbleError as err:  # SMP Pairing Failed (wrong passkey, refused, ...)
                logger.info("pairing %s failed: %r", path, err)
                if linked_for_pairing:
                    await self._drop_link(device)
                raise error("AuthenticationFailed", "Authentication Failed") from None
            finally:
                self.agents.pairing.pop(connection.handle, None)
        except asyncio.CancelledError:
            if not self._aborted(device):
                raise
            if linked_for_pairing:
                await self._drop_link(device)
            raise error("AuthenticationCanceled", "Authentication Canceled") from None
        finally:
            self._end(device)
        # The identity address came with the keys: the device is known by it from now on.
        device.address = connection.peer_address
        self.tree.set(path, DEVICE, Address=Variant("s", address_text(device.address)),
                      AddressType=Variant("s", "public" if device.address.is_public else "random"))
        self.tree.set(path, DEVICE, Paired=Variant("b", True), Bonded=Variant("b", True))
        if device.connection is connection and not self.devices.props(device)["ServicesResolved"].value:
            device.resolving = self.tasks.spawn(self._browse_after_pairing(device, connection))
        return "", []

    async def _browse_after_pairing(self, device: RemoteDevice, connection: Connection) -> None:
        try:
            await self._resolve(device, connection)
        except LinkLost:
            pass
        finally:
            if device.resolving is asyncio.current_task():
                device.resolving = None

    async def _cancel_pairing(self, path: str, msg: Message) -> Reply:
        device = self.devices.get(path)
        if device.task is None or device.kind != "pair":
            raise error("DoesNotExist", "Does Not Exist")
        device.abort = "cancel"
        device.task.cancel()
        return "", []

    async def _remove_device(self, path: str, msg: Message) -> Reply:
        """Adapter1.RemoveDevice: abort what is in progress, drop the link, forget the bond."""
        device = self.devices.by_path.get(msg.body[0])
        if device is None:
            raise error("DoesNotExist", "Does Not Exist")
        if device.task is not None:
            device.abort = "removed"
            device.task.cancel()
        if device.connection is not None:
            await self._drop_link(device)
        if await self.keystore.get(str(device.address)) is not None:
            await self.keystore.delete(str(device.address))
            await self.controller.refresh_resolving_list()
        self.devices.forget(device)
        return "", []
