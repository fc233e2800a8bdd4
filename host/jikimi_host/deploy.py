"""`jikimi flash` and `jikimi provision`: the firmware image and a device config onto a board
over its serial port, with mpremote's transport (a device path, `rfc2217://host:port`, or the
virtual board's pty).

One connection per command: enter the raw REPL *without* a soft reset (mpremote's `resume`),
hash what the device holds, copy only what differs (each file written as `NAME.new`, then
renamed, so a cut cable never leaves half a module), hash again to verify, then reset.

Why resume, on every board: the virtual board is the Unix port, where a soft reset (Ctrl-D in
the raw REPL) ends the process; and on an ESP32 a soft reset does not stop the app's hardware
watchdog either, so it buys nothing. Ctrl-C stops the running app in both cases. The app's
watchdog (machine.WDT, cannot be stopped) keeps running after that, so while we hold the REPL
of a board whose app was running we feed it ourselves (`WATCHDOG_MS` below, the app's timeout).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import runpy
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from jikimi_host.paths import BOARDS_DIR, FIRMWARE_DIR, REPO_ROOT

# firmware/jikimi/app.py WATCHDOG_MS (a test checks they agree)
WATCHDOG_MS = 8000
FEED_EVERY_S = 2.0  # well inside WATCHDOG_MS, even on a slow UART
DEFAULT_TIMEOUT_S = 10.0
CONFIG_NAME = "config.json"
PACKAGE_DIR = "lib/jikimi"
# Where `esptool write-flash` puts MicroPython's image, per chip (Espressif's download pages).
MICROPYTHON_OFFSETS = {"esp32": "0x1000", "esp32c3": "0x0", "esp32s3": "0x0"}
ESP_IMAGE_MAGIC = 0xE9


class DeployError(Exception):
    """A problem the user can act on; `exit_code` 2 for bad arguments, 1 for a failure."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def no_repl_message(port: str) -> str:
    return (f"no MicroPython REPL on {port}; flash MicroPython first with --micropython-bin "
            f"(a board running the Jikimi app may be in deep sleep: press its reset button and "
            f"run this again within power.idle_sleep_s, 10 s by default)")


# -- boards and ports -----------------------------------------------------------------------


def known_boards() -> list[str]:
    return sorted(p.parent.name for p in BOARDS_DIR.glob("*/board.py"))


def board_dir(name: str) -> Path:
    if name not in known_boards():
        raise DeployError(f"unknown board {name!r}; known boards: {', '.join(known_boards())}", 2)
    return BOARDS_DIR / name


def board_chip(name: str) -> str:
    return str(runpy.run_path(str(board_dir(name) / "board.py"))["CHIP"])


def board_heap_bytes(name: str) -> int:
    """The GC heap the board's chip starts MicroPython with (GC_HEAP_BYTES in its board.py)."""
    return int(runpy.run_path(str(board_dir(name) / "board.py"))["GC_HEAP_BYTES"])


# Whether the .mpy files `jikimi flash` copies run in the heap a chip starts with. False while
# tests/test_heap_budget.py::test_the_mpy_deployment_runs_in_the_esp32s_heap is an expected
# failure: that xfail is strict and keyed on this, so the day they fit it fails until this says so.
MPY_FITS_THE_STARTING_HEAP = False


def heap_warning(board: str) -> str | None:
    """What `jikimi flash` must say before it copies .mpy files that need more heap than the
    board's chip starts with (None: they fit)."""
    if MPY_FITS_THE_STARTING_HEAP:
        return None
    return (f"warning: as .mpy files (what flash copies) the firmware does not fit the "
            f"{board_heap_bytes(board) // 1024} KiB heap that {board}'s chip starts MicroPython with: the heap "
            "must grow, into RAM its Bluetooth stack needs (measured: bench/bench_heap.py). For a bell that is "
            "relied on, freeze the firmware into your MicroPython build instead (README: \"The heap budget and "
            "the frozen image\").")


def check_port(port: str | None) -> str:
    """The port, if it can exist: a URL (rfc2217://, socket://) or a device path that exists."""
    if not port:
        raise DeployError("no port given: pass --port, e.g. --port /dev/ttyUSB0", 2)
    if "://" not in port and not Path(port).exists():
        raise DeployError(f"no such port: {port} (is the board plugged in?{_ports_hint()})", 2)
    return port


def _ports_hint() -> str:
    try:
        from serial.tools import list_ports

        found = sorted(p.device for p in list_ports.comports())
    except Exception:  # listing is a hint only; never hide the real error behind it
        return ""
    return f" serial ports here: {', '.join(found)}" if found else " no serial ports found here"


# -- the image ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFile:
    device_path: str  # relative to the flash root: the device's cwd at boot ("/" on an ESP32)
    local: Path
    sha256: str
    size: int


@dataclass
class Image:
    board: str
    files: list[ImageFile]
    build_dir: Path

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_sources(board: str) -> list[Path]:
    """main.py, the firmware package and the board folder's modules."""
    from jikimi_host.build import device_sources

    entry_points = sorted(FIRMWARE_DIR.glob("*.py"))
    return entry_points + device_sources([FIRMWARE_DIR / "jikimi", board_dir(board)])


def device_path_for(output: str, board: str) -> str:
    """Where a build output goes on the device: `firmware/main.py` -> `main.py`,
    `firmware/jikimi/x.mpy` -> `lib/jikimi/x.mpy`, `boards/<board>/x.mpy` -> `x.mpy` (the flash
    root comes first on the module path, so the sim's machine shadows the built-in)."""
    parts = Path(output).parts
    if parts[:2] == ("firmware", "jikimi"):
        return "/".join((PACKAGE_DIR, *parts[2:]))
    if parts[0] == "firmware" and len(parts) == 2:
        return parts[1]
    if parts[:2] == ("boards", board) and len(parts) == 3:
        return parts[2]
    raise ValueError(f"build output {output} has no place on the device")


def build_image(board: str, out_dir: Path) -> Image:
    from jikimi_host.build import build

    report = build(image_sources(board), out_dir=out_dir, base=REPO_ROOT)
    if not report.ok:
        details = "\n".join(f"  {error}" for error in report.errors)
        raise DeployError(f"the build failed: {len(report.errors)} file(s) MicroPython cannot "
                          f"compile:\n{details}")
    files = [
        ImageFile(device_path_for(name, board), out_dir / name, _sha256(out_dir / name), size)
        for name, size in sorted(report.outputs.items())
    ]
    return Image(board, files, out_dir)


# -- the device session ---------------------------------------------------------------------

# Everything below that ends up in a string runs on the device: the MicroPython subset, short
# names (it travels over the UART), no f-strings.
_PROBE = """import sys
_m=sys.modules
_app='jikimi.app' in _m
_had='board' in _m
try:
 import board
 _n=board.NAME
except ImportError:
 _n=None
except Exception as e:
 _n='?'+repr(e)
if not _had and 'board' in _m:
 del _m['board']
print(repr((sys.platform,_app,_n)))
"""

_HASHER = """import hashlib,binascii
def _h(p):
 try:
  f=open(p,'rb')
 except OSError:
  return '-'
 h=hashlib.sha256();b=bytearray(512);v=memoryview(b)
 while 1:
  n=f.readinto(b)
  if not n:
   break
  h.update(v[:n])
 f.close()
 return binascii.hexlify(h.digest()).decode()
"""

_LISTDIR = """import os
try:
 print(repr(os.listdir(%r)))
except OSError:
 print('None')
"""

_FEED = """import machine
try:
 machine.WDT(timeout=%d).feed()
except Exception:
 pass
"""


@dataclass(frozen=True)
class DeviceInfo:
    platform: str  # "esp32", or "linux" for the virtual board
    app_was_running: bool  # Ctrl-C stopped the firmware app (its watchdog still runs)
    board: str | None  # board.NAME of the board.py already there, if any


class DeviceSession:
    """One raw-REPL session with a MicroPython board over a serial port."""

    def __init__(self, port: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.port = port
        self._last_feed = 0.0
        self._feed_watchdog = False
        try:
            with _quiet():
                self.transport = SerialTransport(port, baudrate=115200)
        except (TransportError, OSError, ValueError) as err:
            raise DeployError(f"cannot open {port}: {err} (is another program using it, e.g. "
                              f"`jikimi monitor`? on Linux, are you in the dialout group?)") from err
        try:
            with _quiet():  # mpremote prints what it read when it cannot enter the raw REPL
                self.transport.enter_raw_repl(soft_reset=False, timeout_overall=timeout_s)
            self.info = self._probe()
        except (TransportError, OSError, ValueError, SyntaxError) as err:
            self._close_port()
            raise DeployError(no_repl_message(port)) from err
        if self.info.app_was_running:
            self._feed_watchdog = True
            self.keep_alive(force=True)

    # Every transport call goes through here so that errors say what was being done.
    def exec(self, code: str, doing: str) -> str:
        from mpremote.transport import TransportError

        try:
            return self.transport.exec(code).decode(errors="replace")
        except TransportError as err:
            raise DeployError(f"{self.port}: {doing} failed: {_last_line(err)}") from err

    def _probe(self) -> DeviceInfo:
        import ast

        text = self.transport.exec(_PROBE).decode(errors="replace").strip().splitlines()[-1]
        platform, app_running, board = ast.literal_eval(text)
        return DeviceInfo(str(platform), bool(app_running), board)

    def keep_alive(self, force: bool = False) -> None:
        """Feed the stopped app's watchdog, at most every FEED_EVERY_S."""
        if self._feed_watchdog and (force or time.monotonic() - self._last_feed > FEED_EVERY_S):
            self.exec(_FEED % WATCHDOG_MS, "feeding the watchdog")
            self._last_feed = time.monotonic()

    def hashes(self, paths: list[str]) -> dict[str, str | None]:
        """sha256 (hex) of each file on the device; None where there is no such file."""
        self.keep_alive()
        code = _HASHER + "for _p in %r:\n print(_p,_h(_p))\n" % (paths,)
        found: dict[str, str | None] = {}
        for line in self.exec(code, "hashing the device's files").splitlines():
            name, _, digest = line.strip().partition(" ")
            if name in paths:
                found[name] = None if digest == "-" else digest
        missing = [p for p in paths if p not in found]
        if missing:
            raise DeployError(f"{self.port}: the device did not report a hash for {', '.join(missing)}")
        return found

    def listdir(self, path: str) -> list[str] | None:
        import ast

        self.keep_alive()
        return ast.literal_eval(self.exec(_LISTDIR % path, f"listing {path}").strip())

    def makedirs(self, directory: str) -> None:
        parts = [p for p in directory.split("/") if p]
        for i in range(1, len(parts) + 1):
            self.exec("import os\ntry:\n os.mkdir(%r)\nexcept OSError:\n pass\n" % "/".join(parts[:i]),
                      f"creating {directory}")

    def write_atomically(self, path: str, data: bytes,
                         progress: Callable[[int], None] | None = None) -> None:
        """Write `path.new`, then rename it over `path`: the old file or the new one, never half."""
        from mpremote.transport import TransportError

        if "/" in path:
            self.makedirs(path.rsplit("/", 1)[0])
        temporary = path + ".new"

        def on_chunk(written: int, total: int) -> None:
            self.keep_alive()
            if progress is not None:
                progress(written)

        self.keep_alive()
        try:
            self.transport.fs_writefile(temporary, data, chunk_size=512, progress_callback=on_chunk)
        except (TransportError, OSError) as err:
            raise DeployError(f"{self.port}: writing {path} failed: {_last_line(err)}") from err
        if not data and progress is not None:
            progress(0)
        self.exec("import os\nos.rename(%r,%r)\n" % (temporary, path), f"renaming {temporary} to {path}")

    def remove(self, path: str) -> None:
        self.exec("import os\nos.remove(%r)\n" % path, f"removing {path}")

    def reset(self) -> None:
        """Hard-reset the board (machine.reset(), as `mpremote reset` does); the session ends."""
        from mpremote.transport import TransportError

        try:
            self.transport.exec_raw_no_follow("import time,machine\ntime.sleep_ms(100)\nmachine.reset()\n")
        except TransportError as err:
            raise DeployError(f"{self.port}: resetting the board failed: {err}") from err
        self._close_port()

    def close(self) -> None:
        """Leave the raw REPL (the board stays at its REPL) and release the port."""
        if getattr(self, "transport", None) is None:
            return
        with contextlib.suppress(Exception):
            self.transport.exit_raw_repl()
        self._close_port()

    def _close_port(self) -> None:
        transport, self.transport = getattr(self, "transport", None), None
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()

    def __enter__(self) -> "DeviceSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _last_line(err: Exception) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def check_board_matches(session: DeviceSession, board: str, force: bool) -> None:
    found = session.info.board
    if found is not None and found != board and not force:
        raise DeployError(
            f"{session.port} holds board {found!r}, not {board!r}: pass --board {found}, "
            f"or --force to replace it", 2)


# -- flash ----------------------------------------------------------------------------------


@dataclass
class FlashReport:
    board: str
    device: DeviceInfo
    copied: list[ImageFile] = field(default_factory=list)
    unchanged: list[ImageFile] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # stale modules that would shadow the image
    reset: bool = False

    @property
    def copied_bytes(self) -> int:
        return sum(f.size for f in self.copied)


class FlashProgress:
    """What flash_image() reports as it copies (this base shows nothing; the CLI's draws a
    rich progress bar)."""

    def start(self, files: list[ImageFile]) -> None:
        pass

    def advance(self, file: ImageFile, written: int) -> None:
        pass

    def done(self) -> None:
        pass


def plan_removals(session: DeviceSession, image: Image) -> list[str]:
    """Stale files that would change what the image runs: sources (`x.py` beside or instead of
    the image's `x.mpy`, which MicroPython would import first) and modules of the package that
    the image no longer has."""
    wanted = {f.device_path for f in image.files}
    shadows = [f.device_path[:-4] + ".py" for f in image.files if f.device_path.endswith(".mpy")]
    stale = [path for path, digest in session.hashes(shadows).items() if digest is not None]
    for name in session.listdir(PACKAGE_DIR) or []:
        path = f"{PACKAGE_DIR}/{name}"
        if path not in wanted and path not in stale and name.endswith((".py", ".mpy", ".new")):
            stale.append(path)
    return sorted(stale)


def flash_image(session: DeviceSession, image: Image, extra: dict[str, bytes] | None = None,
                progress: FlashProgress | None = None, force: bool = False,
                verify: bool = True) -> FlashReport:
    """Copy the files of `image` (and `extra` files, e.g. a config) that differ on the device."""
    check_board_matches(session, image.board, force)
    files = list(image.files)
    for name, data in (extra or {}).items():
        local = image.build_dir / name
        local.write_bytes(data)
        files.append(ImageFile(name, local, hashlib.sha256(data).hexdigest(), len(data)))
    report = FlashReport(image.board, session.info)
    on_device = session.hashes([f.device_path for f in files])
    for file in files:
        (report.unchanged if on_device[file.device_path] == file.sha256 else report.copied).append(file)
    report.removed = plan_removals(session, image)
    progress = progress or FlashProgress()
    progress.start(report.copied)
    try:
        for file in report.copied:
            session.write_atomically(file.device_path, file.local.read_bytes(),
                                     lambda written, f=file: progress.advance(f, written))
        for path in report.removed:
            session.remove(path)
    finally:
        progress.done()
    if verify:
        verify_files(session, files)
    return report


def verify_files(session: DeviceSession, files: list[ImageFile]) -> None:
    on_device = session.hashes([f.device_path for f in files])
    wrong = [f.device_path for f in files if on_device[f.device_path] != f.sha256]
    if wrong:
        raise DeployError(f"verify failed: the device's copy differs from the image (sha256) for "
                          f"{', '.join(wrong)}")


def write_micropython(port: str, board: str, firmware: Path) -> None:
    """Erase the chip and write MicroPython's firmware with esptool (library call)."""
    if not firmware.is_file():
        raise DeployError(f"no such MicroPython firmware file: {firmware}", 2)
    head = firmware.read_bytes()[:1]
    if not head or head[0] != ESP_IMAGE_MAGIC:
        raise DeployError(f"{firmware} is not an ESP32 firmware image (no 0xE9 magic byte); "
                          f"download the .bin for your chip from micropython.org/download", 2)
    chip = board_chip(board)
    if chip not in MICROPYTHON_OFFSETS:
        raise DeployError(f"board {board}: no known MicroPython offset for chip {chip!r}", 2)
    import esptool
    import serial

    common = ["--chip", chip, "--port", port, "--baud", "460800"]
    try:
        esptool.main([*common, "erase-flash"])
        esptool.main([*common, "write-flash", MICROPYTHON_OFFSETS[chip], str(firmware)])
    except SystemExit as err:
        raise DeployError(f"esptool failed (exit {err.code}) writing MicroPython to {port}") from err
    except (esptool.FatalError, serial.SerialException, OSError, StopIteration) as err:
        raise DeployError(f"esptool failed writing MicroPython to {port}: {err}") from err


def wait_for_repl(port: str, timeout_s: float) -> DeviceSession:
    """A session, retrying while a board that was just written boots (its first boot makes
    the filesystem, which takes a few seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return DeviceSession(port, timeout_s=min(5.0, max(1.0, deadline - time.monotonic())))
        except DeployError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def built_image(board: str) -> Iterator[Image]:
    """The image in a folder of its own (concurrent flashes never share one)."""
    with tempfile.TemporaryDirectory(prefix="jikimi-image-") as folder:
        yield build_image(board, Path(folder))


# -- provision ------------------------------------------------------------------------------


def generate_passkey() -> str:
    """Six random digits, leading zeros kept (secrets: a passkey is a credential)."""
    return "%06d" % secrets.randbelow(1_000_000)


_SETTING = re.compile(r"^(?P<path>[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)?)=(?P<value>.*)$")


def apply_setting(data: dict, setting: str) -> None:
    """`section.key=value` (or `key=value`) into `data`; the value is JSON if it parses
    (5, true, "x", [..]), else a string."""
    match = _SETTING.match(setting)
    if not match:
        raise DeployError(f"--set {setting!r}: expected section.key=value, e.g. gestures.hold_ms=3000", 2)
    try:
        value = json.loads(match["value"])
    except ValueError:
        value = match["value"]
    except RecursionError:
        raise DeployError(f"--set {match['path']}=...: the value is nested too deeply", 2) from None
    *sections, key = match["path"].split(".")
    target = data
    for section in sections:
        existing = target.setdefault(section, {})
        if not isinstance(existing, dict):
            raise DeployError(f"--set {setting!r}: {section} is not a section", 2)
        target = existing
    target[key] = value


def device_config(board: str, passkey: str, name: str = "", roles: list[str] | None = None,
                  settings: list[str] = ()) -> dict:
    """The config.json to write; DeployError (exit 2) naming every bad field."""
    from jikimi import config as cfg

    data: dict = {"passkey": passkey, "board": board, "name": name, "roles": roles or ["panic"]}
    for setting in settings:
        apply_setting(data, setting)
    _, errors = cfg.validate(data, boards=known_boards())
    if errors:
        raise DeployError("the config is not valid:\n" + "\n".join(f"  {e}" for e in errors), 2)
    return data


def config_bytes(config: dict) -> bytes:
    return (json.dumps(config, sort_keys=True) + "\n").encode()


def passkey_label(name: str, passkey: str) -> str:
    return f"Jikimi {name}  passkey {passkey}"


def write_config(session: DeviceSession, config: dict) -> None:
    """config.json, atomically (config.json.new, then rename), then verified by hash."""
    data = config_bytes(config)
    session.write_atomically(CONFIG_NAME, data)
    digest = hashlib.sha256(data).hexdigest()
    if session.hashes([CONFIG_NAME])[CONFIG_NAME] != digest:
        raise DeployError(f"verify failed: {CONFIG_NAME} on the device differs from what was written")
