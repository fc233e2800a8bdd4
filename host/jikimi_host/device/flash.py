"""`jikimi flash`'s work on a session: copy the image's files that differ (each written as
`NAME.new`, then renamed), remove stale modules that would shadow it, verify by hash; and, before
that if asked, MicroPython itself onto the chip with esptool."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from jikimi_host.device.boards import load_board
from jikimi_host.device.image import PACKAGE_DIR, Image, ImageFile
from jikimi_host.device.session import DeviceInfo, DeviceSession, check_board_matches
from jikimi_host.errors import JikimiError, UsageError

# Where `esptool write-flash` puts MicroPython's image, per chip (Espressif's download pages).
MICROPYTHON_OFFSETS = {"esp32": "0x1000", "esp32c3": "0x0", "esp32s3": "0x0"}
ESP_IMAGE_MAGIC = 0xE9


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
        raise JikimiError(f"verify failed: the device's copy differs from the image (sha256) for "
                          f"{', '.join(wrong)}")


def write_micropython(port: str, board: str, firmware: Path) -> None:
    """Erase the chip and write MicroPython's firmware with esptool (library call)."""
    if not firmware.is_file():
        raise UsageError(f"no such MicroPython firmware file: {firmware}")
    head = firmware.read_bytes()[:1]
    if not head or head[0] != ESP_IMAGE_MAGIC:
        raise UsageError(f"{firmware} is not an ESP32 firmware image (no 0xE9 magic byte); "
                          f"download the .bin for your chip from micropython.org/download")
    chip = load_board(board).chip
    if chip not in MICROPYTHON_OFFSETS:
        raise UsageError(f"board {board}: no known MicroPython offset for chip {chip!r}")
    import esptool
    import serial

    common = ["--chip", chip, "--port", port, "--baud", "460800"]
    try:
        esptool.main([*common, "erase-flash"])
        esptool.main([*common, "write-flash", MICROPYTHON_OFFSETS[chip], str(firmware)])
    except SystemExit as err:
        raise JikimiError(f"esptool failed (exit {err.code}) writing MicroPython to {port}") from err
    except (esptool.FatalError, serial.SerialException, OSError, StopIteration) as err:
        raise JikimiError(f"esptool failed writing MicroPython to {port}: {err}") from err
