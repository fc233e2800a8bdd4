"""The virtual board's host half: a MicroPython process playing the device, its console on a
pseudo-terminal, its pins and outputs over a side channel, and its BLE on a Bumble stack."""
