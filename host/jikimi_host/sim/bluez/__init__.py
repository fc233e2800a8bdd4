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

The parts: `fake` (FakeBlueZ: the Bumble stack and the parts wired together), `objects` (the D-Bus
object tree, properties, signals, dispatch), `agent` (AgentManager1, Agent1), `adapter` (Adapter1,
discovery, advertisements), `device` (Device1 objects), `link` (Connect, Pair, Disconnect,
RemoveDevice), `gatt` (the GATT objects), `dbus_api` (names and errors), `system_bus` (a private
dbus-daemon), `tasks` (background tasks, lost links).

Run as a process (prints `ready` once it owns the name and the controller is powered; exits
cleanly on SIGTERM):

    python -m jikimi_host.sim.bluez --bus ADDRESS --transport tcp-client:127.0.0.1:PORT --bonds bonds.json
"""
from jikimi_host.sim.bluez.adapter import ADAPTER_ADDRESS
from jikimi_host.sim.bluez.dbus_api import ADAPTER_PATH, BLUEZ, BlueZError
from jikimi_host.sim.bluez.fake import FakeBlueZ
from jikimi_host.sim.bluez.system_bus import start_system_bus

__all__ = ["ADAPTER_ADDRESS", "ADAPTER_PATH", "BLUEZ", "BlueZError", "FakeBlueZ", "start_system_bus"]
