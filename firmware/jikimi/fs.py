"""Filesystem helpers shared by the modules that keep state on the device's flash."""

import os


def exists(path):
    """True if `path` exists (MicroPython has no os.path)."""
    try:
        os.stat(path)
        return True
    except OSError:
        return False
