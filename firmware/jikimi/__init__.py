"""Jikimi device firmware (MicroPython-first; the pure modules also run on CPython)."""

# The firmware version reported in STATUS and INFO frames (PROTOCOL.md §6).
VERSION = (0, 1, 0)


def unload(name):
    """Drop the submodule `name`, needed only at boot, so that its code (in the heap, as .mpy) is
    collected once nothing else holds its functions. jikimi.config is about 6 KB of the 56 KiB an
    ESP32 starts with: the core modules read their defaults from it at import and drop the name
    (tests/test_heap_budget.py)."""
    import sys

    sys.modules.pop("jikimi." + name, None)
    if name in globals():
        del globals()[name]
