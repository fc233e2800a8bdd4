"""ESP32-C3 (e.g. ESP32-C3-DevKitM-1). Only GPIO0-5 can wake the C3 from deep sleep, so the
inputs that must wake it are there; its BOOT button (GPIO9) cannot, and is not used."""

NAME = "esp32c3"
CHIP = "esp32c3"

PINS = {
    "button": (3, 0, "up"),  # external button to GND
    "reed": (4, 1, "up"),
    "pull_pin": (5, 1, "up"),
    "tamper": (1, 1, "up"),
    "buzzer": (6, 1, None),
    "led": (7, 1, None),  # GPIO8 is the on-board RGB LED (WS2812), not a plain LED
    "battery": (0, 1, None),  # ADC1 channel 0, 1:2 divider
}
BATTERY_DIVIDER = 2
WAKE_PINS = ("button", "reed", "pull_pin")
# Power figures for `jikimi battery-life` (firmware/POWER.md): deep sleep about 5 uA, awake with the
# radio about 25 mA (RISC-V at 160 MHz), boot from deep sleep assumed 600 ms, piezo about 30 mA.
POWER = {"sleep_ua": 5, "awake_ma": 25, "boot_ms": 600, "siren_ma": 30}
# The GC heap MicroPython v1.28 starts with on this chip (the C3's MICROPY_GC_INITIAL_HEAP_SIZE in
# ports/esp32/mpconfigport.h). It can grow once into RAM the radio stack needs too (MicroPython
# issue 14293), so the firmware must fit in it: tests/test_heap_budget.py holds it to that.
GC_HEAP_BYTES = 64 * 1024
