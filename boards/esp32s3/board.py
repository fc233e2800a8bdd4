"""ESP32-S3 (e.g. ESP32-S3-DevKitC-1)."""

NAME = "esp32s3"
CHIP = "esp32s3"

PINS = {
    "button": (0, 0, "up"),  # the BOOT button, to GND
    "reed": (4, 1, "up"),
    "pull_pin": (5, 1, "up"),
    "tamper": (6, 1, "up"),
    "buzzer": (15, 1, None),
    "led": (16, 1, None),  # GPIO48 is the on-board RGB LED (WS2812), not a plain LED
    "battery": (1, 1, None),  # ADC1 channel 0, 1:2 divider
}
BATTERY_DIVIDER = 2
WAKE_PINS = ("button", "reed", "pull_pin")
# Power figures for `jikimi battery-life` (firmware/POWER.md): deep sleep about 8 uA, awake with the
# radio about 35 mA, boot from deep sleep assumed 800 ms, piezo about 30 mA.
POWER = {"sleep_ua": 8, "awake_ma": 35, "boot_ms": 800, "siren_ma": 30}
# The GC heap MicroPython v1.28 starts with on this chip (the S3's MICROPY_GC_INITIAL_HEAP_SIZE in
# ports/esp32/mpconfigport.h). It can grow once into RAM the radio stack needs too (MicroPython
# issue 14293), so the firmware must fit in it: tests/test_heap_budget.py holds it to that.
GC_HEAP_BYTES = 64 * 1024
