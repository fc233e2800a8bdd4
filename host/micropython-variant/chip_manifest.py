# What a chip has in C, as the virtual board has it in Python: frozen into the project's 32-bit
# Unix-port builds (host/jikimi_host/toolchain/mpbuild.py: nimble32 and frozen32), so that their
# code and names are in the interpreter's ROM as the real machine and esp32 modules are in a
# chip's flash, and the heap budget (bench/bench_heap.py) sees only what they allocate. The
# virtual board on the 64-bit interpreter loads them from its flash instead.
module("simlink.py", base_path="../../boards/sim")
module("machine.py", base_path="../../boards/sim")
module("esp32.py", base_path="../../boards/sim")
