"""The BLE link (PROTOCOL.md): GATT service, pairing policy, bonds, delivery, commands.

- Pairing only inside the device's pairing window: outside it a passkey request is answered
  with a random passkey, so pairing fails at once. LE Secure Connections, MITM, bonding,
  DisplayOnly with the provisioned passkey.
- Bonds and the per-phone command counters live in the BondStore (atomic file).
- Frames go out only on an encrypted, authenticated link; unacknowledged journal events are
  sent on every such connection and again every `resend_ms` (no reliance on CCCDs).
- A STATUS frame (the heartbeat) goes to each authenticated phone at once and every
  `heartbeat_ms`, so the phone knows the device is alive.
- Advertising: fast for FAST_ADV_MS after boot or any activity, and while events are pending or
  pairing is open; slow otherwise. No name, no personal data; the service UUID only while pairing.
- The IRQ handler only records what happened; the app's task does the work (`pump`).
"""

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


import os
import time

import bluetooth

from jikimi import protocol as p
from jikimi import ticks

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_ENCRYPTION_UPDATE = const(28)
_IRQ_GET_SECRET = const(29)
_IRQ_SET_SECRET = const(30)
_IRQ_PASSKEY_ACTION = const(31)
_PASSKEY_ACTION_DISPLAY = const(3)
_SECRET_OUR_KEYS = const(1)  # NimBLE's store types, as the secret IRQs pass them
_SECRET_PEER_KEYS = const(2)
_IO_DISPLAY_ONLY = const(0)
_ADV_FAST_US = const(100000)
_ADV_SLOW_US = const(1000000)
RESEND_MS = const(5000)
FAST_ADV_MS = const(30000)


def _adv_payload(with_service):
    """Flags only, or flags and the service UUID (only while pairing is open: no beacon)."""
    payload = bytearray(b"\x02\x01\x06")
    if with_service:
        uuid = bytes(reversed(bytes.fromhex(p.SERVICE_UUID.replace("-", ""))))
        payload += bytes((len(uuid) + 1, 0x07)) + uuid
    return bytes(payload)


class Conn:
    def __init__(self, handle, peer):
        self.handle = handle
        self.peer = peer  # hex of the peer address, the key for its command counter
        self.authenticated = False
        self.sent = {}  # seq -> tick of last send
        self.status_at = None  # tick of the last heartbeat STATUS


class Link:
    def __init__(self, device, journal, bonds, passkey, log, now_ms, heartbeat_ms=3600000, wake=None):
        self.device = device
        # IRQ-safe callback: a command or a new secure link wants pump() now, not on the next idle tick
        self.wake = wake
        self.heartbeat_ms = heartbeat_ms
        self._fast_until = ticks.add(now_ms, FAST_ADV_MS)
        self.active_at = now_ms  # time.ticks_ms() of the last connection or command
        self.journal = journal
        self.bonds = bonds
        self.passkey = passkey
        self.log = log
        self.conns = {}
        self._writes = []  # (conn handle, frame) waiting for pump()
        self._advertising = None
        self._new_bond = False
        self.ble = bluetooth.BLE()
        self.ble.irq(self._irq)
        self.ble.active(True)
        self.ble.config(bond=True, mitm=True, le_secure=True, io=_IO_DISPLAY_ONLY, addr_mode=2)
        ((self.h_events, self.h_commands, self.h_info),) = self.ble.gatts_register_services((
            (bluetooth.UUID(p.SERVICE_UUID), (
                (bluetooth.UUID(p.EVENTS_UUID), p.EVENTS_FLAGS),
                (bluetooth.UUID(p.COMMANDS_UUID), p.COMMANDS_FLAGS),
                (bluetooth.UUID(p.INFO_UUID), p.INFO_FLAGS),
            )),
        ))
        v = device.fw_version
        self.ble.gatts_write(self.h_info, p.encode(p.Message(
            p.INFO, fw_major=v[0], fw_minor=v[1], fw_patch=v[2], max_frame=p.MAX_FRAME)))
        self.ble.gatts_set_buffer(self.h_commands, p.MAX_FRAME + 4)
        self.advertise()

    # -- IRQ: record only ---------------------------------------------------------------

    def _irq(self, event, data):
        if event == _IRQ_CENTRAL_CONNECT:
            handle, _, addr = data
            self.conns[handle] = Conn(handle, bytes(addr).hex())
            self.active_at = time.ticks_ms()
            self._advertising = None
            self.log("ble", "connect", conn=handle)
        elif event == _IRQ_CENTRAL_DISCONNECT:
            self.conns.pop(data[0], None)
            self.log("ble", "disconnect", conn=data[0])
            self.advertise()
        elif event == _IRQ_GATTS_WRITE:
            handle, attr = data
            if attr == self.h_commands:
                self._writes.append((handle, self.ble.gatts_read(attr)))
                if self.wake is not None:
                    self.wake()
        elif event == _IRQ_ENCRYPTION_UPDATE:
            handle, encrypted, authenticated, bonded, _ = data
            conn = self.conns.get(handle)
            if conn is not None:
                conn.authenticated = bool(encrypted and authenticated)
                conn.sent = {}  # a new secure link: everything pending goes again
                conn.status_at = None
            self.log("ble", "secure", conn=handle, authenticated=int(bool(authenticated)), bonded=int(bool(bonded)))
            if self.wake is not None:
                self.wake()  # pending events and the STATUS go out at once
        elif event == _IRQ_PASSKEY_ACTION:
            handle, action, _ = data
            if action == _PASSKEY_ACTION_DISPLAY:
                if self.device.pairing_open:
                    self.ble.gap_passkey(handle, action, self.passkey)
                else:
                    # Outside the pairing window: a passkey nobody knows makes pairing fail.
                    self.ble.gap_passkey(handle, action, int.from_bytes(os.urandom(3), "little") % 1000000)
                    self.log("ble", "pairing_refused", conn=handle)
        elif event == _IRQ_SET_SECRET:
            sec_type, key, value = data
            if sec_type in (_SECRET_OUR_KEYS, _SECRET_PEER_KEYS) and value is not None:
                self._new_bond = True  # keys written: a phone bonded (not just reconnected)
            return self.bonds.set(sec_type, key, value)
        elif event == _IRQ_GET_SECRET:
            sec_type, index, key = data
            return self.bonds.get(sec_type, index, key)
        return None

    # -- work (app task) ----------------------------------------------------------------

    def touch(self, now_ms):
        """Something happened (an input, a command): advertise fast for a while."""
        self._fast_until = ticks.add(now_ms, FAST_ADV_MS)
        self.active_at = now_ms

    def writes_pending(self):
        return bool(self._writes)

    def advertise(self, now_ms=None):
        pairing = self.device.pairing_open
        fast = pairing or bool(self.journal.depth)
        if now_ms is not None and self._fast_until is not None:
            if ticks.reached(now_ms, self._fast_until):
                self._fast_until = None  # over, so an old tick cannot wrap around
            else:
                fast = True
        mode = (pairing, fast)
        if mode == self._advertising or self.conns:
            return
        self._advertising = mode
        interval = _ADV_FAST_US if mode[1] else _ADV_SLOW_US
        self.ble.gap_advertise(interval, _adv_payload(pairing))

    def _notify(self, conn, frame):
        try:
            self.ble.gatts_notify(conn.handle, self.h_events, frame)
            return True
        except OSError:
            return False

    def pump(self, now_ms):
        """Handle received commands, deliver pending events, keep advertising right."""
        while self._writes:
            handle, frame = self._writes.pop(0)
            self._command(handle, frame, now_ms)
        pending = self.journal.pending()
        for conn in list(self.conns.values()):
            if not conn.authenticated:
                continue
            if conn.status_at is None or ticks.diff(now_ms, conn.status_at) >= self.heartbeat_ms:
                if self._notify(conn, p.encode(self.device.status(now_ms))):
                    conn.status_at = now_ms
            for seq, frame in pending:
                last = conn.sent.get(seq)
                if last is None or ticks.diff(now_ms, last) >= RESEND_MS:
                    if self._notify(conn, frame):
                        conn.sent[seq] = now_ms
            if len(conn.sent) > len(pending):  # forget acknowledged events: no growth
                keep = {}
                for seq, _ in pending:
                    if seq in conn.sent:
                        keep[seq] = conn.sent[seq]
                conn.sent = keep
        if self.device.forget_phones:
            self.device.forget_phones = False
            self.bonds.forget_all()
            for handle in list(self.conns):
                try:
                    self.ble.gap_disconnect(handle)
                except OSError:
                    pass
            self.log("ble", "bonds_forgotten")
        if self.device.pairing_open and self._new_bond:
            # Close the window once a phone has bonded; a bonded phone reconnecting does not.
            for conn in self.conns.values():
                if conn.authenticated:
                    self._new_bond = False
                    self.device.pairing_done(now_ms)
                    break
        self.advertise(now_ms)

    def stop(self):
        """Before a deep sleep: drop the phones politely and switch the radio off."""
        for handle in list(self.conns):
            try:
                self.ble.gap_disconnect(handle)
            except OSError:
                pass
        self.ble.gap_advertise(None)
        self.ble.active(False)

    def _command(self, handle, frame, now_ms):
        conn = self.conns.get(handle)
        if conn is None:
            return
        try:
            cmd = p.decode(frame)
        except p.ProtocolError as err:
            self._reply(conn, p.result(0, 0, err.code))
            self.log("ble", "bad_frame", conn=handle, error=p.error_name(err.code))
            return
        if cmd.klass != "command":
            self._reply(conn, p.result(cmd.type, 0, p.E_UNKNOWN_TYPE))
            return
        self.touch(now_ms)
        last = self.bonds.counter(conn.peer)
        code = p.admit(cmd, conn.authenticated, last)
        if code == p.E_OK:
            self.bonds.accept_counter(conn.peer, cmd.counter)  # before acting: replay-proof
            code = self.device.command(cmd, now_ms)
        self._reply(conn, p.result(cmd.type, cmd.counter, code, last if code == p.E_REPLAYED else 0))
        self.log("ble", "command", conn=handle, type=cmd.name, code=p.error_name(code))
        if code == p.E_OK and cmd.type == p.REQUEST_STATUS:
            self._reply(conn, self.device.status(now_ms))

    def _reply(self, conn, msg):
        if conn.authenticated:  # frames go only to an authenticated phone (PROTOCOL.md §2.2)
            self._notify(conn, p.encode(msg))
