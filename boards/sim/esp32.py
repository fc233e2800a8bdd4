"""`esp32` for the virtual board: the deep-sleep wake-up sources of the ESP32 (EXT0: one pin at
either level; EXT1: several pins, "any high" or "all low"), backed by the side channel."""

from simlink import link

WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True
_WAKE_LOW = 4  # machine.Pin.WAKE_LOW / WAKE_HIGH: the side channel's level triggers
_WAKE_HIGH = 5
_DEEPSLEEP = 4


def _watch(pin, level):
    link().send("pin_wake", pin.id, _DEEPSLEEP, _WAKE_HIGH if level else _WAKE_LOW)


def wake_on_ext0(pin, level):
    if pin is not None:
        _watch(pin, level)


def wake_on_ext1(pins, level):
    if pins and not level:
        # "all low" needs every pin low at once; the sim wakes on any, so refuse rather than differ
        raise ValueError("the virtual board models EXT1 'any high' only")
    for pin in pins or ():
        _watch(pin, level)
