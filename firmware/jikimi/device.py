"""The device core: every pure part wired together, with no hardware (CORE.md, "Device core").

The app (the shell) feeds it raw input samples, battery readings and the phone's admitted
commands, calls `poll` at `deadline()`, and drives the buzzer and LED from `output(now_ms)`.
When its queues overflow it resyncs the inputs that lost samples (`resync_input`) and counts
the drops (`count_dropped`, STATUS `dropped`).
Everything it records goes through the journal; `trace` (if given) receives one short line per
notable step, which the app prints as its structured log.

Logical input levels: button 1 = pressed, door 1 = open, pull_pin 1 = ring pulled out,
tamper 1 = enclosure open. The board module maps pin levels to these.
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):
        return value


from jikimi import protocol as p
from jikimi import siren as sn
from jikimi import ticks
from jikimi.alarm import PanicAlarm
from jikimi.battery import Battery
from jikimi.debounce import Debouncer
from jikimi.gestures import DOUBLE, HOLD, NAMES, PAIRING, TRIPLE, Gestures
from jikimi.journal import ACKED, SILENCED, SLOT_DOOR

INPUTS = ("button", "door", "pull_pin", "tamper")
LOCATE_DEFAULT_S = const(10)
# After a reboot an alarm's age is taken from the wall clock: the event's time and a kept clock
# are whole seconds and the kept clock may run up to 2 s behind, so the age is rounded up by
# this much (the cancel window may end up to 2 s early after a reset, never late).
CLOCK_SLACK_S = const(2)
AGE_CAP_S = const(3600)  # older than any cancel window or siren time


def _earliest(a, b):
    if a is None:
        return b
    if b is None or ticks.diff(a, b) < 0:
        return a
    return b


class Device:
    def __init__(self, config, journal, now_ms, levels=None, fw_version=(0, 0, 0), trace=None, wake=None,
                 clock_s=None):
        """`wake`: None after a power-up or reset; "pin" or "timer" after a deep sleep (Power
        in CORE.md): then the pairing gesture is off, and what changed while asleep is an edge.
        `clock_s`: the wall clock at `now_ms` if it was kept over the reset or sleep (None: a
        power cut, unknown). Alarms the journal holds as live are restored (CORE.md, "After a
        reboot")."""
        levels = levels or {}
        self.config = config
        self.journal = journal
        self.fw_version = fw_version
        self.trace = trace
        self.boot_ms = now_ms
        roles = config["roles"]
        self.roles = (
            (p.ROLE_PANIC if "panic" in roles else 0)
            | (p.ROLE_DOOR if "door" in roles else 0)
            | (p.ROLE_PULL_PIN if "pull_pin" in roles else 0)
        )
        deb = config["debounce"]
        used = ["button"]
        if self.roles & p.ROLE_DOOR:
            used += ["door", "tamper"]
        if self.roles & p.ROLE_PULL_PIN:
            used.append("pull_pin")
        self.inputs = {}
        for name in used:
            # The device sleeps only with every input inactive, so after a wake-up all start at 0.
            level = 1 if levels.get(name) and wake is None else 0
            self.inputs[name] = Debouncer(level, now_ms, deb["glitch_ms"], deb["bounce_ms"])
        g = config["gestures"]
        self.gestures = Gestures(
            now_ms, g["hold_ms"], g["multi_window_ms"], g["pairing_hold_ms"],
            g["boot_window_ms"] if wake is None else 0,  # pairing only from a real power-up
            g["pairing_grace_ms"],
        )
        a = config["alarm"]
        self.panic = PanicAlarm(self._emit, a["cancel_window_ms"], a["max_siren_ms"])
        self.door = None
        if self.roles & p.ROLE_DOOR:
            from jikimi.door import DoorAlarm  # only a door alarm loads its code (heap, as .mpy)

            d = config["door"]
            self.door = DoorAlarm(
                self._emit, self.inputs["door"].level, now_ms, d["exit_delay_ms"], d["entry_delay_ms"],
                a["max_siren_ms"],
            )
            self.door.tampered = bool(self.inputs["tamper"].level)
        b = config["battery"]
        self.battery = Battery(b["low_mv"], b["recover_mv"], b["empty_mv"], b["full_mv"], b["confirm"])
        s = config["siren"]
        self.siren = sn.Siren(s["low_hz"], s["high_hz"], s["sweep_ms"], s["volume_pct"])
        self._overlay = sn.OFF  # a one-shot pattern (confirm, cancelled)
        self._overlay_at = 0
        self._locate_until = None
        self._locate_at = 0
        self._pairing_until = None
        self._pairing_at = 0
        self.forget_phones = False  # set by the gesture, cleared by the link once done
        self._clock_s = None  # wall clock (s since 2000) at _clock_ticks, once set by the phone
        self._clock_ticks = 0
        self.keep_clock = None  # the app's hook: called with clock_s whenever the clock is set
        self.dropped = 0  # input edges and command writes the shell had no room for (STATUS)
        if clock_s is not None:
            self.set_clock(clock_s, now_ms)
        self._restore(now_ms)
        if wake == "pin":
            self._woken(levels, now_ms)
        if self.inputs["button"].level:
            self._gesture(self.gestures.edge(True, now_ms), now_ms)
        if "pull_pin" in self.inputs and self.inputs["pull_pin"].level:
            self.panic.pull_pin(True, self.battery.pct, now_ms)

    def _restore(self, now_ms):
        """The alarms raised before the reboot and not cancelled: active again (alarm.restore)."""
        for slot, frame, state in self.journal.live_alarms():
            raised = p.decode(frame)
            if slot == SLOT_DOOR:
                if self.door is None:
                    continue  # the door role was switched off: nothing can sound or end it
                alarm = self.door.alarm
                self.door.restore_alarm(now_ms)
            else:
                alarm = self.panic.alarm
            elapsed_ms = None  # not known: no clock then or now
            if raised.time and self._clock_s is not None:
                age_s = self.clock_at(now_ms) - raised.time + CLOCK_SLACK_S
                if age_s >= 0:  # else the clock was set back since: not known either
                    elapsed_ms = min(age_s, AGE_CAP_S) * 1000
            alarm.restore(raised.seq, raised.mode, raised.trigger, bool(state & ACKED),
                          bool(state & SILENCED), elapsed_ms, now_ms)
            self._log("restored alarm seq=%d mode=%d trigger=%d acked=%d silenced=%d age_ms=%d siren=%d window=%d" % (
                raised.seq, raised.mode, raised.trigger, 1 if state & ACKED else 0,
                1 if state & SILENCED else 0, -1 if elapsed_ms is None else elapsed_ms,
                1 if alarm.siren_on else 0, 1 if alarm.in_cancel_window(now_ms) else 0))

    def _woken(self, levels, now_ms):
        """Woken from deep sleep by an input: each input active now became active while asleep."""
        deb = self.config["debounce"]
        seen = False
        for name in self.inputs:
            if levels.get(name):
                seen = True
                self.inputs[name] = Debouncer(1, now_ms, deb["glitch_ms"], deb["bounce_ms"])
                if name != "button" and name != "pull_pin":  # those two are handled below
                    self._edge(name, 1, now_ms)
        if not seen:
            # Nothing is active any more: the button was pressed and let go while the board
            # booted. Count that press, so that a triple press from sleep still makes three.
            self._gesture(self.gestures.edge(True, now_ms), now_ms)
            self._gesture(self.gestures.edge(False, now_ms), now_ms)

    # -- recording ------------------------------------------------------------------------

    def _log(self, text):
        if self.trace is not None:
            self.trace(text)

    def clock_s(self):
        """Seconds since 2000-01-01 UTC, or 0 while the phone has not set the clock."""
        return self._clock_s or 0

    def clock_set(self):
        return self._clock_s is not None

    def clock_at(self, now_ms):
        """The wall clock at `now_ms` (clock_s() moves on in whole seconds at poll())."""
        return self.clock_s() + ticks.diff(now_ms, self._clock_ticks) // 1000

    def set_clock(self, clock_s, now_ms):
        """The wall clock is `clock_s` at `now_ms` (from the phone, or kept over a deep sleep)."""
        self._clock_s = clock_s
        self._clock_ticks = now_ms
        if self.keep_clock is not None:
            self.keep_clock(clock_s)

    def _emit(self, type_code, fields):
        seq = self.journal.append(type_code, fields, self.clock_s())
        if self.trace is not None:
            parts = [p.type_name(type_code), "seq=%d" % seq]
            for name, _ in p.fields_of(type_code)[3:]:
                parts.append("%s=%d" % (name, fields[name]))
            self.trace("event " + " ".join(parts))
        return seq

    # -- inputs ---------------------------------------------------------------------------

    def input(self, name, level, now_ms):
        """A raw sample of input `name` (an IRQ edge or a poll)."""
        debouncer = self.inputs.get(name)
        if debouncer is None:
            return
        self.poll(now_ms)
        edge = debouncer.update(level, now_ms)
        if edge is not None:
            self._edge(name, edge[0], edge[1])

    def resync_input(self, name, level, now_ms):
        """Raw samples of input `name` were lost (the shell's queue was full): it reads `level`
        at `now_ms`. Nothing is reported for the stretch nobody saw (Debouncer.resync): a lost
        sample may delay an edge, never invent one, so chatter can neither fake nor hide a
        press that lasts."""
        debouncer = self.inputs.get(name)
        if debouncer is None:
            return
        debouncer.resync(level, now_ms)  # the next poll starts from here

    def count_dropped(self, count):
        """The shell dropped `count` more input edges or command writes (STATUS `dropped`,
        saturating)."""
        self.dropped = min(0xFFFF, self.dropped + count)

    def _edge(self, name, level, at):
        self._log("input %s %d" % (name, level))
        pct = self.battery.pct
        if name == "button":
            self._gesture(self.gestures.edge(level, at), at)
        elif name == "door":
            self.door.door(level, pct, at)
        elif name == "tamper":
            self.door.tamper(level, pct, at)
        elif name == "pull_pin" and self.roles & p.ROLE_PULL_PIN:
            self.panic.pull_pin(level, pct, at)

    def _gesture(self, found, now_ms):
        if found is None:
            return
        gesture, at = found
        self._log("gesture " + NAMES[gesture])
        alarm = self.panic.alarm
        if gesture == PAIRING:
            self.open_pairing(at)
        elif gesture in (HOLD, TRIPLE) and self.roles & p.ROLE_PANIC:
            was_loud = alarm.active and alarm.mode == p.MODE_LOUD
            self.panic.gesture(gesture, self.battery.pct, at)
            if was_loud and not alarm.active:
                self._one_shot(sn.CANCELLED, at)
        elif gesture == DOUBLE and self.pairing_open:
            # The owner's "forget all phones" (a lost or taken phone): a double press while the
            # pairing window is open. The link wipes the bonds; the window stays open.
            self.forget_phones = True
            self._one_shot(sn.CONFIRM, at)
            self._log("forget phones")
        elif gesture == DOUBLE and self.door is not None:
            if self.door.toggle(p.SOURCE_DEVICE, at) == p.E_OK:
                self._one_shot(sn.CONFIRM, at)

    def _one_shot(self, pattern, at):
        self._overlay = pattern
        self._overlay_at = at

    def battery_reading(self, mv, now_ms):
        self.poll(now_ms)
        if self.battery.reading(mv):
            b = self.battery
            self._emit(p.BATTERY, {"battery_mv": mv, "battery_pct": b.pct, "low": 1 if b.low else 0})

    # -- BLE side -------------------------------------------------------------------------

    @property
    def pairing_open(self):
        return self._pairing_until is not None

    def open_pairing(self, now_ms):
        """Open the pairing window (the power-up gesture; the rig's test console)."""
        self._pairing_until = ticks.add(now_ms, self.config["ble"]["pairing_window_ms"])
        self._pairing_at = now_ms
        self._log("pairing open")

    def pairing_done(self, now_ms):
        """A phone bonded: close the pairing window and confirm with a chirp."""
        self._pairing_until = None
        self._one_shot(sn.CONFIRM, now_ms)
        self._log("pairing closed")

    def close_pairing(self, now_ms):
        """Close the pairing window without a bond (too many failed attempts): no chirp."""
        self._pairing_until = None
        self._log("pairing closed")

    def _alarm_with_seq(self, seq):
        for alarm in self._alarms():
            if alarm.active and alarm.seq == seq:
                return alarm
        return None

    def _alarms(self):
        if self.door is None:
            return (self.panic.alarm,)
        return (self.panic.alarm, self.door.alarm)

    def command(self, cmd, now_ms):
        """An admitted command (protocol.admit said OK); returns the RESULT error code."""
        self.poll(now_ms)
        kind = cmd.type
        if kind == p.ACK:
            if cmd.epoch != self.journal.epoch:
                return p.E_BAD_FIELD
            self.journal.ack(cmd.seq)
            for alarm in self._alarms():
                alarm.ack(cmd.seq)
            return p.E_OK
        if kind == p.CANCEL_ALARM:
            if cmd.epoch != self.journal.epoch:
                return p.E_BAD_FIELD
            alarm = self._alarm_with_seq(cmd.alarm_seq)
            if alarm is None:
                return p.E_WRONG_STATE
            if alarm is self.panic.alarm:
                loud = alarm.mode == p.MODE_LOUD
                alarm.cancel(p.SOURCE_PHONE)
                if loud:
                    self._one_shot(sn.CANCELLED, now_ms)
                return p.E_OK
            return self.door.disarm(p.SOURCE_PHONE, now_ms)
        if kind in (p.ARM, p.DISARM):
            if self.door is None:
                return p.E_NOT_SUPPORTED
            if kind == p.ARM:
                return self.door.arm(p.SOURCE_PHONE, now_ms)
            return self.door.disarm(p.SOURCE_PHONE, now_ms)
        if kind == p.SILENCE_SIREN:
            self._locate_until = None
            silenced = False
            active = False
            for alarm in self._alarms():
                active = active or alarm.active
                silenced = alarm.silence(p.SOURCE_PHONE) or silenced
            return p.E_OK if silenced or active else p.E_WRONG_STATE
        if kind == p.SET_TIME:
            self.set_clock(cmd.time, now_ms)
            return p.E_OK
        if kind == p.LOCATE:
            if self._silent_alarm():
                return p.E_WRONG_STATE  # never give away a silent alarm
            seconds = cmd.seconds or LOCATE_DEFAULT_S
            self._locate_until = ticks.add(now_ms, seconds * 1000)
            self._locate_at = now_ms
            return p.E_OK
        if kind == p.REQUEST_STATUS:
            return p.E_OK
        return p.E_UNKNOWN_TYPE

    def _silent_alarm(self):
        alarm = self.panic.alarm
        return alarm.active and alarm.mode == p.MODE_SILENT

    def status(self, now_ms):
        """The STATUS message (PROTOCOL.md §6.2), for the host and the tests."""
        return p.decode(self.status_frame(now_ms))

    def status_frame(self, now_ms):
        """The STATUS frame, packed from its values (p.pack): no Message and no dict of its 11
        fields, which a bell would build again after every change (link.py)."""
        self.poll(now_ms)
        flags = 0
        for alarm in self._alarms():
            if alarm.active:
                flags |= p.FLAG_ALARM_ACTIVE
            if alarm.siren_on:
                flags |= p.FLAG_SIREN_ON
        if self.door is not None:
            if self.door.state != p.ARM_DISARMED:
                flags |= p.FLAG_ARMED
            if self.door.tampered:
                flags |= p.FLAG_TAMPERED
        if self.battery.low:
            flags |= p.FLAG_LOW_BATTERY
        if self._clock_s is not None:
            flags |= p.FLAG_CLOCK_SET
        if self.pairing_open:
            flags |= p.FLAG_PAIRING_WINDOW
        v = self.fw_version
        return p.pack(p.STATUS, (
            v[0], v[1], v[2], self.roles, flags, self.battery.pct, self.battery.mv,
            (ticks.diff(now_ms, self.boot_ms) // 1000) & 0xFFFFFFFF,  # uptime_s
            self.journal.depth, self.journal.epoch, self.dropped,
        ))

    def quiet(self):
        """Nothing going on that needs the device awake: no alarm, door disarmed, every event
        acknowledged, every input inactive and no timer running (the app may deep-sleep)."""
        if self.deadline() is not None or self.journal.depth or self.pairing_open:
            return False
        for alarm in self._alarms():
            if alarm.active:
                return False
        if self.door is not None and self.door.state != p.ARM_DISARMED:
            return False
        for debouncer in self.inputs.values():
            if debouncer.level:
                return False
        return True

    # -- time -----------------------------------------------------------------------------

    def deadline(self):
        """The next tick at which `poll` has work, or None."""
        due = self.gestures.deadline()
        for debouncer in self.inputs.values():
            due = _earliest(due, debouncer.deadline())
        due = _earliest(due, self.panic.deadline())
        if self.door is not None:
            due = _earliest(due, self.door.deadline())
        due = _earliest(due, self._pairing_until)
        due = _earliest(due, self._locate_until)
        if self._overlay != sn.OFF:
            due = _earliest(due, ticks.add(self._overlay_at, sn.duration_ms(self._overlay)))
        return due

    def poll(self, now_ms):
        if self._clock_s is not None:
            # Move the clock's base forward so the tick difference never grows past a period.
            whole_s = ticks.diff(now_ms, self._clock_ticks) // 1000
            if whole_s > 0:
                self._clock_s += whole_s
                self._clock_ticks = ticks.add(self._clock_ticks, whole_s * 1000)
        for name in self.inputs:
            debouncer = self.inputs[name]
            edge = debouncer.poll(now_ms)
            if edge is not None:
                self._edge(name, edge[0], edge[1])
        self._gesture(self.gestures.poll(now_ms), now_ms)
        pct = self.battery.pct
        self.panic.poll(now_ms)
        if self.door is not None:
            self.door.poll(now_ms, pct)
        if self._pairing_until is not None and ticks.reached(now_ms, self._pairing_until):
            self._pairing_until = None
            self._log("pairing closed")
        if self._locate_until is not None and ticks.reached(now_ms, self._locate_until):
            self._locate_until = None
        if self._overlay != sn.OFF:
            if ticks.diff(now_ms, self._overlay_at) >= sn.duration_ms(self._overlay):
                self._overlay = sn.OFF

    # -- outputs --------------------------------------------------------------------------

    def pattern(self, now_ms):
        """(siren pattern, tick it started) for the buzzer and LED now."""
        for alarm in self._alarms():
            if alarm.siren_on:
                return sn.ALARM, alarm.siren_started
        if self._silent_alarm():
            return sn.OFF, now_ms
        if self._overlay != sn.OFF and ticks.diff(now_ms, self._overlay_at) < sn.duration_ms(self._overlay):
            return self._overlay, self._overlay_at
        if self._locate_until is not None and not ticks.reached(now_ms, self._locate_until):
            return sn.LOCATE, self._locate_at
        if self.door is not None:
            if self.door.state == p.ARM_ENTRY_DELAY:
                return sn.ENTRY, self.door.state_since
            if self.door.state == p.ARM_EXIT_DELAY:
                return sn.EXIT, self.door.state_since
        if self._pairing_until is not None:
            return sn.PAIRING, self._pairing_at
        if self.gestures.pairing_ready(now_ms):
            return sn.PAIRING, now_ms  # "let go now to pair"
        return sn.OFF, now_ms

    def output(self, now_ms):
        """(frequency_hz, duty_u16, led) to drive now."""
        pattern, since = self.pattern(now_ms)
        return self.siren.output(pattern, ticks.diff(now_ms, since))
