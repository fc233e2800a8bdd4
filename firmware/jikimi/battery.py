"""Battery level from voltage readings, with a low-battery flag that does not flap.

The flag turns on when `confirm` consecutive readings are at or below `low_mv`, and off when
`confirm` consecutive readings are at or above `recover_mv` (> low_mv): the gap between the two
thresholds is the hysteresis, the consecutive count filters a noisy ADC or a load dip while the
siren runs. The percentage is linear between `empty_mv` and `full_mv`, clamped to 0..100.
"""

from jikimi.config import BATTERY_CONFIRM, BATTERY_EMPTY_MV, BATTERY_FULL_MV, BATTERY_LOW_MV, BATTERY_RECOVER_MV


class Battery:
    def __init__(self, low_mv=BATTERY_LOW_MV, recover_mv=BATTERY_RECOVER_MV,
                 empty_mv=BATTERY_EMPTY_MV, full_mv=BATTERY_FULL_MV,
                 confirm=BATTERY_CONFIRM):
        self.low_mv = low_mv
        self.recover_mv = recover_mv
        self.empty_mv = empty_mv
        self.full_mv = full_mv
        self.confirm = confirm
        self.mv = full_mv
        self.low = False
        self._streak = 0  # consecutive readings on the other side of the flag's threshold

    @property
    def pct(self):
        span = self.full_mv - self.empty_mv
        pct = (self.mv - self.empty_mv) * 100 // span
        return 0 if pct < 0 else 100 if pct > 100 else pct

    def reading(self, mv):
        """Take one reading; return True if the low flag changed."""
        self.mv = mv
        crossing = mv >= self.recover_mv if self.low else mv <= self.low_mv
        if not crossing:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak < self.confirm:
            return False
        self._streak = 0
        self.low = not self.low
        return True
