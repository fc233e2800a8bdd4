"""Jikimi host side (CPython only): firmware build, MicroPython runner, relay, rig and CLI."""
