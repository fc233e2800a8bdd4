"""Pin map of the virtual board: a copy of the ESP32-DevKitC's (tests check they match), so the
same binding drives both. The host half (jikimi_host.sim) reads this file too."""

NAME = "sim"
CHIP = "esp32"

# name -> (GPIO, active level, pull); see boards/esp32_devkitc/board.py
PINS = {
    "button": (0, 0, "up"),
    "reed": (4, 1, "up"),
    "pull_pin": (27, 1, "up"),
    "tamper": (33, 1, "up"),
    "buzzer": (25, 1, None),
    "led": (2, 1, None),
    "battery": (34, 1, None),
}
BATTERY_DIVIDER = 2
WAKE_PINS = ("button", "reed", "pull_pin")
# Power figures: the DevKitC's (the virtual board draws no current; the model uses these).
POWER = {"sleep_ua": 10, "awake_ma": 40, "boot_ms": 800, "siren_ma": 30}
# The GC heap MicroPython v1.28 starts with on this chip (the DevKitC's: the ESP32's MICROPY_GC_INITIAL_HEAP_SIZE in
# ports/esp32/mpconfigport.h). It can grow once into RAM the radio stack needs too (MicroPython
# issue 14293), so the firmware must fit in it: tests/test_heap_budget.py holds it to that.
GC_HEAP_BYTES = 56 * 1024
