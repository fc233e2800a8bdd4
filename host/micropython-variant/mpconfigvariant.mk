# The virtual board's interpreter (see mpconfigvariant.h). host/jikimi_host/toolchain/mpbuild.py builds it
# with VARIANT_DIR pointing here and gives the frozen manifest and the BLE flags itself.
