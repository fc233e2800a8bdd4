"""The firmware image and the flash layout: which files a board gets and where each goes on its
flash. One layout for every way onto a flash: `jikimi flash` copies the build's .mpy files,
the virtual board (`jikimi sim`, tests) the sources, to the same places."""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from jikimi_host.device.boards import board_dir
from jikimi_host.errors import JikimiError
from jikimi_host.paths import FIRMWARE_DIR, REPO_ROOT
from jikimi_host.toolchain.compiler import build, device_sources

PACKAGE_DIR = "lib/jikimi"


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
    entry_points = sorted(FIRMWARE_DIR.glob("*.py"))
    return entry_points + device_sources([FIRMWARE_DIR / "jikimi", board_dir(board)])


def device_path_for(output: str, board: str) -> str:
    """Where a build output (or its source) goes on the device: `firmware/main.py` -> `main.py`,
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
    report = build(image_sources(board), out_dir=out_dir, base=REPO_ROOT)
    if not report.ok:
        details = "\n".join(f"  {error}" for error in report.errors)
        raise JikimiError(f"the build failed: {len(report.errors)} file(s) MicroPython cannot "
                          f"compile:\n{details}")
    files = [
        ImageFile(device_path_for(name, board), out_dir / name, _sha256(out_dir / name), size)
        for name, size in sorted(report.outputs.items())
    ]
    return Image(board, files, out_dir)


def source_layout(board: str) -> dict[str, Path]:
    """The image's sources at their places on the flash: what the virtual board runs (a real
    board gets the build's .mpy files at the same places)."""
    return {device_path_for(str(source.relative_to(REPO_ROOT)), board): source for source in image_sources(board)}


@contextlib.contextmanager
def built_image(board: str) -> Iterator[Image]:
    """The image in a folder of its own (concurrent flashes never share one)."""
    with tempfile.TemporaryDirectory(prefix="jikimi-image-") as folder:
        yield build_image(board, Path(folder))

