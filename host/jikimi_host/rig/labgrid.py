"""A labgrid place as the rig's target: reserved, locked and released with labgrid's own client
(`labgrid-client`, from .venv-labgrid or PATH; labgrid needs its pyserial fork, so it is not
imported into the project's venv), its resources read from the coordinator.

    --jikimi-target labgrid:jikimi-1          lock the place named jikimi-1 (fails at once, with
                                              who holds it, if it is locked)
    --jikimi-target labgrid:bench=jikimi      reserve any place with that tag, waiting (up to
                                              --jikimi-place-wait s) while every one is in use

The coordinator is labgrid's LG_COORDINATOR (default 127.0.0.1:20408). A place is what a Jikimi
bench is: a NetworkSerialPort (the board's console through ser2net, RFC 2217), a power port for
labgrid's power driver (optional: without one the power-cut scenarios are skipped), and a
BumbleHCITransport (the radio beside the board, for the phone side). Every call to labgrid has a
timeout, and every failure names the place.
"""

from __future__ import annotations

import ast
import getpass
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from jikimi_host.errors import WaitTimeout
from jikimi_host.paths import REPO_ROOT
from jikimi_host.wait import until_blocking

COORDINATOR_ENV = "LG_COORDINATOR"
DEFAULT_COORDINATOR = "127.0.0.1:20408"  # labgrid's own default
CALL_TIMEOUT_S = 30.0
RESOURCES_TIMEOUT_S = 15.0  # ser2net starts when the place is locked; its port follows
PREFIX = "labgrid:"
# Registers BumbleHCITransport with labgrid-client (an environment config's `imports:`), for the
# commands that build the place's target (power). Not for lock/unlock: given a config, those act
# on the config's RemotePlaces (it has none), not on -p.
ENV_CONFIG = Path(__file__).with_name("labgrid-env.yaml")


class LabgridError(RuntimeError):
    """labgrid refused or did not answer; the message names the place."""


def find_labgrid_client() -> str:
    """labgrid-client: $JIKIMI_LABGRID_CLIENT, the project's .venv-labgrid (`make labgrid`), or PATH."""
    for candidate in (os.environ.get("JIKIMI_LABGRID_CLIENT"), REPO_ROOT / ".venv-labgrid" / "bin" / "labgrid-client",
                      shutil.which("labgrid-client")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise LabgridError("labgrid-client not found: run `make labgrid` (it installs labgrid into .venv-labgrid), "
                       "put labgrid-client on PATH, or set JIKIMI_LABGRID_CLIENT")


# How labgrid-client switches a place's power, by the resource class the coordinator shows: its
# `power` command (power ports, PDUs) or, for a USB relay board (HIDRelay), its `io` command
# (high = relay on = board powered; the resource's `invert` is for the other wiring).
POWER_BY_POWER_COMMAND = ("NetworkPowerPort", "NetworkUSBPowerPort", "NetworkSiSPMPowerPort", "PDUDaemonPort",
                          "TasmotaPowerPort", "NetworkYKUSHPowerPort")
POWER_BY_RELAY = ("NetworkHIDRelay",)


@dataclass(frozen=True)
class PlaceResources:
    console_url: str  # rfc2217://host:port
    power: str | None  # the class of the place's power switch (None: it has none)
    hci_transport: str | None


_RESOURCE_HEADER = re.compile(r"^(Acquired|Orphaned) resource '([^']+)' \(([^)]+)\)")


def parse_show(text: str) -> tuple[str, dict[str, dict], list[str]]:
    """`labgrid-client show`: (place name, acquired resources by class, orphaned resource paths)."""
    name_match = re.search(r"^Place '([^']+)':", text, re.M)
    name = name_match.group(1) if name_match else "?"
    resources: dict[str, dict] = {}
    orphaned: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        header = _RESOURCE_HEADER.match(line)
        if header is None:
            continue
        if header.group(1) == "Orphaned":
            orphaned.append(header.group(3))
            continue
        body = []
        for following in lines[i + 1:]:
            if not following.startswith("  "):
                break
            body.append(following.strip())
        try:
            entry = ast.literal_eval(" ".join(body))
        except (ValueError, SyntaxError):
            continue
        resources[entry.get("cls", header.group(3).split("/")[2])] = entry
    return name, resources, orphaned


class LabgridPlace:
    """One place, reserved or locked by this process's identity, released by `release()`."""

    def __init__(self, spec: str, identity: str | None = None, wait_s: float = 300.0) -> None:
        if not spec:
            raise LabgridError("labgrid: give a place name (labgrid:jikimi-1) or tags (labgrid:bench=jikimi)")
        self.spec = spec
        self.name = spec if "=" not in spec else None
        self.wait_s = wait_s
        self.coordinator = os.environ.get(COORDINATOR_ENV, DEFAULT_COORDINATOR)
        self.identity = identity or os.environ.get("LG_USERNAME") or getpass.getuser()
        self.token: str | None = None
        self.locked = False
        self._power: str | None = None  # its power switch's class, once resources() has looked
        self._client = find_labgrid_client()

    @property
    def label(self) -> str:
        return f"labgrid place {self.name}" if self.name else f"labgrid place matching {self.spec}"

    def _run(self, *args: str, timeout_s: float = CALL_TIMEOUT_S, place: str | None = None,
             env_config: bool = False) -> str:
        command = [self._client, "-x", self.coordinator] + (["-c", str(ENV_CONFIG)] if env_config else [])
        if place is not None:
            command += ["-p", place]
        command += list(args)
        env = dict(os.environ, LG_USERNAME=self.identity)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise LabgridError(f"{self.label}: `labgrid-client {' '.join(args)}` did not answer within {timeout_s:g} s "
                               f"(is the coordinator at {self.coordinator} up?)") from None
        if done.returncode != 0:
            said = " ".join((done.stderr.strip() or done.stdout.strip()).split())
            reason = said.replace("labgrid-client: error: ", "").replace("labgrid-client: Error: ", "")
            reason = reason or f"labgrid-client {args[0]} exited with {done.returncode}"
            raise LabgridError(f"{self.label}: {reason}")
        return done.stdout

    def acquire(self) -> None:
        """Lock the named place, or reserve one with the tags (waiting while all are in use), then lock it."""
        if self.name is not None:
            self._run("lock", place=self.name)
            self.locked = True
            return
        tags = self.spec.replace(",", " ").split()
        out = self._run("reserve", "--shell", *tags)
        found = re.search(r"LG_TOKEN=(\S+)", out)
        if found is None:
            raise LabgridError(f"{self.label}: labgrid-client reserve gave no token: {out.strip()!r}")
        self.token = found.group(1)
        try:
            self._run("wait", self.token, timeout_s=self.wait_s)
        except LabgridError as err:
            self._cancel_reservation()
            if "did not answer" in str(err):
                raise LabgridError(f"{self.label}: none came free within {self.wait_s:g} s (each place with "
                                   "these tags is locked, or none has them: `labgrid-client places -v` lists "
                                   "them; --jikimi-place-wait waits longer)") from None
            raise
        self._run("lock", place=f"+{self.token}")
        self.locked = True
        self.name, _, _ = parse_show(self._run("show", place=f"+{self.token}"))

    def resources(self) -> PlaceResources:
        """The console, power and radio of the locked place (once ser2net serves the console)."""
        def served() -> PlaceResources | None:
            _, found, orphaned = parse_show(self._run("show", place=self.name))
            if orphaned:
                raise LabgridError(f"{self.label}: its exporter is gone ({', '.join(orphaned)} not offered any more)")
            unavailable = [cls for cls, entry in found.items() if not entry.get("avail", True)]
            if unavailable:
                raise LabgridError(f"{self.label}: {', '.join(unavailable)} not available (its exporter lost it)")
            serial = found.get("NetworkSerialPort")
            if serial is None:
                raise LabgridError(f"{self.label}: no serial console (NetworkSerialPort) among its resources "
                                   f"({', '.join(found) or 'none'})")
            params = serial["params"]
            if not params.get("port"):
                return None
            hci = found.get("BumbleHCITransport", {}).get("params", {}).get("transport")
            power = next((cls for cls in found if cls in POWER_BY_POWER_COMMAND + POWER_BY_RELAY), None)
            self._power = power
            # ser2net 4 does not answer RFC 2217 SET_CONTROL as pyserial 3.5 waits for (the
            # reason labgrid ships its own pyserial fork); pyserial's own option skips the wait.
            return PlaceResources(f"rfc2217://{params['host']}:{params['port']}?ign_set_control", power, hci)

        try:
            return until_blocking(served, RESOURCES_TIMEOUT_S,
                                  f"{self.label}: its exporter to start ser2net for the console", poll_s=0.2)
        except WaitTimeout as err:  # a LabgridError like the others: the rig reports them without a traceback
            raise LabgridError(str(err)) from None

    def power(self, on: bool) -> None:
        if self._power is None:
            self.resources()
        if self._power in POWER_BY_RELAY:
            self._run("io", "high" if on else "low", place=self.name, env_config=True)
        elif self._power is not None:
            self._run("power", "on" if on else "off", place=self.name, env_config=True)
        else:
            raise LabgridError(f"{self.label}: no power switch among its resources")

    def _cancel_reservation(self) -> None:
        if self.token is not None:
            try:
                self._run("cancel-reservation", self.token)
            except LabgridError:
                pass  # expires by itself
            self.token = None

    def release(self) -> None:
        """Unlock and cancel the reservation; what fails is left to labgrid's own expiry."""
        try:
            if self.locked and self.name is not None:
                self._run("unlock", place=self.name)
        except LabgridError:
            pass
        self.locked = False
        self._cancel_reservation()
