"""A fake BlueZ for CI: the "OS Bluetooth stack" at the outer edge of the system, like a fake
modem on a pty. It owns `org.bluez` on a private D-Bus bus and speaks the part of BlueZ's D-Bus
API that an unmodified bleak 3.1 (BlueZ backend), and through it adafruit-blinka-bleio's
`_bleio`, use; underneath is a real host stack: a Bumble `Device` on the virtual radio (an HCI
transport from `VirtualRadio.serve_hci()`), so scanning, connections, LE Secure Connections
pairing, encryption and GATT are real.

Implemented, with BlueZ's object paths, property names, signals and error names/messages:

- `/`: `org.freedesktop.DBus.ObjectManager` (GetManagedObjects; InterfacesAdded/Removed are
  emitted from `/`), and `org.freedesktop.DBus.Properties` (Get, GetAll, Set, PropertiesChanged)
  on every object.
- `/org/bluez` `AgentManager1`: RegisterAgent, UnregisterAgent, RequestDefaultAgent. Pairing asks
  the caller's agent, else the default agent (`Agent1.RequestPasskey`, `DisplayPasskey`,
  `RequestConfirmation`, `Cancel`), with the agent's IO capability; no agent means
  NoInputNoOutput (Just Works: an unauthenticated bond), as in BlueZ.
- `/org/bluez/hci0` `Adapter1`: the usual properties (Roles has "central"), SetDiscoveryFilter
  (UUIDs and RSSI are applied, the other keys accepted), StartDiscovery/StopDiscovery as
  per-client sessions (a client that leaves the bus loses its session), GetDiscoveryFilters,
  RemoveDevice (forgets the bond). While a session has a filter (bleak always sets one), every
  advertisement updates RSSI (a PropertiesChanged even if unchanged), so a scanner also sees a
  device BlueZ already knows; without one, only changes of 8 dBm. When discovery stops,
  RSSI/TxPower are invalidated and devices that are neither bonded nor connected are removed
  TEMPORARY_TIMEOUT_S later.
- `Device1` under `/org/bluez/hci0/dev_XX_..`: created from advertisements while discovering
  (Name, UUIDs, ManufacturerData, ServiceData, TxPower, RSSI, AdvertisingFlags), updated with
  PropertiesChanged. A device advertising a resolvable private address that resolves with a
  bond's IRK is the bonded device (its identity address); bonds are kept in a Bumble JSON key
  store (like /var/lib/bluetooth) and bonded devices are present from the start.
  Connect: connects (a bonded device with an IRK: to the RPA it advertises now, found by
  scanning, as the kernel does), encrypts with the bond, exchanges the MTU, discovers all
  services, characteristics and descriptors, exports them, then ServicesResolved. Pair: connects
  if needed; LE Secure Connections, MITM, bonding; afterwards Address is the identity address,
  Paired/Bonded are true and the services are resolved. Disconnect, CancelPairing; Trusted and
  Alias are writable.
- `GattService1`/`GattCharacteristic1`/`GattDescriptor1` (paths `serviceXXXX/charXXXX/descXXXX`
  with the attribute handles; the GAP service is claimed and not exported, as in BlueZ):
  ReadValue, WriteValue (type "request"/"command"), StartNotify/StopNotify as per-client sessions
  (a notification is a PropertiesChanged of `Value`, also after a read, as in BlueZ), MTU. No
  AcquireNotify/AcquireWrite, so bleak uses StartNotify and WriteValue. ATT errors map as BlueZ's
  create_gatt_dbus_error does (NotPermitted "Not paired" for insufficient authentication, ...).
- Failed connections answer `org.bluez.Error.Failed` "le-connection-abort-by-local" (what bleak
  retries); a link that came up and dropped first shows Connected true then false, as in BlueZ.
- On disconnection (either side, or the peer vanishing): ServicesResolved false, the GATT
  objects removed (InterfacesRemoved), Connected false.

Not implemented: BR/EDR, Introspect data, advertising (LEAdvertisingManager1), GATT server
(GattManager1), AdvertisementMonitor (passive scanning), Battery1, profiles, AcquireNotify/
AcquireWrite, reliable and offset writes, offset reads, Blocked, Powered off, persistence of
Trusted/Alias, pairing initiated by the peer (a Security Request), and BlueZ's GATT cache:
a bonded device's GATT objects are removed on disconnection and rediscovered on connection.

Run as a process (prints `ready` once it owns the name and the controller is powered; exits
cleanly on SIGTERM):

    python -m jikimi_host.sim.bluez --bus ADDRESS --transport tcp-client:127.0.0.1:PORT --bonds bonds.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bumble import att, hci
from bumble.core import UUID, BaseBumbleError, PhysicalTransport
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt_client import CharacteristicProxy, DescriptorProxy
from bumble.keys import JsonKeyStore
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport
from dbus_fast import Message, MessageFlag, MessageType, NameFlag, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import RequestNameReply

from jikimi_host.processes import stop_process

logger = logging.getLogger(__name__)

BLUEZ = "org.bluez"
ADAPTER_PATH = "/org/bluez/hci0"
ADAPTER_ADDRESS = "C3:42:4C:55:45:5A"  # a static random address: the virtual link routes LE by it
ERROR = "org.bluez.Error."
DBUS_ERROR = "org.freedesktop.DBus.Error."
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
ADAPTER = "org.bluez.Adapter1"
AGENT_MANAGER = "org.bluez.AgentManager1"
AGENT = "org.bluez.Agent1"
DEVICE = "org.bluez.Device1"
SERVICE = "org.bluez.GattService1"
CHARACTERISTIC = "org.bluez.GattCharacteristic1"
DESCRIPTOR = "org.bluez.GattDescriptor1"

CONNECT_TIMEOUT_S = 20.0
PAIRING_TIMEOUT_S = 60.0
AGENT_TIMEOUT_S = 60.0
TEMPORARY_TIMEOUT_S = 30.0  # main.conf TemporaryTimeout
RSSI_THRESHOLD = 8
ATT_MTU = 517  # what BlueZ asks for
GAP_SERVICE = UUID.from_16_bits(0x1800)
CCCD = UUID.from_16_bits(0x2902)
LINK_FAILED = "le-connection-abort-by-local"
NAME_OWNER_CHANGED = ("type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                      "member='NameOwnerChanged'")

IO_CAPABILITIES = {
    "DisplayOnly": PairingDelegate.IoCapability.DISPLAY_OUTPUT_ONLY,
    "DisplayYesNo": PairingDelegate.IoCapability.DISPLAY_OUTPUT_AND_YES_NO_INPUT,
    "KeyboardOnly": PairingDelegate.IoCapability.KEYBOARD_INPUT_ONLY,
    "NoInputNoOutput": PairingDelegate.IoCapability.NO_OUTPUT_NO_INPUT,
    "KeyboardDisplay": PairingDelegate.IoCapability.DISPLAY_OUTPUT_AND_KEYBOARD_INPUT,
}
CHARACTERISTIC_FLAGS = ((0x01, "broadcast"), (0x02, "read"), (0x04, "write-without-response"), (0x08, "write"),
                        (0x10, "notify"), (0x20, "indicate"), (0x40, "authenticated-signed-writes"),
                        (0x80, "extended-properties"))
DISCOVERY_FILTERS = {"UUIDs": "as", "RSSI": "n", "Pathloss": "q", "Transport": "s", "DuplicateData": "b",
                     "Discoverable": "b", "Pattern": "s"}

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="org.bluez"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


# -- the private system bus ---------------------------------------------------------------

async def start_system_bus(folder: Path) -> tuple[asyncio.subprocess.Process, str]:
    """A private `dbus-daemon` listening on a unix socket in `folder`; (process, bus address).
    Stop it with `stop_process`."""
    folder.mkdir(parents=True, exist_ok=True)
    socket = folder / "system_bus_socket"
    if len(str(socket)) > 100:  # sun_path holds 108 bytes
        raise ValueError(f"the socket path {socket} is too long for a unix socket")
    config = folder / "system-bus.conf"
    config.write_text(BUS_CONFIG.format(socket=socket))
    log = os.open(folder / "dbus-daemon.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(
            "dbus-daemon", "--nofork", "--print-address", f"--config-file={config}",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log)
    except FileNotFoundError:
        raise RuntimeError("dbus-daemon is not installed; the OS-stack tests run a private system bus with it "
                           "(Debian/Ubuntu: apt-get install dbus-daemon; .ci/run installs it)") from None
    finally:
        os.close(log)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        if not line:
            raise RuntimeError(f"dbus-daemon exited: {(folder / 'dbus-daemon.log').read_text()}")
    except BaseException:
        await stop_process(process)
        raise
    return process, line.decode().strip()


# -- helpers ------------------------------------------------------------------------------

class BlueZError(Exception):
    """A D-Bus error reply: `name` is the error name, `text` its message."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


def _error(short: str, text: str) -> BlueZError:
    return BlueZError(ERROR + short, text)


def _att_error(code: int) -> BlueZError:
    """An ATT error as BlueZ reports it (gatt-client.c, create_gatt_dbus_error)."""
    if code == att.ErrorCode.READ_NOT_PERMITTED:
        return _error("NotPermitted", "Read not permitted")
    if code == att.ErrorCode.WRITE_NOT_PERMITTED:
        return _error("NotPermitted", "Write not permitted")
    if code in (att.ErrorCode.INSUFFICIENT_AUTHENTICATION, att.ErrorCode.INSUFFICIENT_ENCRYPTION,
                att.ErrorCode.INSUFFICIENT_ENCRYPTION_KEY_SIZE):
        return _error("NotPermitted", "Not paired")
    if code == att.ErrorCode.INVALID_OFFSET:
        return _error("InvalidArguments", "Invalid offset")
    if code == att.ErrorCode.INVALID_ATTRIBUTE_LENGTH:
        return _error("InvalidArguments", "Invalid Length")
    if code == att.ErrorCode.INSUFFICIENT_AUTHORIZATION:
        return _error("NotAuthorized", "Operation Not Authorized")
    if code == att.ErrorCode.REQUEST_NOT_SUPPORTED:
        return _error("NotSupported", "Operation is not supported")
    return _error("Failed", f"Operation failed with ATT error: 0x{code:02x}")


class _LinkLost(Exception):
    """The link dropped under a Bumble operation."""


def _cancelling() -> bool:
    """True if this task itself is being cancelled (not an operation Bumble cancelled)."""
    task = asyncio.current_task()
    return task is not None and getattr(task, "cancelling", lambda: 1)() > 0


async def _on_link(awaitable: Awaitable[Any]) -> Any:
    """Await a Bumble operation; Bumble cancels it when the link drops: that is _LinkLost."""
    try:
        return await awaitable
    except asyncio.CancelledError:
        if _cancelling():
            raise
        raise _LinkLost() from None


def _uuid(uuid: UUID) -> str:
    """BlueZ's form: 128 bits, lower case, dashed."""
    h = uuid.uuid_128_bytes[::-1].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _copy(interfaces: dict[str, dict[str, Variant]]) -> dict[str, dict[str, Variant]]:
    """A snapshot to send: the message is marshalled later, the properties may change before."""
    return {name: dict(props) for name, props in interfaces.items()}


def _text(address: hci.Address) -> str:
    return address.to_string(with_type_qualifier=False)


def _advertised(advertisement: Advertisement) -> dict[str, Variant]:
    """Device1 properties from advertising data, as BlueZ parses EIR/AD."""
    props: dict[str, Variant] = {}
    uuids: list[str] = []
    manufacturer: dict[int, Variant] = {}
    service_data: dict[str, Variant] = {}
    for ad_type, data in advertisement.data.ad_structures:
        ad_type = int(ad_type)
        size = {0x02: 2, 0x03: 2, 0x04: 4, 0x05: 4, 0x06: 16, 0x07: 16}.get(ad_type)
        if size:
            uuids += [_uuid(UUID.from_bytes(data[i:i + size])) for i in range(0, len(data) - size + 1, size)]
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
                service_data[_uuid(UUID.from_bytes(data[:size]))] = Variant("ay", bytes(data[size:]))
    if uuids:
        props["UUIDs"] = Variant("as", uuids)
    if manufacturer:
        props["ManufacturerData"] = Variant("a{qv}", manufacturer)
    if service_data:
        props["ServiceData"] = Variant("a{sv}", service_data)
    if advertisement.rssi != Advertisement.RSSI_NOT_AVAILABLE:
        props["RSSI"] = Variant("n", advertisement.rssi)
    return props


# -- state --------------------------------------------------------------------------------

@dataclass(eq=False)
class _Agent:
    owner: str  # its unique bus name
    path: str
    capability: str


@dataclass(eq=False)
class _Device:
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


@dataclass(eq=False)
class _Characteristic:
    device: _Device
    path: str
    proxy: CharacteristicProxy
    sessions: set[str] = field(default_factory=set)  # bus names with a notify session
    starting: set[str] = field(default_factory=set)
    reading: bool = False
    writing: bool = False
    subscriber: Callable[[bytes], None] | None = None


@dataclass(eq=False)
class _Descriptor:
    device: _Device
    path: str
    proxy: DescriptorProxy
    reading: bool = False
    writing: bool = False


Handler = Callable[[str, Message], Awaitable[tuple[str, list[Any]]]]


class _AgentDelegate(PairingDelegate):
    """Bumble's pairing questions, answered by a BlueZ agent over D-Bus (as bluetoothd asks
    bluetoothctl or a desktop's agent)."""

    def __init__(self, bluez: FakeBlueZ, agent: _Agent | None, device_path: str) -> None:
        super().__init__(io_capability=IO_CAPABILITIES[agent.capability if agent else "NoInputNoOutput"])
        self.bluez = bluez
        self.agent = agent
        self.device_path = device_path

    async def get_number(self) -> int | None:
        reply = await self.bluez._ask_agent(self.agent, "RequestPasskey", "o", [self.device_path])
        return None if reply is None else int(reply[0])

    async def display_number(self, number: int, digits: int) -> None:
        await self.bluez._ask_agent(self.agent, "DisplayPasskey", "ouq", [self.device_path, number, 0])

    async def compare_numbers(self, number: int, digits: int) -> bool:
        return await self.bluez._ask_agent(self.agent, "RequestConfirmation", "ou", [self.device_path, number]) \
            is not None

    async def confirm(self, auto: bool = False) -> bool:
        return True  # Just Works that we started: BlueZ does not ask

    async def accept(self) -> bool:
        return True


# -- the fake -----------------------------------------------------------------------------

class FakeBlueZ:
    def __init__(self, bus_address: str, transport: str, bonds: Path) -> None:
        self.bus_address = bus_address
        self.transport_name = transport
        self.bonds = Path(bonds)
        self.bus: MessageBus | None = None
        self.device: Device | None = None
        self.keystore = JsonKeyStore(ADAPTER_ADDRESS, str(self.bonds))
        self._transport: Any = None
        self._objects: dict[str, dict[str, dict[str, Variant]]] = {}
        self._devices: dict[str, _Device] = {}
        self._characteristics: dict[str, _Characteristic] = {}
        self._descriptors: dict[str, _Descriptor] = {}
        self._filters: dict[str, dict[str, Any]] = {}  # bus name -> discovery filter
        self._sessions: set[str] = set()  # bus names discovering
        self._agents: dict[str, _Agent] = {}
        self._default_agent: _Agent | None = None
        self._pairing: dict[int, tuple[_Agent | None, str]] = {}  # connection handle -> agent, device path
        self._waiters: dict[_Device, list[asyncio.Future[hci.Address]]] = {}
        self._scan_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._methods: dict[tuple[str, str], tuple[str, Handler]] = {
            (AGENT_MANAGER, "RegisterAgent"): ("os", self._register_agent),
            (AGENT_MANAGER, "UnregisterAgent"): ("o", self._unregister_agent),
            (AGENT_MANAGER, "RequestDefaultAgent"): ("o", self._request_default_agent),
            (ADAPTER, "SetDiscoveryFilter"): ("a{sv}", self._set_discovery_filter),
            (ADAPTER, "GetDiscoveryFilters"): ("", self._get_discovery_filters),
            (ADAPTER, "StartDiscovery"): ("", self._start_discovery),
            (ADAPTER, "StopDiscovery"): ("", self._stop_discovery),
            (ADAPTER, "RemoveDevice"): ("o", self._remove_device),
            (DEVICE, "Connect"): ("", self._connect),
            (DEVICE, "Disconnect"): ("", self._disconnect),
            (DEVICE, "Pair"): ("", self._pair),
            (DEVICE, "CancelPairing"): ("", self._cancel_pairing),
            (CHARACTERISTIC, "ReadValue"): ("a{sv}", self._read_characteristic),
            (CHARACTERISTIC, "WriteValue"): ("aya{sv}", self._write_characteristic),
            (CHARACTERISTIC, "StartNotify"): ("", self._start_notify),
            (CHARACTERISTIC, "StopNotify"): ("", self._stop_notify),
            (DESCRIPTOR, "ReadValue"): ("a{sv}", self._read_descriptor),
            (DESCRIPTOR, "WriteValue"): ("aya{sv}", self._write_descriptor),
        }
        self._writable: dict[tuple[str, str], Callable[[str, Variant], None]] = {
            (DEVICE, "Trusted"): self._set_trusted,
            (DEVICE, "Alias"): self._set_device_alias,
            (ADAPTER, "Alias"): lambda path, value: self._set(path, ADAPTER, Alias=Variant("s", value.value)),
            (ADAPTER, "Pairable"): lambda path, value: self._set(path, ADAPTER, Pairable=Variant("b", value.value)),
            (ADAPTER, "Discoverable"):
                lambda path, value: self._set(path, ADAPTER, Discoverable=Variant("b", value.value)),
        }

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Power the controller on, load the bonds, export the objects, own `org.bluez`."""
        self._transport = await open_transport(self.transport_name)
        device = Device.with_hci("bluez", hci.Address(ADAPTER_ADDRESS), self._transport.source,
                                 self._transport.sink)
        device.keystore = self.keystore
        device.pairing_config_factory = self._pairing_config
        device.on(device.EVENT_ADVERTISEMENT, self._on_advertisement)
        self.device = device
        await device.power_on()

        self.bus = await MessageBus(bus_address=self.bus_address).connect()
        self.bus.add_message_handler(self._on_message)
        await self._bus_call("AddMatch", "s", [NAME_OWNER_CHANGED])
        self._export("/org/bluez", {AGENT_MANAGER: {}})
        self._export(ADAPTER_PATH, {ADAPTER: {
            "Address": Variant("s", ADAPTER_ADDRESS), "AddressType": Variant("s", "random"),
            "Name": Variant("s", "jikimi-ci"), "Alias": Variant("s", "jikimi-ci"), "Class": Variant("u", 0),
            "Powered": Variant("b", True), "PowerState": Variant("s", "on"),
            "Discoverable": Variant("b", False), "DiscoverableTimeout": Variant("u", 180),
            "Pairable": Variant("b", True), "PairableTimeout": Variant("u", 0),
            "Discovering": Variant("b", False),
            "UUIDs": Variant("as", [_uuid(GAP_SERVICE), _uuid(UUID.from_16_bits(0x1801))]),
            "Modalias": Variant("s", "usb:v1D6Bp0246d054F"), "Roles": Variant("as", ["central", "peripheral"]),
        }})
        for name, keys in await self.keystore.get_all():  # bonded devices, as from /var/lib/bluetooth
            address_type = keys.address_type if keys.address_type is not None else hci.Address.RANDOM_DEVICE_ADDRESS
            self._add_device(hci.Address(name, address_type), bonded=True)
        reply = await self.bus.request_name(BLUEZ, NameFlag.DO_NOT_QUEUE)
        if reply != RequestNameReply.PRIMARY_OWNER:
            raise RuntimeError(f"could not own {BLUEZ}: {reply!r}")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.bus is not None:
            self.bus.disconnect()
            with contextlib.suppress(Exception):
                await self.bus.wait_for_disconnect()
        if self._transport is not None:
            await self._transport.close()  # the dongle is unplugged: links drop

    # -- D-Bus plumbing -------------------------------------------------------------------

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()  # retrieved: a lost link is expected
        if error is not None and not isinstance(error, (_LinkLost, BlueZError, BaseBumbleError)):
            logger.error("background task failed", exc_info=error)

    def _signal(self, path: str, interface: str, member: str, signature: str, body: list[Any]) -> None:
        if self.bus is not None and self.bus.connected:
            self.bus.send(Message.new_signal(path, interface, member, signature, body))

    async def _bus_call(self, member: str, signature: str, body: list[Any]) -> Message:
        assert self.bus is not None
        return await self.bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                           interface="org.freedesktop.DBus", member=member,
                                           signature=signature, body=body))

    def _export(self, path: str, interfaces: dict[str, dict[str, Variant]]) -> None:
        self._objects[path] = interfaces
        self._signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", [path, _copy(interfaces)])

    def _unexport(self, path: str) -> None:
        interfaces = self._objects.pop(path, None)
        if interfaces is not None:
            self._signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, list(interfaces)])

    def _set(self, path: str, interface: str, always: bool = False, **values: Variant) -> None:
        """Update properties; PropertiesChanged for those that changed (`always`: all of them,
        as BlueZ does for a characteristic's Value)."""
        props = self._objects.get(path, {}).get(interface)
        if props is None:
            return
        changed = {k: v for k, v in values.items() if always or props.get(k) != v}
        props.update(changed)
        if changed:
            self._signal(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, changed, []])

    def _invalidate(self, path: str, interface: str, *names: str) -> None:
        props = self._objects.get(path, {}).get(interface, {})
        gone = [name for name in names if props.pop(name, None) is not None]
        if gone:
            self._signal(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, {}, gone])

    def _on_message(self, msg: Message) -> bool | None:
        if msg.message_type == MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus" and not msg.body[2]:
                self._client_gone(msg.body[0])
            return None
        if msg.message_type != MessageType.METHOD_CALL or msg.interface in (
                "org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Peer"):
            return None
        self._spawn(self._answer(msg))
        return True

    async def _answer(self, msg: Message) -> None:
        try:
            signature, body = await self._dispatch(msg)
            reply = Message.new_method_return(msg, signature, body)
        except BlueZError as err:
            reply = Message.new_error(msg, err.name, err.text)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a bug here must not leave the caller waiting
            logger.exception("%s.%s failed", msg.interface, msg.member)
            reply = Message.new_error(msg, ERROR + "Failed", str(err) or type(err).__name__)
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED and self.bus is not None and self.bus.connected:
            self.bus.send(reply)

    async def _dispatch(self, msg: Message) -> tuple[str, list[Any]]:
        path, interface, member = msg.path or "", msg.interface, msg.member or ""
        if interface == PROPERTIES:
            return self._properties(path, member, msg)
        if interface == OBJECT_MANAGER and member == "GetManagedObjects" and path == "/":
            return "a{oa{sa{sv}}}", [{path: _copy(interfaces) for path, interfaces in self._objects.items()}]
        interfaces = self._objects.get(path, {})
        for name in [interface] if interface else list(interfaces):
            entry = self._methods.get((name or "", member))
            if entry is not None and name in interfaces:
                if msg.signature != entry[0]:
                    raise _error("InvalidArguments", "Invalid arguments in method call")
                return await entry[1](path, msg)
        if not interfaces:
            raise BlueZError(DBUS_ERROR + "UnknownObject", f"Method \"{member}\" with signature \"{msg.signature}\" "
                             f"on interface \"{interface}\" doesn't exist")
        raise BlueZError(DBUS_ERROR + "UnknownMethod", f"Method \"{member}\" with signature \"{msg.signature}\" "
                         f"on interface \"{interface}\" doesn't exist")

    def _properties(self, path: str, member: str, msg: Message) -> tuple[str, list[Any]]:
        signatures = {"Get": "ss", "GetAll": "s", "Set": "ssv"}
        if signatures.get(member) != msg.signature:
            raise BlueZError(DBUS_ERROR + "UnknownMethod", f"Method \"{member}\" doesn't exist")
        interface = msg.body[0]
        props = self._objects.get(path, {}).get(interface)
        if props is None:
            raise BlueZError(DBUS_ERROR + "InvalidArgs", f"No such interface '{interface}'")
        if member == "GetAll":
            return "a{sv}", [dict(props)]
        name = msg.body[1]
        if name not in props:
            raise BlueZError(DBUS_ERROR + "InvalidArgs", f"No such property '{name}'")
        if member == "Get":
            return "v", [props[name]]
        setter = self._writable.get((interface, name))
        if setter is None:
            raise BlueZError(DBUS_ERROR + "PropertyReadOnly", f"Property '{name}' is not writable")
        if msg.body[2].signature != props[name].signature:
            raise _error("InvalidArguments", "Invalid arguments in method call")
        setter(path, msg.body[2])
        return "", []

    def _client_gone(self, name: str) -> None:
        """A D-Bus client left the bus: its discovery session, agent and notify sessions end."""
        self._filters.pop(name, None)
        if name in self._sessions:
            self._sessions.discard(name)
            self._spawn(self._discovery_changed())
        agent = self._agents.pop(name, None)
        if agent is not None and agent is self._default_agent:
            self._default_agent = None
        for characteristic in list(self._characteristics.values()):
            if name in characteristic.sessions:
                characteristic.sessions.discard(name)
                self._spawn(self._notify_sessions_changed(characteristic))

    # -- agents ---------------------------------------------------------------------------

    async def _register_agent(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        agent_path, capability = msg.body
        capability = capability or "KeyboardDisplay"
        if capability not in IO_CAPABILITIES:
            raise _error("InvalidArguments", "Invalid arguments in method call")
        if msg.sender in self._agents:
            raise _error("AlreadyExists", "Already Exists")
        self._agents[msg.sender or ""] = _Agent(msg.sender or "", agent_path, capability)
        return "", []

    async def _unregister_agent(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        agent = self._agents.get(msg.sender or "")
        if agent is None or agent.path != msg.body[0]:
            raise _error("DoesNotExist", "No such Agent")
        del self._agents[agent.owner]
        if agent is self._default_agent:
            self._default_agent = None
        return "", []

    async def _request_default_agent(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        agent = self._agents.get(msg.sender or "")
        if agent is None or agent.path != msg.body[0]:
            raise _error("DoesNotExist", "No such Agent")
        self._default_agent = agent
        return "", []

    async def _ask_agent(self, agent: _Agent | None, member: str, signature: str, body: list[Any]) -> list[Any] | None:
        """The agent's answer, or None if there is no agent or it refused (an error reply)."""
        if agent is None or self.bus is None:
            return None
        call = Message(destination=agent.owner, path=agent.path, interface=AGENT, member=member,
                       signature=signature, body=body)
        try:
            reply = await asyncio.wait_for(self.bus.call(call), AGENT_TIMEOUT_S)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            # pairing ended (failed, cancelled, link lost) while the agent was asked: tell it
            self.bus.send(Message(destination=agent.owner, path=agent.path, interface=AGENT, member="Cancel",
                                  flags=MessageFlag.NO_REPLY_EXPECTED))
            if _cancelling():
                raise
            return None
        if reply.message_type == MessageType.ERROR:
            logger.info("agent %s answered %s with %s", agent.owner, member, reply.error_name)
            return None
        return list(reply.body)

    def _pairing_config(self, connection: Connection) -> PairingConfig:
        agent, device_path = self._pairing.get(connection.handle, (None, ""))
        return PairingConfig(sc=True, mitm=True, bonding=True, delegate=_AgentDelegate(self, agent, device_path))

    # -- discovery ------------------------------------------------------------------------

    async def _set_discovery_filter(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        given: dict[str, Variant] = msg.body[0]
        parsed: dict[str, Any] = {}
        for key, value in given.items():
            if DISCOVERY_FILTERS.get(key) != value.signature:
                raise _error("InvalidArguments", "Invalid arguments in method call")
            parsed[key] = value.value
        if "UUIDs" in parsed:
            try:
                parsed["UUIDs"] = {_uuid(UUID(u)) for u in parsed["UUIDs"]}
            except ValueError:
                raise _error("InvalidArguments", "Invalid arguments in method call") from None
        if parsed.get("Transport", "le") not in ("auto", "bredr", "le"):
            raise _error("InvalidArguments", "Invalid arguments in method call")
        if parsed:
            self._filters[msg.sender or ""] = parsed
        else:
            self._filters.pop(msg.sender or "", None)
        return "", []

    async def _get_discovery_filters(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        return "as", [list(DISCOVERY_FILTERS)]

    async def _start_discovery(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        if msg.sender in self._sessions:
            raise _error("InProgress", "Operation already in progress")
        self._sessions.add(msg.sender or "")
        await self._discovery_changed()
        return "", []

    async def _stop_discovery(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        if msg.sender not in self._sessions:
            raise _error("Failed", "No discovery started")
        self._sessions.discard(msg.sender or "")
        await self._discovery_changed()
        return "", []

    async def _discovery_changed(self) -> None:
        discovering = bool(self._sessions)
        await self._update_scanning()
        was = self._objects[ADAPTER_PATH][ADAPTER]["Discovering"].value
        if discovering == was:
            return
        self._set(ADAPTER_PATH, ADAPTER, Discovering=Variant("b", discovering))
        if not discovering:  # BlueZ forgets the signal strength, and later the devices it only saw
            for device in list(self._devices.values()):
                self._invalidate(device.path, DEVICE, "RSSI", "TxPower")
                self._expire_later(device)
        else:
            for device in self._devices.values():
                self._keep(device)

    async def _update_scanning(self) -> None:
        """Scan while discovering or while a Connect/Pair waits for the device's advertisement."""
        assert self.device is not None
        async with self._scan_lock:
            wanted = bool(self._sessions) or any(self._waiters.values())
            if wanted and not self.device.is_scanning:
                await self.device.start_scanning(active=True, filter_duplicates=False)
            elif not wanted and self.device.is_scanning:
                await self.device.stop_scanning()

    def _wanted(self, props: dict[str, Variant]) -> bool:
        """Does a discovery session's filter let this advertisement through?"""
        uuids = set(props["UUIDs"].value) if "UUIDs" in props else set()
        rssi = props["RSSI"].value if "RSSI" in props else -127
        for session in self._sessions:
            wanted = self._filters.get(session, {})
            if "RSSI" in wanted and rssi < wanted["RSSI"]:
                continue
            if wanted.get("UUIDs") and not wanted["UUIDs"] & uuids:
                continue
            return True
        return False

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        assert self.device is not None
        address = advertisement.address
        resolver = self.device.address_resolver
        identity = resolver.resolve(address) if resolver is not None and address.is_resolvable else None
        device = self._find(identity or address)
        if device is not None and advertisement.is_connectable:
            for waiter in self._waiters.pop(device, []):
                if not waiter.done():
                    waiter.set_result(address)
        if not self._sessions:
            return  # a connection's scan (the kernel's background scan) reports nothing
        props = _advertised(advertisement)
        if not self._wanted(props):
            return
        if device is None:
            device = self._add_device(identity or address, bonded=False)
        self._keep(device)
        current = self._objects[device.path][DEVICE]
        if "UUIDs" in props:  # BlueZ accumulates what a device ever advertised
            props["UUIDs"] = Variant("as", current["UUIDs"].value + [
                u for u in props["UUIDs"].value if u not in current["UUIDs"].value])
        for key in ("ManufacturerData", "ServiceData"):
            if key in props and key in current:
                props[key] = Variant(props[key].signature, {**current[key].value, **props[key].value})
        if "Name" in props and not device.alias:
            props["Alias"] = props["Name"]
        rssi = props.pop("RSSI", None)
        self._set(device.path, DEVICE, **props)
        if rssi is not None:
            # With a discovery filter set (bleak always sets one) BlueZ reports the RSSI of every
            # advertisement, so that a scanner sees a device it already knows; otherwise only
            # changes of RSSI_THRESHOLD dBm.
            old = current.get("RSSI")
            filtered = any(self._filters.get(session) for session in self._sessions)
            if filtered or old is None or abs(old.value - rssi.value) >= RSSI_THRESHOLD:
                self._set(device.path, DEVICE, always=True, RSSI=rssi)

    # -- devices --------------------------------------------------------------------------

    def _find(self, address: hci.Address) -> _Device | None:
        for device in self._devices.values():
            if device.address == address:
                return device
        return None

    def _device(self, path: str) -> _Device:
        device = self._devices.get(path)
        if device is None:
            raise _error("DoesNotExist", "Does Not Exist")
        return device

    def _add_device(self, address: hci.Address, bonded: bool) -> _Device:
        text = _text(address)
        path = f"{ADAPTER_PATH}/dev_{text.replace(':', '_')}"
        device = _Device(path, address)
        self._devices[path] = device
        self._export(path, {DEVICE: {
            "Address": Variant("s", text), "AddressType": Variant("s", "public" if address.is_public else "random"),
            "Alias": Variant("s", text.replace(":", "-")), "Paired": Variant("b", bonded),
            "Bonded": Variant("b", bonded), "Trusted": Variant("b", False), "Blocked": Variant("b", False),
            "LegacyPairing": Variant("b", False), "Connected": Variant("b", False), "UUIDs": Variant("as", []),
            "Adapter": Variant("o", ADAPTER_PATH), "ServicesResolved": Variant("b", False),
        }})
        return device

    def _bonded(self, device: _Device) -> bool:
        props = self._objects.get(device.path, {}).get(DEVICE)
        return props is not None and bool(props["Paired"].value)

    def _keep(self, device: _Device) -> None:
        if device.expiry is not None:
            device.expiry.cancel()
            device.expiry = None

    def _expire_later(self, device: _Device) -> None:
        """A device only seen in a discovery (not bonded, not connected) is removed a while after."""
        if self._sessions or device.connection is not None or device.task is not None or self._bonded(device):
            return
        self._keep(device)
        device.expiry = asyncio.get_running_loop().call_later(TEMPORARY_TIMEOUT_S, self._expire, device)

    def _expire(self, device: _Device) -> None:
        device.expiry = None
        if not self._sessions and device.connection is None and device.task is None and not self._bonded(device):
            self._forget(device)

    def _forget(self, device: _Device) -> None:
        self._keep(device)
        self._devices.pop(device.path, None)
        self._unexport(device.path)

    async def _remove_device(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        device = self._devices.get(msg.body[0])
        if device is None:
            raise _error("DoesNotExist", "Does Not Exist")
        if device.task is not None:
            device.abort = "removed"
            device.task.cancel()
        if device.connection is not None:
            await self._drop_link(device)
        if await self.keystore.get(str(device.address)) is not None:
            await self.keystore.delete(str(device.address))
            assert self.device is not None
            await self.device.refresh_resolving_list()
        self._forget(device)
        return "", []

    def _set_trusted(self, path: str, value: Variant) -> None:
        self._set(path, DEVICE, Trusted=Variant("b", bool(value.value)))

    def _set_device_alias(self, path: str, value: Variant) -> None:
        device = self._devices[path]
        device.alias = value.value
        props = self._objects[path][DEVICE]
        alias = value.value or (props["Name"].value if "Name" in props else props["Address"].value.replace(":", "-"))
        self._set(path, DEVICE, Alias=Variant("s", alias))

    # -- links ----------------------------------------------------------------------------

    async def _heard(self, device: _Device) -> hci.Address:
        """The address a bonded device advertises at now (connectable): its next advertisement."""
        waiter: asyncio.Future[hci.Address] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(device, []).append(waiter)
        try:
            await self._update_scanning()
            return await waiter
        finally:
            waiters = self._waiters.get(device, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(device, None)
            self._spawn(self._update_scanning())

    async def _link(self, device: _Device) -> Connection:
        """Connect (the kernel's part of Connect/Pair): Connected is true once the link is up."""
        assert self.device is not None
        self._keep(device)
        address = device.address
        resolver = self.device.address_resolver
        if resolver is not None and resolver.can_resolve_to(address):
            # a bonded device with private addresses: the kernel scans for an RPA that resolves to it
            address = await asyncio.wait_for(self._heard(device), CONNECT_TIMEOUT_S)
        connection = await self.device.connect(address, transport=PhysicalTransport.LE, timeout=CONNECT_TIMEOUT_S)
        device.connection = connection
        connection.on(connection.EVENT_DISCONNECTION, lambda reason: self._detached(device, connection))
        self._set(device.path, DEVICE, Connected=Variant("b", True))
        if connection.handle not in self.device.connections:  # dropped while we were told it is up
            self._detached(device, connection)
            raise _LinkLost()
        return connection

    async def _drop_link(self, device: _Device) -> None:
        connection = device.connection
        if connection is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.disconnect(), 5)
        self._detached(device, connection)

    def _detached(self, device: _Device, connection: Connection) -> None:
        if device.connection is not connection:
            return
        device.connection = None
        self._set(device.path, DEVICE, ServicesResolved=Variant("b", False))
        for path in reversed(device.gatt):
            self._characteristics.pop(path, None)
            self._descriptors.pop(path, None)
            self._unexport(path)
        device.gatt.clear()
        self._set(device.path, DEVICE, Connected=Variant("b", False))
        self._expire_later(device)

    async def _secure(self, device: _Device, connection: Connection) -> None:
        """Encrypt with the bond, as the kernel does before ATT on a paired device."""
        if connection.is_encrypted:
            return
        if await self.keystore.get(str(connection.peer_address)) is None:
            logger.info("link to %s: no keys for it, not encrypted (the device's address: %s)",
                        connection.peer_address, device.address)
            return
        try:
            await _on_link(asyncio.wait_for(connection.encrypt(), CONNECT_TIMEOUT_S))
        except hci.HCI_Error as err:
            await self._drop_link(device)
            missing = err.error_code == hci.HCI_PIN_OR_KEY_MISSING_ERROR
            raise _error("Failed", "le-connection-key-missing" if missing else LINK_FAILED) from None

    async def _resolve(self, device: _Device, connection: Connection) -> None:
        """Browse the GATT database and export it; then ServicesResolved."""
        peer = Peer(connection)
        with contextlib.suppress(att.ATT_Error, asyncio.TimeoutError):
            await _on_link(peer.request_mtu(ATT_MTU))
        await _on_link(peer.discover_services())
        for service in peer.services:
            await _on_link(service.discover_characteristics())
            for characteristic in service.characteristics:
                await _on_link(characteristic.discover_descriptors())
        if device.connection is not connection:
            raise _LinkLost()
        uuids = list(self._objects[device.path][DEVICE]["UUIDs"].value)
        for service in peer.services:
            uuid = _uuid(service.uuid)
            if uuid not in uuids:
                uuids.append(uuid)
            if service.uuid == GAP_SERVICE:
                continue  # claimed by BlueZ's GAP plugin: not exported
            service_path = f"{device.path}/service{service.handle:04x}"
            self._export(service_path, {SERVICE: {
                "UUID": Variant("s", uuid), "Primary": Variant("b", True), "Device": Variant("o", device.path),
                "Includes": Variant("ao", []),
            }})
            device.gatt.append(service_path)
            for proxy in service.characteristics:
                self._export_characteristic(device, connection, service_path, proxy)
        self._set(device.path, DEVICE, UUIDs=Variant("as", uuids))
        self._set(device.path, DEVICE, ServicesResolved=Variant("b", True))

    def _export_characteristic(self, device: _Device, connection: Connection, service_path: str,
                               proxy: CharacteristicProxy) -> None:
        path = f"{service_path}/char{proxy.handle - 1:04x}"  # BlueZ names it by its declaration handle
        props: dict[str, Variant] = {
            "UUID": Variant("s", _uuid(proxy.uuid)), "Service": Variant("o", service_path),
            "Flags": Variant("as", [name for bit, name in CHARACTERISTIC_FLAGS if proxy.properties & bit]),
            "MTU": Variant("q", connection.att_mtu),
        }
        if proxy.properties & 0x30:
            props["Notifying"] = Variant("b", False)
        characteristic = _Characteristic(device, path, proxy)
        characteristic.subscriber = lambda value: self._notified(characteristic, value)
        self._characteristics[path] = characteristic
        self._export(path, {CHARACTERISTIC: props})
        device.gatt.append(path)
        for descriptor in proxy.descriptors:
            desc_path = f"{path}/desc{descriptor.handle:04x}"
            self._descriptors[desc_path] = _Descriptor(device, desc_path, descriptor)
            self._export(desc_path, {DESCRIPTOR: {
                "UUID": Variant("s", _uuid(descriptor.type)), "Characteristic": Variant("o", path),
            }})
            device.gatt.append(desc_path)

    def _notified(self, characteristic: _Characteristic, value: bytes) -> None:
        logger.debug("notification on %s: %s", characteristic.path, bytes(value).hex())
        if characteristic.sessions or characteristic.starting:  # else nobody asked for it: dropped
            self._set(characteristic.path, CHARACTERISTIC, always=True, Value=Variant("ay", bytes(value)))

    # -- Device1 methods ------------------------------------------------------------------

    def _begin(self, device: _Device, kind: str) -> None:
        device.task = asyncio.current_task()
        device.kind = kind
        device.abort = ""

    def _end(self, device: _Device) -> None:
        device.task = None
        device.kind = ""

    def _aborted(self, device: _Device) -> bool:
        """Was this Connect/Pair cancelled by Disconnect, CancelPairing or RemoveDevice?"""
        task = asyncio.current_task()
        if device.abort and task is not None and hasattr(task, "uncancel"):
            task.uncancel()
            return True
        return False

    async def _connect(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        device = self._device(path)
        if device.task is not None:
            raise _error("InProgress", "In Progress")
        if device.connection is not None:
            if device.resolving is not None:  # a Pair's browse is still going on: it is this connection
                try:
                    await asyncio.shield(device.resolving)
                except (_LinkLost, BlueZError, BaseBumbleError):
                    raise _error("Failed", LINK_FAILED) from None
            return "", []
        self._begin(device, "connect")
        try:
            connection = await self._link(device)
            await self._secure(device, connection)
            device.resolving = self._spawn(self._resolve(device, connection))
            await asyncio.shield(device.resolving)
        except (_LinkLost, asyncio.TimeoutError, BaseBumbleError) as err:
            logger.info("connecting %s failed: %r", path, err)
            await self._drop_link(device)
            raise _error("Failed", LINK_FAILED) from None
        except asyncio.CancelledError:
            if not self._aborted(device):
                raise
            await self._drop_link(device)
            raise _error("Failed", LINK_FAILED) from None
        finally:
            device.resolving = None
            self._end(device)
        return "", []

    async def _disconnect(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        device = self._device(path)
        if device.task is not None and device.kind == "connect":
            device.abort = "disconnect"
            device.task.cancel()
        await self._drop_link(device)
        return "", []

    async def _pair(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        device = self._device(path)
        if device.task is not None:
            raise _error("InProgress", "In Progress")
        if self._bonded(device):
            raise _error("AlreadyExists", "Already Exists")
        agent = self._agents.get(msg.sender or "") or self._default_agent
        self._begin(device, "pair")
        linked_for_pairing = device.connection is None
        try:
            try:
                connection = device.connection or await self._link(device)
            except (_LinkLost, asyncio.TimeoutError, BaseBumbleError):
                await self._drop_link(device)
                raise _error("ConnectionAttemptFailed", "Page Timeout") from None
            self._pairing[connection.handle] = (agent, path)
            try:
                await _on_link(asyncio.wait_for(connection.pair(), PAIRING_TIMEOUT_S))
            except _LinkLost:
                raise _error("AuthenticationCanceled", "Authentication Canceled") from None
            except asyncio.TimeoutError:
                raise _error("AuthenticationTimeout", "Authentication Timeout") from None
            except asyncio.CancelledError:
                raise
            except BaseBumbleError as err:  # SMP Pairing Failed (wrong passkey, refused, ...)
                logger.info("pairing %s failed: %r", path, err)
                if linked_for_pairing:
                    await self._drop_link(device)
                raise _error("AuthenticationFailed", "Authentication Failed") from None
            finally:
                self._pairing.pop(connection.handle, None)
        except asyncio.CancelledError:
            if not self._aborted(device):
                raise
            if linked_for_pairing:
                await self._drop_link(device)
            raise _error("AuthenticationCanceled", "Authentication Canceled") from None
        finally:
            self._end(device)
        # The identity address came with the keys: the device is known by it from now on.
        device.address = connection.peer_address
        self._set(path, DEVICE, Address=Variant("s", _text(device.address)),
                  AddressType=Variant("s", "public" if device.address.is_public else "random"))
        self._set(path, DEVICE, Paired=Variant("b", True), Bonded=Variant("b", True))
        if device.connection is connection and not self._objects[path][DEVICE]["ServicesResolved"].value:
            device.resolving = self._spawn(self._browse_after_pairing(device, connection))
        return "", []

    async def _browse_after_pairing(self, device: _Device, connection: Connection) -> None:
        try:
            await self._resolve(device, connection)
        except _LinkLost:
            pass
        finally:
            if device.resolving is asyncio.current_task():
                device.resolving = None

    async def _cancel_pairing(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        device = self._device(path)
        if device.task is None or device.kind != "pair":
            raise _error("DoesNotExist", "Does Not Exist")
        device.abort = "cancel"
        device.task.cancel()
        return "", []

    # -- GATT methods ---------------------------------------------------------------------

    def _gatt_connection(self, device: _Device) -> Connection:
        if device.connection is None:
            raise _error("Failed", "Not connected")
        return device.connection

    async def _gatt(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await _on_link(awaitable)
        except att.ATT_Error as err:
            logger.info("ATT error %s", err)
            raise _att_error(err.error_code) from None
        except (_LinkLost, asyncio.TimeoutError, BaseBumbleError):
            raise _error("Failed", "Operation failed") from None

    @staticmethod
    def _offset(options: dict[str, Variant]) -> None:
        if "offset" in options and options["offset"].value:
            raise _error("NotSupported", "Operation is not supported")  # not needed by bleak

    async def _read_characteristic(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        return await self._read(self._characteristics[path], CHARACTERISTIC, msg)

    async def _read(self, attribute: _Characteristic | _Descriptor, interface: str,
                    msg: Message) -> tuple[str, list[Any]]:
        """ReadValue: one read at a time per attribute; the value is also announced as Value."""
        self._gatt_connection(attribute.device)
        self._offset(msg.body[0])
        if attribute.reading:
            raise _error("InProgress", "In Progress")
        attribute.reading = True
        try:
            value = bytes(await self._gatt(attribute.proxy.read_value()))
        finally:
            attribute.reading = False
        self._set(attribute.path, interface, always=True, Value=Variant("ay", value))
        return "ay", [value]

    async def _write_characteristic(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        characteristic = self._characteristics[path]
        connection = self._gatt_connection(characteristic.device)
        value, options = msg.body
        self._offset(options)
        kind = options["type"].value if "type" in options else ""
        properties = characteristic.proxy.properties
        if kind == "request" or (not kind and properties & 0x08):
            with_response = True
        elif kind in ("", "command") and properties & 0x04:
            with_response = False
        else:
            raise _error("NotSupported", "Operation is not supported")
        await self._write(characteristic, connection, bytes(value), with_response)
        return "", []

    async def _write(self, attribute: _Characteristic | _Descriptor, connection: Connection, value: bytes,
                     with_response: bool) -> None:
        """WriteValue: one write at a time per attribute."""
        if attribute.writing:
            raise _error("InProgress", "In Progress")
        attribute.writing = True
        try:
            await self._gatt(connection.gatt_client.write_value(attribute.proxy, value, with_response))
        finally:
            attribute.writing = False

    async def _start_notify(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        characteristic = self._characteristics[path]
        sender = msg.sender or ""
        if not characteristic.proxy.properties & 0x30:
            raise _error("NotSupported", "Operation is not supported")
        if sender in characteristic.sessions:
            raise _error("Failed", "Already notifying")
        if sender in characteristic.starting:
            raise _error("InProgress", "In Progress")
        connection = self._gatt_connection(characteristic.device)
        if not characteristic.sessions:
            characteristic.starting.add(sender)
            try:
                await self._gatt(connection.gatt_client.subscribe(characteristic.proxy, characteristic.subscriber))
            finally:
                characteristic.starting.discard(sender)
        characteristic.sessions.add(sender)
        self._set(path, CHARACTERISTIC, Notifying=Variant("b", True))
        return "", []

    async def _stop_notify(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        characteristic = self._characteristics[path]
        if msg.sender not in characteristic.sessions:
            raise _error("Failed", "No notify session started")
        characteristic.sessions.discard(msg.sender or "")
        await self._notify_sessions_changed(characteristic)
        return "", []

    async def _notify_sessions_changed(self, characteristic: _Characteristic) -> None:
        """The last notify session ended: clear the CCCD and Notifying."""
        if characteristic.sessions or self._characteristics.get(characteristic.path) is not characteristic:
            return
        self._set(characteristic.path, CHARACTERISTIC, Notifying=Variant("b", False))
        connection = characteristic.device.connection
        if connection is not None:
            with contextlib.suppress(BlueZError):
                await self._gatt(connection.gatt_client.unsubscribe(characteristic.proxy, characteristic.subscriber))

    async def _read_descriptor(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        return await self._read(self._descriptors[path], DESCRIPTOR, msg)

    async def _write_descriptor(self, path: str, msg: Message) -> tuple[str, list[Any]]:
        descriptor = self._descriptors[path]
        connection = self._gatt_connection(descriptor.device)
        value, options = msg.body
        self._offset(options)
        if descriptor.proxy.type == CCCD:  # through StartNotify/StopNotify only
            raise _error("NotPermitted", "Write not permitted")
        await self._write(descriptor, connection, bytes(value), True)
        self._set(path, DESCRIPTOR, always=True, Value=Variant("ay", bytes(value)))
        return "", []


# -- as a process -------------------------------------------------------------------------

async def _serve(bus: str, transport: str, bonds: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bluez = FakeBlueZ(bus, transport, bonds)
    try:
        await bluez.start()
        print("ready", flush=True)
        await stop.wait()
    finally:
        await bluez.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jikimi_host.sim.bluez",
                                     description="A fake BlueZ (org.bluez on D-Bus) over a Bumble host stack, for CI.")
    parser.add_argument("--bus", default=os.environ.get("DBUS_SYSTEM_BUS_ADDRESS"),
                        help="the D-Bus address to own org.bluez on (default: $DBUS_SYSTEM_BUS_ADDRESS)")
    parser.add_argument("--transport", required=True, help="Bumble HCI transport, e.g. tcp-client:127.0.0.1:PORT")
    parser.add_argument("--bonds", required=True, type=Path, help="the bond store (JSON), kept across restarts")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if not args.bus:
        parser.error("--bus is required when DBUS_SYSTEM_BUS_ADDRESS is not set")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # JIKIMI_BLUEZ_DEBUG=bumble.smp,bumble.device: those loggers at DEBUG, to see a rare failure
    for name in filter(None, os.environ.get("JIKIMI_BLUEZ_DEBUG", "").split(",")):
        logging.getLogger(name.strip()).setLevel(logging.DEBUG)
    asyncio.run(_serve(args.bus, args.transport, args.bonds))


if __name__ == "__main__":
    main()
