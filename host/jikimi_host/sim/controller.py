"""The virtual link's controllers: Bumble's `Controller` and `LocalLink`, adapted where they
differ from a real controller and radio. Each adaptation has a test in
tests/test_virtual_controller.py that fails without it; MicroPython's own two-device BLE tests
(jikimi_host.sim.referee) check the whole against NimBLE.

The link (every controller on it):

- `RadioLink.send_acl_data`: LE data carries the address the connection was made with as its
  source (Bumble uses the sender's random address, so a device on its public address or an RPA
  gets "no connection for 00:00:00:00:00:00").
- `RadioLink.send_advertising_pdu`: a central whose CONNECT_IND reaches no advertiser sees the
  connection fail to be established (0x3E) instead of hanging half-open; a controller taken off
  the link (a board without power) sends nothing any more. An ADV_IND from a plain Bumble
  controller carries that controller's scan response data, so an active scanner gets it.

A board's radio chip (`BoardController`, the controller NimBLE talks to):

- Public addresses always carry the public address type (an `hci.Address` made from a string
  is random by default, and then the two ends compute the SMP DHKey check over different
  address types: DHKEY_CHECK_FAILED).
- Data to the host is fragmented to the LE ACL buffer size the controller reported (Bumble
  sends it whole: "TODO: should fragment"), so large-MTU notifications and L2CAP channels reach
  NimBLE intact.
- Connection events: data and LL control PDUs go on air at the connection's next event
  (connection interval = the maximum the host allowed, as NimBLE's own link layer picks), and
  the host hears Number Of Completed Packets then, not at once. Bumble delivers everything
  instantly, so e.g. a peer's LL_TERMINATE_IND reached NimBLE in the same millisecond as the
  LE Connection Complete, and write-then-sleep timings came out unlike any radio's. Within an
  event each PDU takes its air time on the 1M PHY (a burst of ACL fragments arrives spread
  out, as from a radio, not all in one instant: NimBLE's L2CAP channel dropped when two SDUs
  arrived in the same instant). The peripheral reports the CONNECT_IND's interval, latency and
  timeout (Bumble: made-up values).
- Disconnect: Command Status "unknown connection identifier" for a handle that is not
  connected (Bumble says "pending" and then never completes, so NimBLE's `ble_hs_stop` waits
  forever); the initiator's Disconnection Complete comes once LL_TERMINATE_IND is on air, with
  reason "terminated by local host" (0x16).
- LE Create Connection Cancel ends the pending connection with LE Connection Complete
  "unknown connection identifier" (0x02), which NimBLE's connect timeout waits for (Bumble
  kept connecting in the background).
- HCI Reset ends the chip's links (its peers see a supervision timeout) and stops advertising,
  scanning and a pending connection, and empties the resolving list (Bumble keeps them all, so
  a host that starts again finds its old links still up).
- Every HCI command is answered: a command Bumble cannot parse, or one it has no handler for,
  gets "unknown HCI command" (Bumble answers neither, and the host waits for ever); LE Remove
  Device From Resolving List and LE Read Local/Peer Resolvable Address, which Bumble cannot
  parse, are carried out.
- Legacy advertising sends the PDU its type names: ADV_IND, ADV_DIRECT_IND (to its target
  only; high duty cycle ends after 1.28 s with "advertising timeout"), ADV_SCAN_IND,
  ADV_NONCONN_IND (Bumble sends ADV_IND for ADV_IND and nothing for the others), at the
  interval the host set (units of 0.625 ms; Bumble read them as ms). A CONNECT_IND is only
  accepted by a connectable advertiser (and, when directed, from its target).
- Scanning reports what the host asked for, in the events it asked with: legacy
  LE Advertising Reports for LE Set Scan Enable (Bumble sends extended reports whenever the
  controller supports extended advertising, which a host scanning with the legacy commands,
  as NimBLE here does, ignores), with the PDU's event type, a SCAN_RSP with the advertiser's
  scan response data only when scanning actively (Bumble sends the advertising data as a scan
  response even to a passive scanner), each advertiser once per scan when duplicates are
  filtered, and ADV_DIRECT_IND only to its target. Only connectable PDUs start a pending
  connection.
- Privacy (LL privacy, as the chip does it): the resolving list (LE Add/Remove Device To/From
  Resolving List, Clear, Set Address Resolution Enable, Set Privacy Mode, Set RPA Timeout).
  Own address types 2/3 advertise and connect on a resolvable private address generated (ah)
  from the local IRK of the list entry for the peer (for undirected advertising the entry
  whose peer is the advertising parameters' peer address, e.g. NimBLE's all-zero entry),
  regenerated after the RPA timeout; with no such entry, on the public (2) or random (3)
  address. With resolution enabled, a peer's RPA that a peer IRK in the list resolves is
  reported as that identity (address type 2/3), connections to an identity reach its RPA, and
  LE Enhanced Connection Complete (when the host unmasked it) carries the local and peer RPAs.
  In network privacy mode a peer with an IRK in the list is ignored on its identity address.

- `HciPty`: the controller's HCI UART is a pty (H4 framing) that a MicroPython Unix-port
  process opens as `MICROPYBTUART`. What the board has not read yet waits, as behind a UART's
  RTS/CTS flow control (it was dropped with "HCI pty is full" once the pty's buffer filled).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import os
import tty
from typing import Callable

from bumble import core, crypto, hci, ll
from bumble.controller import Connection, Controller, LegacyAdvertiser
from bumble.link import LocalLink
from bumble.transport.common import StreamPacketSource

logger = logging.getLogger(__name__)

POWER_LOSS_REASON = hci.HCI_CONNECTION_TIMEOUT_ERROR  # what a peer sees when a board dies

AdvertisingType = hci.HCI_LE_Set_Advertising_Parameters_Command.AdvertisingType
ReportType = hci.HCI_LE_Advertising_Report_Event.EventType
ExtReportType = hci.HCI_LE_Extended_Advertising_Report_Event.EventType
ZERO_IRK = bytes(16)
HIGH_DUTY_DIRECTED_TIMEOUT_S = 1.28  # Core Vol 6 Part B 4.4.2.4.3
ENHANCED_CONNECTION_COMPLETE_MASK = 1 << (hci.HCI_LE_ENHANCED_CONNECTION_COMPLETE_EVENT - 1)
RSSI = -50
UNIT_0_625_MS = 0.000625
UNIT_1_25_MS = 0.00125
HCI_PTY_BACKLOG_LIMIT = 1 << 20  # bytes waiting for a board that has stopped reading its UART
LL_DATA_PAYLOAD = 27  # bytes in an LL data PDU without data length extension
OWN_RPA_OR_PUBLIC = 0x02
OWN_RPA_OR_RANDOM = 0x03


# -----------------------------------------------------------------------------------------
# Advertising PDUs Bumble's ll module lacks. A plain Bumble controller matches on ll.AdvInd,
# so ScannableAdvInd still reaches it as ADV_IND; the other types it ignores.


@dataclasses.dataclass
class ScannableAdvInd(ll.AdvInd):
    """ADV_IND with the advertiser's scan response (what an active scanner's SCAN_REQ gets)."""

    scan_response: bytes = b""


@dataclasses.dataclass
class AdvScanInd(ll.AdvertisingPdu):
    """ADV_SCAN_IND: scannable, not connectable."""

    advertiser_address: hci.Address
    data: bytes
    scan_response: bytes = b""


LegacyPdu = ll.AdvInd | ll.AdvDirectInd | AdvScanInd | ll.AdvNonConnInd


def _report_type(pdu: LegacyPdu) -> int:
    if isinstance(pdu, ll.AdvInd):
        return ReportType.ADV_IND
    if isinstance(pdu, ll.AdvDirectInd):
        return ReportType.ADV_DIRECT_IND
    if isinstance(pdu, AdvScanInd):
        return ReportType.ADV_SCAN_IND
    return ReportType.ADV_NONCONN_IND


def _extended_report_type(pdu: LegacyPdu, scan_response: bool) -> int:
    bits = ExtReportType.LEGACY_ADVERTISING_PDU_USED
    if isinstance(pdu, (ll.AdvInd, ll.AdvDirectInd)):
        bits |= ExtReportType.CONNECTABLE_ADVERTISING
    if isinstance(pdu, (ll.AdvInd, AdvScanInd)):
        bits |= ExtReportType.SCANNABLE_ADVERTISING
    if isinstance(pdu, ll.AdvDirectInd):
        bits |= ExtReportType.DIRECTED_ADVERTISING
    if scan_response:
        bits |= ExtReportType.SCAN_RESPONSE
    return int(bits)


def _identity(address: hci.Address) -> hci.Address:
    """An identity address as reported after resolution (type 2 or 3)."""
    kind = hci.Address.PUBLIC_IDENTITY_ADDRESS if address.is_public else hci.Address.RANDOM_IDENTITY_ADDRESS
    return hci.Address(address.address_bytes, kind)


def _on_air(address: hci.Address) -> hci.Address:
    """The device address type (0 or 1) of an address that may carry an identity type."""
    kind = hci.Address.PUBLIC_DEVICE_ADDRESS if address.is_public else hci.Address.RANDOM_DEVICE_ADDRESS
    return hci.Address(address.address_bytes, kind)


# -----------------------------------------------------------------------------------------
# The link


class RadioLink(LocalLink):
    """Bumble's LocalLink with the radio's behaviour where Bumble's differs (module docstring)."""

    def send_acl_data(self, sender_controller: Controller, destination_address: hci.Address,
                      transport: core.PhysicalTransport, data: bytes) -> None:
        if transport != core.PhysicalTransport.LE:
            super().send_acl_data(sender_controller, destination_address, transport, data)
            return
        connection = sender_controller.le_connections.get(destination_address)
        if connection is None:
            return  # the link is gone: the data is lost, as on air
        destination = self.find_le_controller(destination_address)
        if destination is not None:
            source = connection.self_address
            asyncio.get_running_loop().call_soon(destination.on_link_acl_data, source, transport, data)

    def send_advertising_pdu(self, sender_controller: Controller, packet: ll.AdvertisingPdu) -> None:
        if sender_controller not in self.controllers:
            # A board that lost power is off the air: a late HCI command from its old host
            # (an advertising restart in flight at the power cut) must not make it a ghost.
            return
        if type(packet) is ll.AdvInd:  # a plain Bumble controller's: add its scan response
            packet = ScannableAdvInd(packet.advertiser_address, packet.data,
                                     bytes(sender_controller.le_legacy_advertiser.scan_response_data))
        super().send_advertising_pdu(sender_controller, packet)
        if isinstance(packet, ll.ConnectInd):
            # runs after the deliveries that super() queued
            asyncio.get_running_loop().call_soon(self._check_connect, sender_controller, packet)

    def _check_connect(self, central: Controller, packet: ll.ConnectInd) -> None:
        for controller in self.controllers:
            accepted = controller.le_connections.get(packet.initiator_address)
            if controller is not central and accepted is not None and accepted.self_address == packet.advertiser_address:
                return
        connection = central.le_connections.pop(packet.advertiser_address, None)
        if isinstance(connection, BoardConnection):
            connection.drop()
        if connection is not None:
            central.send_hci_packet(hci.HCI_Disconnection_Complete_Event(
                status=hci.HCI_SUCCESS, connection_handle=connection.handle,
                reason=hci.HCI_CONNECTION_FAILED_TO_BE_ESTABLISHED_ERROR))

    def detach(self, controller: Controller) -> None:
        """Take a controller off the air at once (power loss, a dongle pulled out): it stops
        advertising, and every peer sees its connection drop with a supervision timeout."""
        controller.le_legacy_advertiser.stop()
        for advertising_set in controller.advertising_sets.values():
            if advertising_set.timer_handle is not None:
                advertising_set.timer_handle.cancel()
            advertising_set.enabled = False
        for connection in list(controller.le_connections.values()):
            if isinstance(connection, BoardConnection):
                connection.drop()
            try:  # straight onto the link: a dead chip has no connection events
                self.send_ll_control_pdu(connection.self_address, connection.peer_address,
                                         ll.TerminateInd(POWER_LOSS_REASON))
            except Exception:  # the peer is gone too
                pass
        controller.le_connections.clear()
        if controller in self.controllers:
            self.remove_controller(controller)


# -----------------------------------------------------------------------------------------
# A board's radio chip


@dataclasses.dataclass
class ResolvingListEntry:
    """One entry of the controller's resolving list, and the RPAs last used with it."""

    peer_identity: hci.Address
    peer_irk: bytes
    local_irk: bytes
    privacy_mode: int = hci.HCI_LE_Set_Privacy_Mode_Command.PrivacyMode.NETWORK_PRIVACY_MODE
    local_rpa: hci.Address | None = None
    local_rpa_since: float = 0.0
    peer_rpa: hci.Address | None = None

    def resolves(self, address: hci.Address) -> bool:
        """Whether the peer IRK resolves `address` (an RPA)."""
        raw = address.address_bytes
        return self.peer_irk != ZERO_IRK and crypto.ah(self.peer_irk, raw[3:6]) == raw[0:3]


def air_time_s(payload_bytes: int) -> float:
    """On-air time of one LL data PDU on the 1M PHY and its acknowledgement: preamble, access
    address, header, payload and CRC at 8 us a byte, T_IFS, the peer's empty PDU, T_IFS."""
    return (10 + payload_bytes) * 8e-6 + 150e-6 + 80e-6 + 150e-6


@dataclasses.dataclass(eq=False)
class BoardConnection(Connection):
    """A connection whose traffic goes on air at connection events: `transmit` queues an
    action (an ACL fragment, an LL control PDU) for the next event after now; once an event
    has started, each PDU takes its air time, so a burst of fragments arrives spread out as
    from a radio (two SDUs of an L2CAP channel some milliseconds apart, not in one instant)."""

    interval_s: float = 0.05
    anchor: float = 0.0
    local_rpa: hci.Address | None = None
    peer_rpa: hci.Address | None = None
    queued: collections.deque = dataclasses.field(default_factory=collections.deque)
    event_timer: asyncio.TimerHandle | None = None

    def next_event(self, now: float) -> float:
        periods = max(1, math.floor((now - self.anchor) / self.interval_s) + 1)
        return self.anchor + periods * self.interval_s

    def transmit(self, action: Callable[[], None], payload_bytes: int = LL_DATA_PAYLOAD) -> None:
        self.queued.append((action, payload_bytes))
        if self.event_timer is None:
            loop = asyncio.get_running_loop()
            self.event_timer = loop.call_at(self.next_event(loop.time()), self._on_air)

    def _on_air(self) -> None:
        """Send the next queued PDU; the rest follow at air-time spacing in the same event."""
        self.event_timer = None
        if not self.queued:
            return
        action, payload_bytes = self.queued.popleft()
        controller = self.controller
        if controller.link is not None and controller in controller.link.controllers:
            action()
        if self.queued:
            loop = asyncio.get_running_loop()
            self.event_timer = loop.call_at(loop.time() + air_time_s(payload_bytes), self._on_air)

    def drop(self) -> None:
        """The connection is gone: what was queued is lost."""
        if self.event_timer is not None:
            self.event_timer.cancel()
            self.event_timer = None
        self.queued.clear()

    def on_hci_acl_data_packet(self, packet: hci.HCI_AclDataPacket) -> None:
        def send() -> None:
            self.assembler.feed_packet(packet)
            self.controller.send_hci_packet(hci.HCI_Number_Of_Completed_Packets_Event(
                connection_handles=[self.handle], num_completed_packets=[1]))
        self.transmit(send, len(packet.data))

    def send_ll_control_pdu(self, packet: ll.ControlPdu) -> None:
        self.transmit(lambda: Connection.send_ll_control_pdu(self, packet))


@dataclasses.dataclass
class BoardAdvertiser(LegacyAdvertiser):
    """Legacy advertising as a chip does it (module docstring)."""

    directed_timer: asyncio.TimerHandle | None = None

    @property
    def address(self) -> hci.Address:
        controller: BoardController = self.controller  # type: ignore[assignment]
        return controller.own_address(self.own_address_type, self.peer_address, self.peer_address_type)

    @property
    def connectable(self) -> bool:
        return self.advertising_type in (AdvertisingType.ADV_IND, AdvertisingType.ADV_DIRECT_IND,
                                         AdvertisingType.ADV_DIRECT_IND_LOW_DUTY)

    @property
    def directed(self) -> bool:
        return self.advertising_type in (AdvertisingType.ADV_DIRECT_IND, AdvertisingType.ADV_DIRECT_IND_LOW_DUTY)

    def _on_timer_fired(self) -> None:
        self.send_advertising_data()
        interval_s = max(self.advertising_interval_min * UNIT_0_625_MS, 0.02)
        if self.advertising_type == AdvertisingType.ADV_DIRECT_IND:
            interval_s = 0.01  # high duty cycle: every 3.75 ms on a chip; 10 ms is plenty here
        self.timer_handle = asyncio.get_running_loop().call_later(interval_s, self._on_timer_fired)

    def start(self) -> None:
        super().start()
        if self.advertising_type == AdvertisingType.ADV_DIRECT_IND:
            self.directed_timer = asyncio.get_running_loop().call_later(
                HIGH_DUTY_DIRECTED_TIMEOUT_S, self._directed_timed_out)

    def stop(self) -> None:
        super().stop()
        if self.directed_timer is not None:
            self.directed_timer.cancel()
            self.directed_timer = None

    def _directed_timed_out(self) -> None:
        self.directed_timer = None
        self.stop()
        controller: BoardController = self.controller  # type: ignore[assignment]
        controller.send_connection_failed(hci.HCI_ADVERTISING_TIMEOUT_ERROR, hci.Role.PERIPHERAL)

    def send_advertising_data(self) -> None:
        if not self.enabled:
            return
        address = self.address
        data, response = bytes(self.advertising_data), bytes(self.scan_response_data)
        kind = self.advertising_type
        if kind == AdvertisingType.ADV_IND:
            packet: ll.AdvertisingPdu = ScannableAdvInd(address, data, response)
        elif self.directed:
            packet = ll.AdvDirectInd(address, _on_air(self.peer_address_with_type))
        elif kind == AdvertisingType.ADV_SCAN_IND:
            packet = AdvScanInd(address, data, response)
        else:
            packet = ll.AdvNonConnInd(address, data)
        self.controller.send_advertising_pdu(packet)

    @property
    def peer_address_with_type(self) -> hci.Address:
        return hci.Address(self.peer_address.address_bytes, hci.AddressType(self.peer_address_type))


class BoardController(Controller):
    """A controller as a board's radio chip is one (module docstring)."""

    def __init__(self, name: str, link: RadioLink, public_address: str | None = None,
                 host_source: StreamPacketSource | None = None, host_sink: object | None = None) -> None:
        address = hci.Address(public_address, hci.Address.PUBLIC_DEVICE_ADDRESS) if public_address else None
        super().__init__(name, host_source=host_source, host_sink=host_sink, link=link, public_address=address)
        self.le_legacy_advertiser = BoardAdvertiser(self)
        self.resolving_list: list[ResolvingListEntry] = []
        self.le_rpa_timeout = 900  # seconds, the default after reset
        self.scan_with_extended_commands = False
        self.active_scan = False
        self.reported: set[tuple[bytes, int]] = set()

    # -- HCI commands: every one answered ---------------------------------------------------

    def on_hci_command_packet(self, command: hci.HCI_Command) -> None:
        name = command.name.lower()
        if type(command) is hci.HCI_Command:  # Bumble has no class for it: raw parameters
            raw_handler = getattr(self, f"_raw_{name}", None)
            status, payload = raw_handler(command.parameters) if raw_handler else (hci.HCI_UNKNOWN_HCI_COMMAND_ERROR, b"")
            self.send_hci_packet(hci.HCI_Command_Complete_Event(
                num_hci_command_packets=1, command_opcode=command.op_code,
                return_parameters=hci.HCI_GenericReturnParameters(data=bytes([status]) + payload)))
            return
        if not hasattr(self, f"on_{name}") and not isinstance(command, hci.HCI_SyncCommand):
            self._send_hci_command_status(hci.HCI_UNKNOWN_HCI_COMMAND_ERROR, command.op_code)
            return
        super().on_hci_command_packet(command)

    def on_hci_reset_command(self, command: hci.HCI_Reset_Command) -> hci.HCI_StatusReturnParameters:
        """A chip's reset: its links end (peers see a supervision timeout), advertising, scanning,
        a pending connection and the resolving list are gone (Bumble keeps them all)."""
        for connection in list(self.le_connections.values()):
            if isinstance(connection, BoardConnection):
                connection.drop()
            try:
                self.link.send_ll_control_pdu(connection.self_address, connection.peer_address,
                                              ll.TerminateInd(POWER_LOSS_REASON))
            except Exception:  # the peer is gone too
                pass
        self.le_connections.clear()
        self.le_legacy_advertiser.stop()
        self.resolving_list.clear()
        self.le_address_resolution = False
        self.le_rpa_timeout = 900
        self.le_scan_enable = False
        self.pending_le_connection = None
        return super().on_hci_reset_command(command)

    # -- addresses and privacy -------------------------------------------------------------

    def _entry_for(self, peer: hci.Address) -> ResolvingListEntry | None:
        for entry in self.resolving_list:
            if entry.peer_identity == peer and entry.peer_identity.is_public == peer.is_public:
                return entry
        return None

    def _local_rpa(self, entry: ResolvingListEntry) -> hci.Address:
        now = asyncio.get_running_loop().time()
        if entry.local_rpa is None or now - entry.local_rpa_since >= self.le_rpa_timeout:
            entry.local_rpa = hci.Address.generate_private_address(entry.local_irk)
            entry.local_rpa_since = now
        return entry.local_rpa

    def own_address(self, own_address_type: int, peer: hci.Address, peer_type: int | None = None) -> hci.Address:
        """The address this controller uses on air with `peer` for an own address type: an
        RPA from the local IRK of the peer's resolving list entry for types 2/3 (module
        docstring)."""
        if own_address_type in (OWN_RPA_OR_PUBLIC, OWN_RPA_OR_RANDOM):
            lookup = peer if peer_type is None else hci.Address(peer.address_bytes, hci.AddressType(peer_type))
            entry = self._entry_for(lookup)
            if entry is not None and entry.local_irk != ZERO_IRK:
                return self._local_rpa(entry)
        if own_address_type in (hci.OwnAddressType.PUBLIC, OWN_RPA_OR_PUBLIC):
            return self.public_address
        return self.random_address

    def resolve(self, address: hci.Address) -> tuple[hci.Address, hci.Address | None]:
        """What the host is told about an on-air peer address: (identity with type 2/3, the
        RPA) when address resolution is on and a peer IRK resolves it, else (address, None)."""
        if self.le_address_resolution and address.is_resolvable:
            for entry in self.resolving_list:
                if entry.resolves(address):
                    entry.peer_rpa = address
                    return _identity(entry.peer_identity), address
        return address, None

    def _hidden_by_network_privacy(self, address: hci.Address) -> bool:
        """Network privacy mode: a peer with an IRK in the list must not be accepted on its
        identity address."""
        if not self.le_address_resolution or address.is_resolvable:
            return False
        entry = self._entry_for(address)
        return (entry is not None and entry.peer_irk != ZERO_IRK
                and entry.privacy_mode == hci.HCI_LE_Set_Privacy_Mode_Command.PrivacyMode.NETWORK_PRIVACY_MODE)

    def _is_us(self, target: hci.Address) -> bool:
        """Whether a directed PDU's target address is this controller."""
        if target == self.public_address or (target == self.random_address and target.is_random):
            return True
        if target.is_resolvable:
            raw = target.address_bytes
            return any(entry.local_irk != ZERO_IRK and crypto.ah(entry.local_irk, raw[3:6]) == raw[0:3]
                       for entry in self.resolving_list)
        return False

    def on_hci_le_add_device_to_resolving_list_command(
            self, command: hci.HCI_LE_Add_Device_To_Resolving_List_Command) -> hci.HCI_StatusReturnParameters:
        identity = _on_air(command.peer_identity_address)
        if self._entry_for(identity) is not None:
            return hci.HCI_StatusReturnParameters(hci.HCI_INVALID_HCI_COMMAND_PARAMETERS_ERROR)
        if len(self.resolving_list) >= self.resolving_list_size:
            return hci.HCI_StatusReturnParameters(hci.HCI_MEMORY_CAPACITY_EXCEEDED_ERROR)
        self.resolving_list.append(ResolvingListEntry(identity, bytes(command.peer_irk), bytes(command.local_irk)))
        return hci.HCI_StatusReturnParameters(hci.HCI_SUCCESS)

    def _raw_hci_le_remove_device_from_resolving_list_command(self, parameters: bytes) -> tuple[int, bytes]:
        identity = hci.Address(parameters[1:7], hci.AddressType(parameters[0]))
        entry = self._entry_for(identity)
        if entry is None:
            return hci.HCI_UNKNOWN_CONNECTION_IDENTIFIER_ERROR, b""
        self.resolving_list.remove(entry)
        return hci.HCI_SUCCESS, b""

    def _raw_hci_le_read_local_resolvable_address_command(self, parameters: bytes) -> tuple[int, bytes]:
        entry = self._entry_for(hci.Address(parameters[1:7], hci.AddressType(parameters[0])))
        if entry is None:
            return hci.HCI_UNKNOWN_CONNECTION_IDENTIFIER_ERROR, bytes(6)
        return hci.HCI_SUCCESS, bytes(entry.local_rpa.address_bytes) if entry.local_rpa else bytes(6)

    def _raw_hci_le_read_peer_resolvable_address_command(self, parameters: bytes) -> tuple[int, bytes]:
        entry = self._entry_for(hci.Address(parameters[1:7], hci.AddressType(parameters[0])))
        if entry is None:
            return hci.HCI_UNKNOWN_CONNECTION_IDENTIFIER_ERROR, bytes(6)
        return hci.HCI_SUCCESS, bytes(entry.peer_rpa.address_bytes) if entry.peer_rpa else bytes(6)

    def on_hci_le_clear_resolving_list_command(self, command: hci.HCI_Command) -> hci.HCI_StatusReturnParameters:
        self.resolving_list.clear()
        return hci.HCI_StatusReturnParameters(hci.HCI_SUCCESS)

    def on_hci_le_set_privacy_mode_command(
            self, command: hci.HCI_LE_Set_Privacy_Mode_Command) -> hci.HCI_StatusReturnParameters:
        entry = self._entry_for(_on_air(command.peer_identity_address))
        if entry is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_UNKNOWN_CONNECTION_IDENTIFIER_ERROR)
        entry.privacy_mode = command.privacy_mode
        return hci.HCI_StatusReturnParameters(hci.HCI_SUCCESS)

    # -- advertising and scanning --------------------------------------------------------------

    def on_hci_le_set_scan_parameters_command(
            self, command: hci.HCI_LE_Set_Scan_Parameters_Command) -> hci.HCI_StatusReturnParameters:
        result = super().on_hci_le_set_scan_parameters_command(command)
        if result.status == hci.HCI_SUCCESS:
            self.active_scan = command.le_scan_type == 1
        return result

    def on_hci_le_set_extended_scan_parameters_command(
            self, command: hci.HCI_LE_Set_Extended_Scan_Parameters_Command) -> hci.HCI_StatusReturnParameters:
        self.active_scan = any(scan_type == 1 for scan_type in command.scan_types)
        return super().on_hci_le_set_extended_scan_parameters_command(command)

    def on_hci_le_set_scan_enable_command(
            self, command: hci.HCI_LE_Set_Scan_Enable_Command) -> hci.HCI_StatusReturnParameters:
        self.scan_with_extended_commands = False
        self.reported.clear()
        return super().on_hci_le_set_scan_enable_command(command)

    def on_hci_le_set_extended_scan_enable_command(
            self, command: hci.HCI_LE_Set_Extended_Scan_Enable_Command) -> hci.HCI_StatusReturnParameters:
        self.scan_with_extended_commands = True
        self.reported.clear()
        return super().on_hci_le_set_extended_scan_enable_command(command)

    def on_ll_advertising_pdu(self, packet: ll.AdvertisingPdu) -> None:
        if isinstance(packet, (ll.AdvInd, ll.AdvDirectInd, AdvScanInd, ll.AdvNonConnInd)):
            self._on_legacy_advertising_pdu(packet)
        else:
            super().on_ll_advertising_pdu(packet)

    def _on_legacy_advertising_pdu(self, pdu: LegacyPdu) -> None:
        if self._hidden_by_network_privacy(pdu.advertiser_address):
            return
        if isinstance(pdu, ll.AdvDirectInd) and not self._is_us(pdu.target_address):
            return
        reported, _rpa = self.resolve(pdu.advertiser_address)
        if self.le_scan_enable:
            self._report(pdu, reported, scan_response=False)
            if self.active_scan and isinstance(pdu, (ll.AdvInd, AdvScanInd)):
                self._report(pdu, reported, scan_response=True)
        pending = self.pending_le_connection
        if pending is not None and isinstance(pdu, (ll.AdvInd, ll.AdvDirectInd)):
            wanted = pending.peer_address
            if pdu.advertiser_address == wanted or (reported is not pdu.advertiser_address and reported == wanted):
                self.create_le_connection(pdu.advertiser_address)

    def _report(self, pdu: LegacyPdu, address: hci.Address, scan_response: bool) -> None:
        kind = ReportType.SCAN_RSP if scan_response else _report_type(pdu)
        if self.filter_duplicates:
            key = (bytes(address.address_bytes), int(kind))
            if key in self.reported:
                return
            self.reported.add(key)
        data = getattr(pdu, "scan_response", b"") if scan_response else getattr(pdu, "data", b"")
        if not self.scan_with_extended_commands:
            self.send_hci_packet(hci.HCI_LE_Advertising_Report_Event([hci.HCI_LE_Advertising_Report_Event.Report(
                event_type=kind, address_type=address.address_type, address=address, data=data, rssi=RSSI)]))
            return
        target = pdu.target_address if isinstance(pdu, ll.AdvDirectInd) else None
        self.send_hci_packet(hci.HCI_LE_Extended_Advertising_Report_Event([
            hci.HCI_LE_Extended_Advertising_Report_Event.Report(
                event_type=_extended_report_type(pdu, scan_response), address_type=address.address_type,
                address=address, primary_phy=hci.Phy.LE_1M, secondary_phy=0, advertising_sid=0xFF,
                tx_power=0x7F, rssi=RSSI, periodic_advertising_interval=0,
                direct_address_type=target.address_type if target else 0,
                direct_address=target or hci.Address.ANY, data=data)]))

    # -- connections -------------------------------------------------------------------------

    def _connection_complete(self, connection: BoardConnection, peer: hci.Address, interval: int,
                             latency: int, timeout: int) -> None:
        if self.le_event_mask & ENHANCED_CONNECTION_COMPLETE_MASK:
            self.send_hci_packet(hci.HCI_LE_Enhanced_Connection_Complete_Event(
                status=hci.HCI_SUCCESS, connection_handle=connection.handle, role=connection.role,
                peer_address_type=peer.address_type, peer_address=peer,
                local_resolvable_private_address=connection.local_rpa or hci.Address.ANY,
                peer_resolvable_private_address=connection.peer_rpa or hci.Address.ANY,
                connection_interval=interval, peripheral_latency=latency, supervision_timeout=timeout,
                central_clock_accuracy=0))
        else:
            self.send_hci_packet(hci.HCI_LE_Connection_Complete_Event(
                status=hci.HCI_SUCCESS, connection_handle=connection.handle, role=connection.role,
                peer_address_type=_on_air(peer).address_type, peer_address=_on_air(peer),
                connection_interval=interval, peripheral_latency=latency, supervision_timeout=timeout,
                central_clock_accuracy=0))

    def send_connection_failed(self, status: int, role: hci.Role) -> None:
        """LE (Enhanced) Connection Complete with an error status."""
        if self.le_event_mask & ENHANCED_CONNECTION_COMPLETE_MASK:
            self.send_hci_packet(hci.HCI_LE_Enhanced_Connection_Complete_Event(
                status=status, connection_handle=0, role=role, peer_address_type=0,
                peer_address=hci.Address.ANY, local_resolvable_private_address=hci.Address.ANY,
                peer_resolvable_private_address=hci.Address.ANY, connection_interval=0,
                peripheral_latency=0, supervision_timeout=0, central_clock_accuracy=0))
        else:
            self.send_hci_packet(hci.HCI_LE_Connection_Complete_Event(
                status=status, connection_handle=0, role=role, peer_address_type=0,
                peer_address=hci.Address.ANY, connection_interval=0, peripheral_latency=0,
                supervision_timeout=0, central_clock_accuracy=0))

    def _new_connection(self, role: hci.Role, self_address: hci.Address, peer_address: hci.Address,
                        interval: int) -> BoardConnection:
        connection = BoardConnection(
            controller=self, handle=self.allocate_connection_handle(), role=role,
            self_address=self_address, peer_address=peer_address, link=self.link,
            transport=core.PhysicalTransport.LE, link_type=hci.HCI_Connection_Complete_Event.LinkType.ACL,
            interval_s=max(interval, 6) * UNIT_1_25_MS, anchor=asyncio.get_running_loop().time())
        self.le_connections[peer_address] = connection
        return connection

    def create_le_connection(self, peer_address: hci.Address) -> None:
        """Initiate to the advertiser at on-air `peer_address` (the pending LE Create Connection)."""
        pending = self.pending_le_connection
        assert pending is not None
        if self.le_connections.get(peer_address):
            logger.error("connection for %s already exists", peer_address)
            return
        if isinstance(pending, hci.HCI_LE_Extended_Create_Connection_Command):
            interval = pending.connection_interval_maxs[0]
            latency, timeout = pending.max_latencies[0], pending.supervision_timeouts[0]
        else:
            interval, latency, timeout = (pending.connection_interval_max, pending.max_latency,
                                          pending.supervision_timeout)
        self.pending_le_connection = None
        reported, peer_rpa = self.resolve(peer_address)
        identity = _on_air(reported) if peer_rpa else peer_address
        self_address = self.own_address(pending.own_address_type, identity)
        connection = self._new_connection(hci.Role.CENTRAL, self_address, peer_address, interval)
        connection.peer_rpa = peer_rpa
        connection.local_rpa = self_address if pending.own_address_type in (OWN_RPA_OR_PUBLIC, OWN_RPA_OR_RANDOM) and self_address.is_resolvable else None
        self.send_advertising_pdu(ll.ConnectInd(initiator_address=self_address, advertiser_address=peer_address,
                                                interval=interval, latency=latency, timeout=timeout))
        self._connection_complete(connection, reported, interval, latency, timeout)

    def on_le_connect_ind(self, packet: ll.ConnectInd) -> None:
        advertiser = self.le_legacy_advertiser
        assert isinstance(advertiser, BoardAdvertiser)
        if not (advertiser.enabled and advertiser.address == packet.advertiser_address):
            super().on_le_connect_ind(packet)  # an extended advertising set, or not for us
            return
        if not advertiser.connectable:
            return
        initiator = packet.initiator_address
        reported, peer_rpa = self.resolve(initiator)
        if advertiser.directed:
            target = _on_air(advertiser.peer_address_with_type)
            if initiator != target and _on_air(reported) != target:
                return
        connection = self._new_connection(hci.Role.PERIPHERAL, packet.advertiser_address, initiator, packet.interval)
        connection.peer_rpa = peer_rpa
        connection.local_rpa = packet.advertiser_address if packet.advertiser_address.is_resolvable else None
        advertiser.stop()
        self._connection_complete(connection, reported, packet.interval, packet.latency, packet.timeout)

    def on_hci_le_create_connection_cancel_command(
            self, command: hci.HCI_LE_Create_Connection_Cancel_Command) -> hci.HCI_StatusReturnParameters:
        if self.pending_le_connection is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        # after the Command Complete that this return value becomes
        asyncio.get_running_loop().call_soon(
            self.send_connection_failed, hci.HCI_UNKNOWN_CONNECTION_IDENTIFIER_ERROR, hci.Role.CENTRAL)
        return hci.HCI_StatusReturnParameters(hci.HCI_SUCCESS)

    def on_hci_le_connection_update_command(self, command: hci.HCI_LE_Connection_Update_Command) -> None:
        connection = self.find_le_connection_by_handle(command.connection_handle)
        if isinstance(connection, BoardConnection):
            self._reanchor(connection, command.connection_interval_max)
        super().on_hci_le_connection_update_command(command)

    def on_ll_control_pdu(self, sender_address: hci.Address, packet: ll.ControlPdu) -> None:
        connection = self.le_connections.get(sender_address)
        if isinstance(packet, ll.ConnectionUpdateInd) and isinstance(connection, BoardConnection):
            self._reanchor(connection, packet.interval)
        super().on_ll_control_pdu(sender_address, packet)

    @staticmethod
    def _reanchor(connection: BoardConnection, interval: int) -> None:
        connection.interval_s = max(interval, 6) * UNIT_1_25_MS
        connection.anchor = asyncio.get_running_loop().time()

    def on_hci_disconnect_command(self, command: hci.HCI_Disconnect_Command) -> None:
        handle = command.connection_handle
        connection = self.find_le_connection_by_handle(handle)
        if not isinstance(connection, BoardConnection):
            known = (self.find_connection_by_handle(handle) or self.find_classic_sco_link_by_handle(handle)
                     or self.find_iso_link_by_handle(handle))
            if known is None:
                self._send_hci_command_status(hci.HCI_UNKNOWN_CONNECTION_IDENTIFIER_ERROR, command.op_code)
            else:
                super().on_hci_disconnect_command(command)
            return
        self._send_hci_command_status(hci.HCI_COMMAND_STATUS_PENDING, command.op_code)

        def terminate() -> None:
            Connection.send_ll_control_pdu(connection, ll.TerminateInd(command.reason))
            self.on_le_disconnected(connection, hci.HCI_CONNECTION_TERMINATED_BY_LOCAL_HOST_ERROR)
        connection.transmit(terminate)

    def on_le_disconnected(self, connection: Connection, reason: int) -> None:
        if self.le_connections.get(connection.peer_address) is not connection:
            return  # already gone (both ends terminated at once)
        del self.le_connections[connection.peer_address]
        if isinstance(connection, BoardConnection):
            connection.drop()
        self.send_hci_packet(hci.HCI_Disconnection_Complete_Event(
            status=hci.HCI_SUCCESS, connection_handle=connection.handle, reason=reason))

    # -- data to the host -------------------------------------------------------------------

    def on_link_acl_data(self, sender_address: hci.Address, transport: core.PhysicalTransport,
                         data: bytes) -> None:
        connection = (self.le_connections if transport == core.PhysicalTransport.LE
                      else self.classic_connections).get(sender_address)
        if connection is None:
            logger.warning("no connection for %s", sender_address)
            return
        size = self.le_acl_data_packet_length if transport == core.PhysicalTransport.LE else self.acl_data_packet_length
        for at in range(0, max(len(data), 1), size):
            chunk = data[at:at + size]
            first = hci.HCI_ACL_PB_FIRST_FLUSHABLE if at == 0 else hci.HCI_ACL_PB_CONTINUATION
            self.send_hci_packet(hci.HCI_AclDataPacket(connection.handle, first, 0, len(chunk), chunk))


class HciPty:
    """A pty whose far end is a controller's HCI UART (H4). `path` is what the board opens.
    The slave stays open here too, so the master never sees a hang-up while the board
    process restarts; `close()` ends it. Like a UART with RTS/CTS flow control, what the board
    has not read yet waits here (a full pty buffer delays packets, it does not lose them)."""

    def __init__(self, on_packet: Callable[[bytes], None] | None = None) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.source = StreamPacketSource()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.master, self._readable)
        self._pending = bytearray()
        self._closed = False

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        self.source.data_received(data)

    def on_packet(self, packet: bytes) -> None:
        """The controller's sink: HCI packets to the board."""
        if self._closed:
            return
        if len(self._pending) > HCI_PTY_BACKLOG_LIMIT:
            logger.warning("HCI pty %s: the board has not read %d bytes; a packet is lost",
                           self.path, len(self._pending))
            return
        if self._pending:  # behind what is already waiting
            self._pending += packet
            return
        self._pending += packet
        self._flush()
        if self._pending and not self._closed:
            self._loop.add_writer(self.master, self._writable)

    def _flush(self) -> None:
        while self._pending:
            try:
                written = os.write(self.master, self._pending)
            except BlockingIOError:
                return
            except OSError:  # the pty is gone
                self._pending.clear()
                return
            del self._pending[:written]

    def _writable(self) -> None:
        self._flush()
        if not self._pending:
            self._loop.remove_writer(self.master)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.master)
        self._loop.remove_writer(self.master)
        self._pending.clear()
        os.close(self.master)
        os.close(self._slave)


__all__ = ["POWER_LOSS_REASON", "AdvScanInd", "BoardAdvertiser", "BoardConnection", "BoardController",
           "HciPty", "RadioLink", "ResolvingListEntry", "ScannableAdvInd"]
