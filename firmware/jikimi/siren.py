"""Siren and LED patterns: given a pattern and the time since it started, the buzzer's PWM
frequency and duty and the LED level (CORE.md, "Siren and LED").

- ALARM: a rising then falling sweep between `low_hz` and `high_hz` (2-4 kHz by default, where
  piezo buzzers are loudest), one sweep every `sweep_ms`; the LED flashes 4 times a second.
- EXIT / ENTRY: the door's delays: a short beep every 2 s / every 1 s.
- CONFIRM: two short chirps (armed, disarmed, paired). CANCELLED: three falling tones.
- LOCATE: chirps every 400 ms, for as long as the phone asked.
- PAIRING: no sound, the LED blinks once a second while the pairing window is open.
- OFF: nothing. A silent alarm uses OFF: no sound and no light.

Everything is integer arithmetic, so MicroPython and CPython give the same output.
"""

from jikimi.config import SIREN_HIGH_HZ, SIREN_LOW_HZ, SIREN_SWEEP_MS, SIREN_VOLUME_PCT

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


OFF = const(0)
ALARM = const(1)
EXIT = const(2)
ENTRY = const(3)
CONFIRM = const(4)
CANCELLED = const(5)
LOCATE = const(6)
PAIRING = const(7)

NAMES = ("off", "alarm", "exit", "entry", "confirm", "cancelled", "locate", "pairing")

# (frequency Hz, on ms, off ms) steps of the one-shot patterns
_CONFIRM_STEPS = ((3000, 80, 80), (3000, 80, 0))
_CANCELLED_STEPS = ((3500, 120, 0), (3000, 120, 0), (2500, 120, 0))
_ONE_SHOT = {CONFIRM: _CONFIRM_STEPS, CANCELLED: _CANCELLED_STEPS}

SILENT = (0, 0, 0)


def duration_ms(pattern):
    """How long a one-shot pattern lasts; None for the patterns that run until replaced."""
    steps = _ONE_SHOT.get(pattern)
    if steps is None:
        return None
    total = 0
    for step in steps:
        total += step[1] + step[2]
    return total


def _beep(elapsed_ms, period_ms, on_ms, hz, duty):
    if elapsed_ms % period_ms < on_ms:
        return (hz, duty, 1)
    return SILENT


class Siren:
    """Pattern settings; `output(pattern, elapsed_ms)` -> (frequency_hz, duty_u16, led)."""

    def __init__(self, low_hz=SIREN_LOW_HZ, high_hz=SIREN_HIGH_HZ,
                 sweep_ms=SIREN_SWEEP_MS, volume_pct=SIREN_VOLUME_PCT):
        self.low_hz = low_hz
        self.high_hz = high_hz
        self.sweep_ms = sweep_ms
        # 50 % duty is a piezo's loudest; lower is quieter.
        self.duty = volume_pct * 65535 // 100

    def output(self, pattern, elapsed_ms):
        if elapsed_ms < 0:
            return SILENT
        if pattern == ALARM:
            half = self.sweep_ms // 2
            phase = elapsed_ms % self.sweep_ms
            if phase >= half:
                phase = self.sweep_ms - phase
            hz = self.low_hz + (self.high_hz - self.low_hz) * phase // half
            led = 1 if elapsed_ms % 250 < 125 else 0
            return (hz, self.duty, led)
        if pattern == EXIT:
            return _beep(elapsed_ms, 2000, 50, 2500, self.duty)
        if pattern == ENTRY:
            return _beep(elapsed_ms, 1000, 100, 2500, self.duty)
        if pattern == LOCATE:
            return _beep(elapsed_ms, 400, 100, 3500, self.duty)
        if pattern == PAIRING:
            return (0, 0, 1 if elapsed_ms % 1000 < 100 else 0)
        steps = _ONE_SHOT.get(pattern)
        if steps is not None:
            for hz, on_ms, off_ms in steps:
                if elapsed_ms < on_ms:
                    return (hz, self.duty, 1)
                if elapsed_ms < on_ms + off_ms:
                    return SILENT
                elapsed_ms -= on_ms + off_ms
        return SILENT
