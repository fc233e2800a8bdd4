"""Alarm state machines (CORE.md, "Panic alarm"): one alarm's life, and the panic button and
pull-pin that raise it.

States of one alarm: idle -> active (loud or silent) -> acknowledged by the phone -> idle again
when cancelled. While active:

- loud: the siren sounds from the moment the alarm is raised until it is silenced (from the
  phone, by putting the pull-pin back, or after `max_siren_ms`) or the alarm is cancelled;
  silencing never cancels the alarm or its report;
- silent: no sound and no light at all;
- the phone's ack changes nothing the attacker could notice; it is journaled (`alarm_acked`).

Cancelling from the device (a hold while the alarm is active) works inside the cancel window
(`cancel_window_ms` after the alarm, 20 s by default, the time before the relay reports to 112).
After it, a hold on the device only silences the siren: the report stands, and only the owner's
authenticated phone can cancel. A coerced hold cannot take back a report already made.

After a reboot (CORE.md, "After a reboot") the device core restores an alarm the journal still
holds as live with `restore`: active again with its own seq, the cancel window and the siren
counted from when it was raised, where the clock tells that, and otherwise the window over and
the siren (loud, not silenced) on for a full max_siren_ms.

The machines never touch hardware. They record events through `emit(type_code, fields) -> seq`
(the journal) and expose `siren_on`, which the device core turns into siren output.
"""

from jikimi import protocol as p
from jikimi import ticks
from jikimi.config import ALARM_CANCEL_WINDOW_MS, ALARM_MAX_SIREN_MS
from jikimi.gestures import HOLD, TRIPLE


class Alarm:
    """One alarm slot: raise, ack, silence, cancel, and the maximum siren time."""

    def __init__(self, emit, cancel_window_ms=ALARM_CANCEL_WINDOW_MS,
                 max_siren_ms=ALARM_MAX_SIREN_MS):
        self.emit = emit
        self.cancel_window_ms = cancel_window_ms
        self.max_siren_ms = max_siren_ms
        self.active = False
        self.seq = 0  # the alarm_raised event's seq while active
        self.mode = 0
        self.trigger = 0
        self.acked = False
        self.siren_on = False
        self.siren_started = 0
        self._siren_until = None
        self._window_until = None  # None once the cancel window is over

    def raise_alarm(self, mode, trigger, battery_pct, now_ms):
        """Raise an alarm unless one is active; return True if this raised it."""
        if self.active:
            return False
        # State and siren first: the alarm sounds even if recording it fails.
        self.active = True
        self.mode = mode
        self.trigger = trigger
        self.acked = False
        self._window_until = ticks.add(now_ms, self.cancel_window_ms)
        if mode == p.MODE_LOUD:
            self.sound(now_ms)
        self.seq = self.emit(p.ALARM_RAISED, {"mode": mode, "trigger": trigger, "battery_pct": battery_pct})
        return True

    def restore(self, seq, mode, trigger, acked, silenced, elapsed_ms, now_ms):
        """Active again after a reboot: the alarm `seq` was raised `elapsed_ms` ago (None: not
        known). Journals nothing: a reboot loop (a brown-out) must not fill the flash."""
        self.active = True
        self.seq = seq
        self.mode = mode
        self.trigger = trigger
        self.acked = acked
        self.siren_on = False
        self._siren_until = None
        self._window_until = None  # unknown age: the window is over (the phone can still cancel)
        if elapsed_ms is not None and elapsed_ms < self.cancel_window_ms:
            self._window_until = ticks.add(now_ms, self.cancel_window_ms - elapsed_ms)
        if mode == p.MODE_LOUD and not silenced:
            left_ms = self.max_siren_ms if elapsed_ms is None else self.max_siren_ms - elapsed_ms
            if left_ms > 0:
                self.siren_on = True
                self.siren_started = now_ms
                self._siren_until = ticks.add(now_ms, left_ms)

    def sound(self, now_ms):
        """Start (or restart) the siren for at most max_siren_ms."""
        self.siren_on = True
        self.siren_started = now_ms
        self._siren_until = ticks.add(now_ms, self.max_siren_ms)

    def in_cancel_window(self, now_ms):
        self.poll(now_ms)
        return self._window_until is not None

    def ack(self, seq):
        """The phone acknowledged event `seq`; if it is this alarm, journal that once."""
        if self.active and seq == self.seq and not self.acked:
            self.acked = True
            self.emit(p.ALARM_ACKED, {"alarm_seq": self.seq})

    def silence(self, source):
        """Stop the siren; the alarm and its report go on. True if the siren was on."""
        if not self.siren_on:
            return False
        self.siren_on = False
        self._siren_until = None
        self.emit(p.SIREN_SILENCED, {"alarm_seq": self.seq, "source": source})
        return True

    def cancel(self, source):
        if not self.active:
            return False
        self.emit(p.ALARM_CANCELLED, {"alarm_seq": self.seq, "source": source})
        self.active = False
        self.siren_on = False
        self._siren_until = None
        self._window_until = None
        return True

    def deadline(self):
        if self._siren_until is not None:
            if self._window_until is not None and ticks.diff(self._window_until, self._siren_until) < 0:
                return self._window_until
            return self._siren_until
        return self._window_until

    def poll(self, now_ms):
        if self._window_until is not None and ticks.diff(now_ms, self._window_until) >= 0:
            self._window_until = None
        if self._siren_until is not None and ticks.diff(now_ms, self._siren_until) >= 0:
            self.silence(p.SOURCE_TIMEOUT)


class PanicAlarm:
    """The panic button and the pull-pin: gestures and the ring in or out, onto one Alarm."""

    def __init__(self, emit, cancel_window_ms=ALARM_CANCEL_WINDOW_MS,
                 max_siren_ms=ALARM_MAX_SIREN_MS):
        self.alarm = Alarm(emit, cancel_window_ms, max_siren_ms)

    def gesture(self, gesture, battery_pct, now_ms):
        alarm = self.alarm
        alarm.poll(now_ms)
        if gesture == HOLD:
            if not alarm.active:
                alarm.raise_alarm(p.MODE_LOUD, p.TRIGGER_HOLD, battery_pct, now_ms)
            elif alarm.in_cancel_window(now_ms):
                alarm.cancel(p.SOURCE_DEVICE)
            else:
                alarm.silence(p.SOURCE_DEVICE)
        elif gesture == TRIPLE and not alarm.active:
            alarm.raise_alarm(p.MODE_SILENT, p.TRIGGER_TRIPLE_PRESS, battery_pct, now_ms)

    def pull_pin(self, pulled, battery_pct, now_ms):
        """The ring was pulled out (True) or put back (False)."""
        alarm = self.alarm
        alarm.poll(now_ms)
        if pulled:
            if not alarm.raise_alarm(p.MODE_LOUD, p.TRIGGER_PULL_PIN, battery_pct, now_ms):
                alarm.sound(now_ms)  # pulling the ring always makes noise
        else:
            alarm.silence(p.SOURCE_PULL_PIN)

    def deadline(self):
        return self.alarm.deadline()

    def poll(self, now_ms):
        self.alarm.poll(now_ms)
