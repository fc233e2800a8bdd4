"""Pin map of the virtual board. It copies the ESP32-DevKitC map, so the same firmware binding
drives both; the host half (jikimi_host.sim) reads this file to know which pin is which."""

NAME = "sim"

# name -> (GPIO number, active level): an input is "active" (pressed, open, pulled, tampered)
# at that level; an output is on at that level.
PINS = {
    "button": (0, 0),  # to GND, internal pull-up: pressed = 0
    "reed": (4, 1),  # door contact, open door = 1
    "pull_pin": (5, 1),  # ring pulled out = 1
    "tamper": (18, 1),  # enclosure open = 1
    "buzzer": (25, 1),  # piezo, PWM
    "led": (2, 1),
    "battery": (34, 1),  # ADC through a 1:2 divider
}
BATTERY_DIVIDER = 2
# Inputs that wake the board from deep sleep
WAKE_PINS = ("button", "reed", "pull_pin")
