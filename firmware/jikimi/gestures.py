"""Gesture recogniser on debounced button edges. Exactly when each gesture fires is in
CORE.md, "Gestures"; in short, with the defaults:

- HOLD: the button held for `hold_ms` (3 s); fires at that moment, while still held.
- TRIPLE: the third press within `multi_window_ms` (1.5 s) of the first; fires on that press.
- DOUBLE: exactly two presses within the window; fires when the window ends.
- PAIRING: a press that began within `boot_window_ms` of power-up (or was already down at
  power-up), released after `pairing_hold_ms` (10 s) but within `pairing_grace_ms` (5 s) after
  that; fires at the release. From 10 s on, `pairing_ready(now)` is True (the LED shows it).
  During such a press HOLD is deferred, never dropped: released between 3 s and 10 s, HOLD
  fires at the release; still held at 15 s, HOLD fires then. Someone holding on in panic right
  after a reboot gets the alarm, not the pairing window.

Each press yields at most one gesture: a press that fires HOLD, TRIPLE or PAIRING is consumed
and does nothing more. A single short press fires nothing.

Feed debounced edges to `edge(pressed, at_ms)` and call `poll(now_ms)` at `deadline()`. Both
return `(gesture, at_ms)` or None; `at_ms` is when the gesture happened, whatever the polling.
"""

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


from jikimi import ticks
from jikimi.config import GESTURES_BOOT_WINDOW_MS, GESTURES_HOLD_MS, GESTURES_MULTI_WINDOW_MS
from jikimi.config import GESTURES_PAIRING_GRACE_MS, GESTURES_PAIRING_HOLD_MS

HOLD = const(1)
TRIPLE = const(2)
DOUBLE = const(3)
PAIRING = const(4)

NAMES = {HOLD: "hold", TRIPLE: "triple", DOUBLE: "double", PAIRING: "pairing"}


class Gestures:
    def __init__(
        self,
        boot_ms,
        hold_ms=GESTURES_HOLD_MS,
        multi_window_ms=GESTURES_MULTI_WINDOW_MS,
        pairing_hold_ms=GESTURES_PAIRING_HOLD_MS,
        boot_window_ms=GESTURES_BOOT_WINDOW_MS,
        pairing_grace_ms=GESTURES_PAIRING_GRACE_MS,
    ):
        self.hold_ms = hold_ms
        self.multi_window_ms = multi_window_ms
        self.pairing_hold_ms = pairing_hold_ms
        self.pairing_grace_ms = pairing_grace_ms
        self._boot_window_end = ticks.add(boot_ms, boot_window_ms)  # None once passed
        self._pressed = False
        self._press_at = 0
        self._consumed = False  # this press has produced its gesture
        self._boot_press = False  # this press may become PAIRING
        self._ready = False  # ... and has been held long enough to
        self._series_start = 0  # first press of the current multi-press series
        self._series_count = 0
        self._queued = None  # a gesture found while another was being returned

    def _in_boot_window(self, at):
        if self._boot_window_end is None:
            return False
        if ticks.diff(at, self._boot_window_end) >= 0:
            self._boot_window_end = None
            return False
        return True

    def _hold_deadline(self):
        if self._boot_press:
            return ticks.add(self._press_at, self.pairing_hold_ms + self.pairing_grace_ms)
        return ticks.add(self._press_at, self.hold_ms)

    def pairing_ready(self, now_ms):
        """True while a power-up press has been held long enough that letting go pairs."""
        return (
            self._pressed
            and self._boot_press
            and not self._consumed
            and ticks.diff(now_ms, self._press_at) >= self.pairing_hold_ms
        )

    def deadline(self):
        """When `poll` next has something to do, or None."""
        if self._queued is not None:
            return self._queued[1]
        if self._pressed and not self._consumed:
            if self._boot_press and not self._ready:
                # wake when pairing becomes ready, so the LED can show it at once
                return ticks.add(self._press_at, self.pairing_hold_ms)
            return self._hold_deadline()
        if self._series_count:
            return ticks.add(self._series_start, self.multi_window_ms)
        return self._boot_window_end

    def poll(self, now_ms):
        if self._queued is not None:
            out = self._queued
            self._queued = None
            return out
        self._in_boot_window(now_ms)
        if self._pressed and not self._consumed:
            if self._boot_press and not self._ready:
                self._ready = self.pairing_ready(now_ms)
            at = self._hold_deadline()
            if ticks.diff(now_ms, at) >= 0:
                self._consumed = True
                self._series_count = 0
                return (HOLD, at)
        elif self._series_count and not self._pressed:
            at = ticks.add(self._series_start, self.multi_window_ms)
            if ticks.diff(now_ms, at) >= 0:
                count = self._series_count
                self._series_count = 0
                if count == 2:
                    return (DOUBLE, at)
        return None

    def edge(self, pressed, at_ms):
        """A debounced edge: pressed True/1 for a press, False/0 for a release."""
        due = self.poll(at_ms)
        found = self._press(at_ms) if pressed else self._release(at_ms)
        if due is None:
            return found
        self._queued = found
        return due

    def _press(self, at):
        if self._pressed:
            return None
        self._pressed = True
        self._press_at = at
        self._consumed = False
        self._ready = False
        self._boot_press = self._in_boot_window(at)
        if self._series_count and ticks.diff(at, self._series_start) <= self.multi_window_ms:
            self._series_count += 1
        else:
            self._series_start = at
            self._series_count = 1
        if self._series_count >= 3:
            self._series_count = 0
            self._consumed = True
            return (TRIPLE, at)
        return None

    def _release(self, at):
        if not self._pressed:
            return None
        self._pressed = False
        if self._consumed:
            return None
        held = ticks.diff(at, self._press_at)
        if self._boot_press and held >= self.pairing_hold_ms:
            self._series_count = 0
            return (PAIRING, at)
        if self._boot_press and held >= self.hold_ms:
            # A deferred HOLD: let go before the pairing time, so this was an alarm.
            self._series_count = 0
            return (HOLD, at)
        if self._series_count == 2 and ticks.diff(at, self._series_start) >= self.multi_window_ms:
            # The window ended while the second press was still down: it was a double press.
            self._series_count = 0
            return (DOUBLE, at)
        return None
