// The virtual board's interpreter: MicroPython's Unix port, "standard" variant, with one change.
//
// The standard variant waits in select.poll and asyncio with one blocking poll() for the whole
// timeout (MICROPY_PY_SELECT_POSIX_OPTIMISATIONS). Nothing wakes that poll() when NimBLE has an
// event: the Unix port's HCI thread only schedules the stack's work onto the interpreter, so a
// firmware waiting 1 s in asyncio answered the phone up to 1 s late (a passkey pairing took
// 39 s). An ESP32 waits in a loop that handles scheduled work as it arrives; with the
// optimisation off, the Unix port does the same (a 0.5 ms wait per turn), and a pairing takes
// 0.3 s.
#define MICROPY_CONFIG_ROM_LEVEL (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)
#include "ports/unix/variants/mpconfigvariant_common.h"
#undef MICROPY_PY_SELECT_POSIX_OPTIMISATIONS
#define MICROPY_PY_SELECT_POSIX_OPTIMISATIONS (0)
