"""The BLE link (PROTOCOL.md): GATT service, pairing policy, bonds, delivery, commands.

- Pairing only inside the device's pairing window, by LE Secure Connections passkey entry
  (MITM, bonding, DisplayOnly, the provisioned passkey), one attempt at a time. Outside the
  window, while another pairing runs, while locked out after a failed attempt, or once the
  passkey is retired, a passkey request is answered with a random passkey: pairing fails and
  tells nothing. A failed attempt locks pairing out for `lockout_ms` (then twice that); after
  MAX_WINDOW_FAILURES the window closes, and after PASSKEY_FAILURE_LIMIT failures in all the
  passkey is retired until a new one is provisioned (PROTOCOL.md §2.3).
- Only authenticated bonds are kept: the stack's secrets wait in RAM (BondStore.pending) until
  their pairing gives an encrypted, authenticated, bonded link; anything else (Just Works,
  legacy without MITM, a failed passkey) is thrown away and its link dropped.
- A link is *trusted* once encrypted with a kept bond's key. Only trusted links get frames and
  may command; the command counter belongs to the bond.
- Strangers cannot hold the bell: a link not trusted within UNTRUSTED_MS (PAIRING_MS while it
  pairs) is dropped, the bell keeps advertising while fewer than MAX_CONNS links are up, and
  when they are all taken the oldest untrusted one makes room.
- Unacknowledged journal events are sent on every trusted connection and again every
  RESEND_MS (no reliance on CCCDs). A STATUS frame (the heartbeat) goes to each trusted phone at
  once and every `heartbeat_ms`. NimBLE tells the app nothing of subscriptions and sends a
  notification whether or not the phone has subscribed yet, so what goes out at once may be
  missed: until the phone's first command on the link, events are resent every
  UNHEARD_RESEND_MS, and that command (written after subscribing, PROTOCOL.md §2.2) sends every
  pending event and a STATUS again at once.
- Advertising: fast for FAST_ADV_MS after boot or any activity, and while events are pending or
  pairing is open; slow otherwise. No name, no personal data; the service UUID only while pairing.
- The IRQ handler only records what happened and wakes the app's task, which does the work
  (`pump`): no flash writes, no logging (its log lines wait in a ring that `pump` prints, in
  order and with the IRQ's times), nothing but answering the stack where it must be answered
  at once (the passkey, the bond secrets from RAM, BondStore). Command writes wait in a ring
  of WRITES_CAPACITY; a write that finds it full is dropped and counted (STATUS `dropped`, a
  `commands_dropped` line): that command gets no RESULT, and the phone sends it again
  (PROTOCOL.md §12).
"""

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


import hashlib
import os
import time

import bluetooth

from jikimi import protocol as p
from jikimi import ticks
from jikimi.ring import Ring

_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_ENCRYPTION_UPDATE = const(28)
_IRQ_GET_SECRET = const(29)
_IRQ_SET_SECRET = const(30)
_IRQ_PASSKEY_ACTION = const(31)
_PASSKEY_ACTION_DISPLAY = const(3)
_PASSKEY_ACTION_NUMERIC_COMPARISON = const(4)
_SECRET_OUR_KEYS = const(1)  # NimBLE's store types, as the secret IRQs pass them
_SECRET_PEER_KEYS = const(2)
_IO_DISPLAY_ONLY = const(0)
_ADV_FAST_US = const(100000)
_ADV_SLOW_US = const(1000000)
RESEND_MS = const(5000)
UNHEARD_RESEND_MS = const(1000)  # until the phone's first command: it may not have subscribed yet
FAST_ADV_MS = const(30000)
MAX_CONNS = const(4)  # NimBLE's BLE_MAX_CONNECTIONS in MicroPython (ESP32 and the Unix port)
UNTRUSTED_MS = const(10000)  # a link that is not trusted by then is dropped
PAIRING_MS = const(60000)  # a link in passkey pairing: time to type the passkey
# The Events value (STATUS) is re-encoded when an event or an ack changed the journal, a command
# was taken or the pairing window opened or closed, and else once a second (uptime, battery):
# not on every pump, which runs every 20 ms while the siren plays.
STATUS_REFRESH_MS = const(1000)
MAX_WINDOW_FAILURES = const(3)  # failed attempts that close the pairing window
PASSKEY_FAILURE_LIMIT = const(3)  # failed attempts in all that retire the passkey
# Command writes between two pumps. Commands is write-with-response: a phone has one write in
# flight and gets the next out about once per connection event, while a pump follows a write
# within milliseconds (tens at worst, behind a flash write): 2 per link for MAX_CONNS links.
# A write without response (NimBLE lets it through) can outrun that: it is dropped, counted.
WRITES_CAPACITY = const(8)
# IRQ log lines between two pumps: connect, secure, pairing and disconnect of each of the
# MAX_CONNS links; a flood of strangers beyond that loses lines, counted (`log_dropped`).
IRQ_LOG_CAPACITY = const(16)


def _adv_payload(with_service):
    """Flags only, or flags and the service UUID (only while pairing is open: no beacon)."""
    payload = bytearray(b"\x02\x01\x06")
    if with_service:
        uuid = bytes(reversed(bytes.fromhex(p.uuid(p.UUID_SERVICE).replace("-", ""))))
        payload += bytes((len(uuid) + 1, 0x07)) + uuid
    return bytes(payload)


class Conn:
    def __init__(self, handle, key, now_ms):
        self.handle = handle
        self.key = key  # hex of the peer's ble_addr_t (type, 6 bytes): its bond's key once trusted
        self.since = now_ms  # connected, or started passkey pairing: when a stranger's time runs out
        self.encrypted = False
        self.trusted = False  # encrypted with an authenticated key of a kept bond: may command
        self.paired = False  # passkey pairing gave an authenticated, bonded link: commit its keys
        self.drop = None  # why the app task must drop this link
        self.sent = {}  # seq -> tick of last send
        self.status_at = None  # tick of the last heartbeat STATUS
        self.heard = False  # the phone wrote a command on this secure link: it has subscribed


def _addr_key(addr_type, addr):
    """The bond key NimBLE uses for a peer: ble_addr_t, the type then the address little-endian
    (the IRQs give the address in display order)."""
    return (bytes((addr_type,)) + bytes(reversed(bytes(addr)))).hex()


def _passkey_tag(passkey):
    """Names the provisioned passkey in bonds.json without writing it there again."""
    return hashlib.sha256(b"jikimi passkey %06d" % passkey).digest()[:4].hex()


class Link:
    def __init__(self, device, journal, bonds, passkey, log, now_ms, heartbeat_ms=3600000, wake=None,
                 lockout_ms=5000):
        self.device = device
        self.lockout_ms = lockout_ms
        # IRQ-safe callback: a command or a new secure link wants pump() now, not on the next idle tick
        self.wake = wake
        self.heartbeat_ms = heartbeat_ms
        self._fast_until = ticks.add(now_ms, FAST_ADV_MS)
        self.active_at = now_ms  # time.ticks_ms() of the last connection or command
        self.journal = journal
        self.bonds = bonds
        self.passkey = passkey
        self._tag = _passkey_tag(passkey)
        self.log = log
        self.conns = {}
        self._writes = Ring(WRITES_CAPACITY)  # (conn handle, frame) waiting for pump()
        self._writes_seen = 0  # self._writes.dropped already counted in the device
        self._irq_log = Ring(IRQ_LOG_CAPACITY)  # (msg, tick, conn, a, b): lines pump() prints
        self._irq_log_seen = 0
        self._events_value = b""  # what the Events attribute holds (pump keeps it the STATUS)
        self._events_at = 0  # when it was last encoded, and the journal then (next seq, depth)
        self._events_seq = 0
        self._events_depth = 0
        self._events_dirty = True  # a command or the pairing window changed what STATUS says
        self._advertising = None
        self._pairing = None  # the handle of the one link in passkey pairing, if any
        self._attempt_failed = False  # that pairing failed (IRQ) and is not counted yet
        self._paired_gone = None  # the pairing's Conn if it bonded and left before pump() ran
        self._window_open = False
        self._window_failures = 0
        self._locked_until = None  # no passkey is shown before this tick (after a failure)
        self.ble = bluetooth.BLE()
        self.ble.irq(self._irq)
        self.ble.active(True)
        self.ble.config(bond=True, mitm=True, le_secure=True, io=_IO_DISPLAY_ONLY, addr_mode=2)
        if not bonds.commit_own():  # our IRK, made by the stack as it started
            log("ble", "irk_not_stored")
        if self.passkey_retired():
            log("ble", "passkey_retired", failures=bonds.passkey_failures(self._tag))
        ((self.h_events, self.h_commands, self.h_info),) = self.ble.gatts_register_services((
            (bluetooth.UUID(p.uuid(p.UUID_SERVICE)), (
                (bluetooth.UUID(p.uuid(p.UUID_EVENTS)), p.EVENTS_FLAGS),
                (bluetooth.UUID(p.uuid(p.UUID_COMMANDS)), p.COMMANDS_FLAGS),
                (bluetooth.UUID(p.uuid(p.UUID_INFO)), p.INFO_FLAGS),
            )),
        ))
        v = device.fw_version
        self.ble.gatts_write(self.h_info, p.encode(p.Message(
            p.INFO, fw_major=v[0], fw_minor=v[1], fw_patch=v[2], max_frame=p.MAX_FRAME)))
        self.ble.gatts_set_buffer(self.h_commands, p.MAX_FRAME + 4)
        self.advertise()

    def passkey_retired(self):
        return self.bonds.passkey_failures(self._tag) >= PASSKEY_FAILURE_LIMIT

    # -- IRQ: record only ---------------------------------------------------------------

    def _wake(self):
        if self.wake is not None:
            self.wake()

    def _irq(self, event, data):
        if event == _IRQ_CENTRAL_CONNECT:
            handle, addr_type, addr = data
            now = time.ticks_ms()
            self.conns[handle] = Conn(handle, _addr_key(addr_type, addr), now)
            self.active_at = now
            self._advertising = None  # the stack stopped advertising for this connection
            self._irq_log.push(("connect", now, handle, None, None))
            self._wake()  # room for the next one: advertise again (or make room)
        elif event == _IRQ_CENTRAL_DISCONNECT:
            conn = self.conns.pop(data[0], None)
            if data[0] == self._pairing:
                if conn is not None and conn.paired:
                    self._paired_gone = conn  # bonded, then left at once: its keys are still kept
                else:
                    self._pairing = None
                    self._attempt_failed = True  # left before an authenticated bond: a failed attempt
            self._irq_log.push(("disconnect", time.ticks_ms(), data[0], None, None))
            self._advertising = None
            self._wake()
        elif event == _IRQ_GATTS_WRITE:
            handle, attr = data
            if attr == self.h_commands:
                self._writes.push((handle, self.ble.gatts_read(attr)))  # full: dropped, counted
                self._wake()
        elif event == _IRQ_ENCRYPTION_UPDATE:
            self._secured(*data)
        elif event == _IRQ_PASSKEY_ACTION:
            handle, action, _ = data
            self._passkey_action(handle, action)
        elif event == _IRQ_SET_SECRET:
            sec_type, key, value = data
            if self._pairing is None and sec_type in (_SECRET_OUR_KEYS, _SECRET_PEER_KEYS):
                # No passkey pairing is under way, so these keys cannot make an authenticated
                # bond (Just Works, or a stranger's "repeat pairing" deleting the owner's bond):
                # not even recorded.
                return True
            self._wake()
            return self.bonds.set(sec_type, key, value)
        elif event == _IRQ_GET_SECRET:
            sec_type, index, key = data
            return self.bonds.get(sec_type, index, key)
        return None

    def _secured(self, handle, encrypted, authenticated, bonded, _key_size):
        conn = self.conns.get(handle)
        self._irq_log.push(("secure", time.ticks_ms(), handle, 1 if authenticated else 0, 1 if bonded else 0))
        if conn is None:
            return
        conn.encrypted = bool(encrypted)
        conn.trusted = False
        conn.sent = {}  # a new secure link: everything pending goes again
        conn.status_at = None
        conn.heard = False
        good = encrypted and authenticated and bonded
        if handle == self._pairing:
            if good:
                conn.paired = True  # its keys are committed by pump() (they may come after this)
            else:
                self._pairing = None
                self._attempt_failed = True
                conn.drop = "pairing_failed"
        elif good and self.bonds.is_bond(conn.key):
            conn.trusted = True  # a bonded phone re-encrypted with its key
        elif encrypted:
            # Just Works, legacy without MITM, or a key that is not a kept bond: never trusted.
            conn.drop = "unauthenticated"
        else:
            conn.drop = "not_encrypted"  # a refused pairing or a failed re-encryption: go now
        self._wake()

    def _passkey_action(self, handle, action):
        conn = self.conns.get(handle)
        reason = None
        if action != _PASSKEY_ACTION_DISPLAY:
            reason = "method"  # numeric comparison or input: not a DisplayOnly passkey pairing
        elif not self.device.pairing_open:
            reason = "window_closed"
        elif self.passkey_retired():
            reason = "passkey_retired"
        elif self._pairing is not None and self._pairing != handle:
            reason = "busy"
        elif self._locked_until is not None and not ticks.reached(time.ticks_ms(), self._locked_until):
            reason = "locked_out"
        elif conn is None:
            reason = "no_connection"
        elif self.bonds.full and not self.bonds.is_bond(conn.key):
            reason = "bonds_full"
        if reason is None:
            self._pairing = handle
            self.bonds.unstored = 0  # what counts is what this pairing loses
            conn.since = time.ticks_ms()
            self.ble.gap_passkey(handle, action, self.passkey)
            self._irq_log.push(("pairing", conn.since, handle, None, None))
            self._wake()
            return
        if action == _PASSKEY_ACTION_NUMERIC_COMPARISON:
            self.ble.gap_passkey(handle, action, 0)  # "the numbers differ"
        else:
            # A passkey nobody knows: pairing fails, and a failure tells nothing of ours.
            self.ble.gap_passkey(handle, action, int.from_bytes(os.urandom(3), "little") % 1000000)
        self._irq_log.push(("pairing_refused", time.ticks_ms(), handle, reason, None))
        self._wake()

    # -- work (app task) ----------------------------------------------------------------

    def touch(self, now_ms):
        """Something happened (an input, a command): advertise fast for a while."""
        self._fast_until = ticks.add(now_ms, FAST_ADV_MS)
        self.active_at = now_ms

    def writes_pending(self):
        return len(self._writes) > 0

    def _irq_lines(self):
        """Print the log lines the IRQ handler recorded, in order and with their own times
        (before pump's own)."""
        while True:
            line = self._irq_log.pop()
            if line is None:
                break
            msg, at, handle, a, b = line
            if msg == "secure":
                self.log("ble", msg, at=at, conn=handle, authenticated=a, bonded=b)
            elif msg == "pairing_refused":
                self.log("ble", msg, at=at, conn=handle, reason=a)
            else:
                self.log("ble", msg, at=at, conn=handle)
        dropped = self._irq_log.dropped
        if dropped != self._irq_log_seen:
            self.log("ble", "log_dropped", lines=dropped - self._irq_log_seen, total=dropped)
            self._irq_log_seen = dropped

    def _take_writes(self, now_ms):
        """Answer the queued command writes. Those the ring had no room for get no RESULT (the
        phone sends them again, PROTOCOL.md §12) and count in STATUS `dropped` (counted first, so
        a REQUEST_STATUS among these answers with them)."""
        dropped = self._writes.dropped
        if dropped != self._writes_seen:
            self.device.count_dropped(dropped - self._writes_seen)
            self._events_dirty = True
            self.log("ble", "commands_dropped", commands=dropped - self._writes_seen, total=dropped)
            self._writes_seen = dropped
        while True:
            write = self._writes.pop()
            if write is None:
                break
            self._events_dirty = True
            self._command(write[0], write[1], now_ms)

    def advertise(self, now_ms=None):
        pairing = self.device.pairing_open
        fast = pairing or bool(self.journal.depth)
        if now_ms is not None and self._fast_until is not None:
            if ticks.reached(now_ms, self._fast_until):
                self._fast_until = None  # over, so an old tick cannot wrap around
            else:
                fast = True
        mode = (pairing, fast)
        # Connectable while a connection is free, so that a stranger's link never hides the
        # bell from its owner's phone (the stack stops advertising at each connection).
        if mode == self._advertising or len(self.conns) >= MAX_CONNS:
            return
        self._advertising = mode
        interval = _ADV_FAST_US if mode[1] else _ADV_SLOW_US
        try:
            self.ble.gap_advertise(interval, _adv_payload(pairing))
        except OSError:
            self._advertising = None  # the stack is busy with a connection: next pump

    def _notify(self, conn, frame):
        try:
            self.ble.gatts_notify(conn.handle, self.h_events, frame)
            return True
        except OSError:
            return False

    def _disconnect(self, conn, reason):
        conn.drop = None
        self.log("ble", "dropped", conn=conn.handle, reason=reason)
        try:
            self.ble.gap_disconnect(conn.handle)
        except OSError:
            pass

    def _pairing_window(self, now_ms):
        """A new window starts with no failures counted; the window's failure count and lockout
        (PROTOCOL.md §2.3) apply until it closes."""
        is_open = self.device.pairing_open
        if is_open and not self._window_open:
            self._window_failures = 0
            self._locked_until = None
        if is_open != self._window_open:
            self._events_dirty = True
        self._window_open = is_open
        if self._attempt_failed:
            self._attempt_failed = False
            self._window_failures += 1
            total = self.bonds.count_passkey_failure(self._tag)
            locked_ms = self.lockout_ms << (self._window_failures - 1)
            self._locked_until = ticks.add(now_ms, locked_ms)
            self.log("ble", "pairing_failed", attempt=self._window_failures, of=MAX_WINDOW_FAILURES,
                     failures=total, locked_ms=locked_ms)
            retired = total >= PASSKEY_FAILURE_LIMIT
            if self._window_failures >= MAX_WINDOW_FAILURES or retired:
                self.device.close_pairing(now_ms)
                self.log("ble", "pairing_window_closed", reason="failures")
            if retired:
                self.log("ble", "passkey_retired", failures=total)
        conn = self.conns.get(self._pairing) if self._pairing is not None else None
        if conn is None:
            conn = self._paired_gone
        if conn is not None and conn.paired:
            self._bond(conn, now_ms)

    def _bond(self, conn, now_ms):
        """The passkey pairing gave an authenticated, bonded link: keep exactly its keys."""
        peers = self.bonds.pending_peers()
        if self.bonds.unstored:
            key = None  # a secret of it found no heap in the IRQ: no whole bond to keep
        elif not peers:
            if ticks.diff(now_ms, conn.since) < PAIRING_MS:
                return  # NimBLE stores the keys just after it reports the encryption
            key = None
        elif conn.key in peers:
            key = conn.key
        elif len(peers) == 1:
            key = peers[0]  # the phone's identity address (it connected with a private one)
        else:
            key = None  # keys of two peers at once (a stranger's pairing alongside): keep none
        self._pairing = None
        self._paired_gone = None
        if key is None or not self.bonds.commit(key):
            conn.drop = "no_heap_for_secret" if self.bonds.unstored else "bond_not_stored"
            self.bonds.discard()
            return
        conn.key = key
        conn.paired = False
        conn.trusted = True
        self.log("ble", "bonded", conn=conn.handle, bonds=self.bonds.bonds)
        self.device.pairing_done(now_ms)

    def _strangers(self, now_ms):
        """Drop links that are not trusted in time, and make room while the bell is full."""
        untrusted = []
        for conn in self.conns.values():
            if conn.trusted:
                continue
            limit = PAIRING_MS if conn.handle == self._pairing else UNTRUSTED_MS
            if conn.drop is None and ticks.diff(now_ms, conn.since) >= limit:
                conn.drop = "timeout"
            if conn.drop is not None:
                self._disconnect(conn, conn.drop)
            elif conn.handle != self._pairing:
                untrusted.append(conn)
        if len(self.conns) >= MAX_CONNS and untrusted:
            oldest = untrusted[0]
            for conn in untrusted:
                if ticks.diff(conn.since, oldest.since) < 0:
                    oldest = conn
            self._disconnect(oldest, "room")

    def pump(self, now_ms):
        """Handle received commands, deliver pending events, keep advertising right."""
        self._irq_lines()
        self._pairing_window(now_ms)
        self._strangers(now_ms)
        self._take_writes(now_ms)
        # A read of Events returns the current STATUS (PROTOCOL.md §2.1): the attribute's value in
        # RAM (sends nothing; the ATT flags keep it to authenticated links). Notifications carry
        # their own data and leave this value alone.
        journal = self.journal
        if (self._events_dirty or journal.next_seq != self._events_seq
                or journal.depth != self._events_depth or ticks.diff(now_ms, self._events_at) >= STATUS_REFRESH_MS):
            self._events_dirty = False
            self._events_at = now_ms
            self._events_seq = journal.next_seq
            self._events_depth = journal.depth
            status = self.device.status_frame(now_ms)
            if status != self._events_value:  # (gatts_read would allocate a copy each time)
                self.ble.gatts_write(self.h_events, status)
                self._events_value = status
        pending = self.journal.pending()
        for conn in list(self.conns.values()):
            if not conn.trusted:
                continue
            if conn.status_at is None or ticks.diff(now_ms, conn.status_at) >= self.heartbeat_ms:
                if self._notify(conn, self.device.status_frame(now_ms)):
                    conn.status_at = now_ms
            resend_ms = RESEND_MS if conn.heard else UNHEARD_RESEND_MS
            for seq, frame in pending:
                last = conn.sent.get(seq)
                if last is None or ticks.diff(now_ms, last) >= resend_ms:
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
            self._pairing = None  # the owner's own reset, not a failed attempt
            stored = self.bonds.forget_all()
            for conn in list(self.conns.values()):
                conn.trusted = False
                self._disconnect(conn, "bonds_forgotten")
            self.log("ble", "bonds_forgotten")
            if not stored:  # gone until a reboot, which brings them back from flash: say so
                self.log("ble", "bonds_not_stored")
        self.advertise(now_ms)

    def stop(self):
        """Before a deep sleep: drop the phones politely and switch the radio off."""
        self._irq_lines()
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
            self._reply(conn, p.pack(p.RESULT, (0, 0, err.code, 0)))
            self.log("ble", "bad_frame", conn=handle, error=p.error_name(err.code))
            return
        if conn.trusted and not conn.heard:
            # Its first command: the phone has subscribed (§2.2), so what was sent before may
            # have been missed; the rest of pump() sends it all again now.
            conn.heard = True
            conn.sent = {}
            conn.status_at = None
        if cmd.klass != "command":
            self._reply(conn, p.pack(p.RESULT, (0, cmd.type, p.E_UNKNOWN_TYPE, 0)))
            return
        self.touch(now_ms)
        last = self.bonds.counter(conn.key)
        code = p.admit(cmd, conn.trusted, last)
        if code == p.E_OK:
            # Persisted before acting, so a replay after a power cut is still refused; an
            # admitted command uses its counter whatever it answers (PROTOCOL.md §7.1).
            if not self.bonds.accept_counter(conn.key, cmd.counter):
                code = p.E_INTERNAL
            else:
                code = self.device.command(cmd, now_ms)
        self._reply(conn, p.pack(p.RESULT, (cmd.counter, cmd.type, code, last if code == p.E_REPLAYED else 0)))
        self.log("ble", "command", conn=handle, type=cmd.name, code=p.error_name(code))
        if code == p.E_OK and cmd.type == p.REQUEST_STATUS:
            self._reply(conn, self.device.status_frame(now_ms))
            conn.status_at = now_ms  # it is this period's heartbeat too

    def _reply(self, conn, frame):
        # A RESULT or a STATUS, packed from its values (p.pack): no Message on the way.
        if conn.trusted:  # frames go only to an authenticated phone (PROTOCOL.md §2.2)
            self._notify(conn, frame)
