"""ESP32-DevKitC (ESP32-WROOM-32). A board file is all that changes between boards: the pin
map below is read by jikimi.hw (and by the virtual board, whose map is a copy of this one)."""

NAME = "esp32_devkitc"
CHIP = "esp32"

# name -> (GPIO, active level, pull): an input is active (pressed, door open, ring pulled,
# enclosure open) at that level; an output is on at it. Pull: "up", "down" or None.
PINS = {
    "button": (0, 0, "up"),  # the BOOT button, to GND
    "reed": (4, 1, "up"),  # reed to GND, closed by the magnet: door open = contact open = 1
    "pull_pin": (27, 1, "up"),  # ring contact to GND: ring pulled out = 1
    "tamper": (33, 1, "up"),  # lid switch to GND: lid open = 1
    "buzzer": (25, 1, None),  # piezo through a transistor, PWM
    "led": (2, 1, None),  # the on-board LED
    "battery": (34, 1, None),  # ADC1, input only, through a 1:2 divider
}
BATTERY_DIVIDER = 2
# Inputs that wake the board from deep sleep (RTC GPIOs on the ESP32)
WAKE_PINS = ("button", "reed", "pull_pin")
# Power figures for `jikimi battery-life` (firmware/POWER.md): the ESP32 module on a board built for a
# battery (a DevKitC's LDO, USB-UART bridge and power LED alone draw several mA). Deep sleep with
# the RTC timer and RTC GPIO wake-up: about 10 uA (datasheet); awake with the radio advertising or
# connected, CPU at 160 MHz: about 40 mA on average (datasheet ranges, 130 mA TX peaks); boot
# from deep sleep into main.py: assumed 800 ms; the piezo siren: about 30 mA.
POWER = {"sleep_ua": 10, "awake_ma": 40, "boot_ms": 800, "siren_ma": 30}
# The GC heap MicroPython v1.28 starts with on this chip (the ESP32's MICROPY_GC_INITIAL_HEAP_SIZE in
# ports/esp32/mpconfigport.h). It can grow once into RAM the radio stack needs too (MicroPython
# issue 14293), so the firmware must fit in it: tests/test_heap_budget.py holds it to that.
GC_HEAP_BYTES = 56 * 1024
