"""The project's MicroPython toolchain: the interpreter built from pinned source (mpbuild), device
code compiled with mpy-cross (compiler), and code run under the interpreter (interpreter)."""
