"""A labgrid bench of virtual boards on loopback, for the tests and the benchmark: a real
`labgrid-coordinator`, `jikimi sim` boards provisioned with the scenario config and offered as
places (sim/labgrid_export.py), one real `labgrid-exporter` serving them (ser2net for the
consoles), and the places created and tagged with labgrid-client, as a lab admin would.

    with LabgridBench(folder, ["jikimi-1", "jikimi-2"]) as bench:
        ...  # bench.env has LG_COORDINATOR; `--jikimi-target labgrid:bench=jikimi`

Everything it starts is stopped on exit, on failure too; the coordinator keeps its places file in
`folder`, and every port is chosen free, so benches can run side by side.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Sequence

from jikimi_host.rig.labgrid import COORDINATOR_ENV, ENV_CONFIG, LabgridError, find_labgrid_client
from jikimi_host.processes import stop_popen
from jikimi_host.rig.targets import SCENARIO_CONFIG
from jikimi_host.wait import until_blocking

EXPORTER_NAME = "jikimi-bench"
TAGS = {"bench": "jikimi"}
START_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0  # longer than a lone process gets: the exporter and `jikimi sim` stop children of their own


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LabgridBench:
    def __init__(self, folder: Path, places: Sequence[str]) -> None:
        self.folder = folder
        self.places = list(places)
        self.bin = Path(find_labgrid_client()).parent
        self.coordinator = f"127.0.0.1:{free_port()}"
        self.env = dict(os.environ, **{COORDINATOR_ENV: self.coordinator})
        self.env.pop("LG_TOKEN", None)
        self.env.pop("LG_PLACE", None)
        self._processes: list[subprocess.Popen] = []
        self.exporter: subprocess.Popen | None = None
        self.consoles: dict[str, str] = {}  # place -> its board's pty

    def _start(self, command: list[str], log_name: str, **kwargs) -> subprocess.Popen:
        log = open(self.folder / log_name, "w")
        process = subprocess.Popen(command, stdout=kwargs.pop("stdout", log), stderr=log, env=self.env,
                                   cwd=self.folder, **kwargs)
        self._processes.append(process)
        return process

    def _wait_for_log(self, log_name: str, pattern: str, process: subprocess.Popen) -> None:
        """Until `pattern` is in the log of `process` (started with `_start`): it is up."""
        path = self.folder / log_name

        def text() -> str:
            return path.read_text(errors="replace") if path.exists() else ""

        until_blocking(lambda: re.search(pattern, text()), START_TIMEOUT_S,
                       f"labgrid bench: {log_name.split('.')[0]} to start ({pattern!r} in {path})",
                       log=lambda: "\n".join(text().splitlines()[-15:]),
                       hopeless=lambda: "it exited" if process.poll() is not None else None)

    def client(self, *args: str, place: str | None = None, timeout_s: float = 30, env_config: bool = False) -> str:
        """labgrid-client as the lab's admin (`env_config`: with the rig's environment config, for
        commands that build the place's target, such as power)."""
        command = [str(self.bin / "labgrid-client"), "-x", self.coordinator]
        command += ["-c", str(ENV_CONFIG)] if env_config else []
        command += ["-p", place] if place else []
        done = subprocess.run(command + list(args), capture_output=True, text=True, env=self.env, timeout=timeout_s)
        if done.returncode != 0:
            raise LabgridError(f"labgrid bench: labgrid-client {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def __enter__(self) -> "LabgridBench":
        try:
            self._set_up()
        except BaseException:
            self.close()
            raise
        return self

    def _set_up(self) -> None:
        coordinator = self._start([str(self.bin / "labgrid-coordinator"), "-l", self.coordinator], "coordinator.log")
        config = self.folder / "scenario-config.json"
        config.write_text(json.dumps(SCENARIO_CONFIG))
        sims = []
        for name in self.places:
            sim = self._start([sys.executable, "-m", "jikimi_host.cli", "sim", "--quiet", "--flash",
                               str(self.folder / name), "--config", str(config), "--labgrid-place", name,
                               "--labgrid-exporter", str(self.folder / f"{name}.yaml")],
                              f"sim-{name}.log", stdout=subprocess.PIPE, text=True)
            sims.append((name, sim))
        for name, sim in sims:
            self.consoles[name] = self._read_sim(name, sim)
        self._wait_for_log("coordinator.log", "Coordinator ready", coordinator)
        exporter_config = self.folder / "exporter.yaml"
        exporter_config.write_text("".join((self.folder / f"{name}.yaml").read_text() for name in self.places))
        self.start_exporter()
        for name in self.places:
            self.client("create", place=name)
            self.client("add-match", f"{EXPORTER_NAME}/{name}/*", place=name)
            self.client("set-tags", *(f"{k}={v}" for k, v in TAGS.items()), place=name)

    def _read_sim(self, name: str, sim: subprocess.Popen) -> str:
        assert sim.stdout is not None
        pty = None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = sim.stdout.readline()
            if not line:
                break
            if line.startswith("pty: "):
                pty = line.split()[1]
            if line.startswith("running"):
                break
        if pty is None or not (self.folder / f"{name}.yaml").exists():
            raise LabgridError(f"labgrid bench: `jikimi sim` for {name} did not come up; see {self.folder}/sim-{name}.log")
        self._drain(sim.stdout, self.folder / f"sim-{name}.out")
        return pty

    @staticmethod
    def _drain(stream: IO[str], log: Path) -> None:
        """Keep reading a board's stdout into its log, so that it never blocks on a full pipe."""
        import threading

        def copy() -> None:
            with open(log, "a") as out:
                for line in stream:
                    out.write(line)
                    out.flush()

        threading.Thread(target=copy, daemon=True).start()

    def start_exporter(self) -> None:
        self.exporter = self._start([str(self.bin / "labgrid-exporter"), "-c", self.coordinator, "--name",
                                     EXPORTER_NAME, "--hostname", "127.0.0.1", str(self.folder / "exporter.yaml")],
                                    "exporter.log")
        self._wait_for_log("exporter.log", "connected to coordinator", self.exporter)

    def stop_exporter(self) -> None:
        """The exporter goes away (its host lost power, say): its resources leave the coordinator."""
        if self.exporter is not None:
            stop_popen(self.exporter, STOP_GRACE_S)
            self.exporter = None

    def close(self) -> None:
        for process in reversed(self._processes):  # the exporter (and its ser2net) before the boards
            stop_popen(process, STOP_GRACE_S)
        self._processes.clear()

    def __exit__(self, *exc: object) -> None:
        self.close()
