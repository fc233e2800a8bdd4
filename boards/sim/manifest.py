# The firmware frozen into the project's 32-bit Unix-port build (host/jikimi_host/toolchain/mpbuild.py,
# config nimble32): the same package lines as each real board's manifest.py. Paths are relative
# to this file. The virtual board's machine, esp32 and simlink stay on its flash: on a chip they
# are C, so the heap budget counts them apart (bench/bench_heap.py).
package("jikimi", base_path="../../firmware")
module("board.py")
