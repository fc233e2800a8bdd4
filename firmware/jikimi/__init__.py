"""Jikimi device firmware (MicroPython-first; the pure modules also run on CPython)."""

# The firmware version reported in STATUS and INFO frames (PROTOCOL.md §6).
VERSION = (0, 1, 0)
