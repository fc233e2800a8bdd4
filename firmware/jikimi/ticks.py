"""MicroPython ticks arithmetic, identical on every runtime.

Core modules take `now_ms` as a tick value and only ever compare ticks with `diff`. The period
is 2**30 ms (about 12.4 days), as `time.ticks_ms()` on ESP32. We do not use `time.ticks_diff`
because its period is 2**62 on 64-bit builds (the Unix port); masking to 30 bits gives the same
answer for any tick source whose period is a multiple of 2**30, so the same code behaves the
same on the device, under the Unix port and under CPython.

A difference is only meaningful within half a period (about 6.2 days); the core clears or
re-arms every stored timestamp long before that, as long as it is polled at least once a day.
"""

try:
    from micropython import const
except ImportError:

    def const(value):
        return value


PERIOD = const(1 << 30)
_MASK = const((1 << 30) - 1)
_HALF = const(1 << 29)


def diff(later, earlier):
    """Signed milliseconds from `earlier` to `later`, in -2**29 .. 2**29-1."""
    return ((later - earlier + _HALF) & _MASK) - _HALF


def add(ticks, delta_ms):
    """The tick value `delta_ms` after `ticks` (delta may be negative)."""
    return (ticks + delta_ms) & _MASK


def reached(now, deadline):
    """True once `now` is at or after `deadline`."""
    return diff(now, deadline) >= 0
