"""Run code under the real MicroPython interpreter (the Unix port).

The binary is `$JIKIMI_MICROPYTHON` if set, else the project's own build: MicroPython v1.28.0's
Unix port with the real `bluetooth` module on NimBLE, built from the pinned source into build/
by `make micropython` (host/jikimi_host/toolchain/mpbuild.py; `make test`, `make demo` and `make bench`
run it first). There is no fallback to `micropython` on PATH: an interpreter of another version
or without `bluetooth` would make tests pass or fail for reasons that are not the firmware's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from jikimi_host.errors import JikimiError
from jikimi_host.toolchain import mpbuild
from jikimi_host.paths import FIRMWARE_DIR, REPO_ROOT

ENV_VAR = "JIKIMI_MICROPYTHON"
DEFAULT_TIMEOUT_S = 60.0


class MicroPythonNotFound(JikimiError):
    """No usable micropython binary."""


class MicroPythonFailed(JikimiError):
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
    """`$JIKIMI_MICROPYTHON`, else the cached NimBLE build; MicroPythonNotFound naming both."""
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
            "micropython binary (the Unix port) or unset it to use the project's build "
            "(`make micropython`)"
        )
    built = mpbuild.binary_path(REPO_ROOT)
    if built.is_file() and os.access(built, os.X_OK):
        return built
    raise MicroPythonNotFound(
        f"no micropython binary: the project's build {built} is missing; run `make micropython` "
        f"(`make test` runs it first), or set {ENV_VAR} to the path of a micropython Unix-port "
        "binary"
    )


def find_budget_micropython(frozen: bool) -> Path:
    """A 32-bit build for the heap budget: stock (mpbuild's nimble32), or with the firmware frozen
    in (frozen32), whose stamp covers the firmware's sources, so that after a firmware edit it is
    missing until `make micropython` (a few seconds: only the frozen modules are rebuilt)."""
    config = mpbuild.BUDGET_CONFIG if frozen else mpbuild.STOCK32_CONFIG
    built = mpbuild.binary_path(REPO_ROOT, config)
    if built.is_file() and os.access(built, os.X_OK):
        return built
    raise MicroPythonNotFound(
        f"no 32-bit micropython ({config.name}) for the heap budget: {built} is missing (or the "
        "firmware changed since it was built); run `make micropython` (`make test` runs it first)"
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
    binary: Path | None = None,
) -> MicroPythonResult:
    """Run `code` (a snippet) or `script` under MicroPython with `path` as its module path.

    Returns the exit code and output; call `.check()` to raise MicroPythonFailed on failure.
    `binary`: another interpreter than find_micropython()'s (the 32-bit one, say).
    """
    if (code is None) == (script is None):
        raise ValueError("give exactly one of code= or script=")
    command = [str(binary or find_micropython())]
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
