# Freeze Jikimi into your own MicroPython for the ESP32-C3 (README, "Frozen image"): the firmware
# package and this board's pin map become bytecode in flash, not in RAM. From MicroPython v1.28's
# ports/esp32, with ESP-IDF set up:
#   make BOARD=ESP32_GENERIC_C3 FROZEN_MANIFEST=/path/to/jikimi/boards/esp32c3/manifest.py
# Paths here are relative to this file.
include("$(PORT_DIR)/boards/manifest.py")  # the port's own frozen modules (asyncio among them)
package("jikimi", base_path="../../firmware")
module("board.py")
