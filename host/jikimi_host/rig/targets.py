"""What a scenario drives: the firmware on a virtual board, or on a real board over its serial
port. One interface, so that the same scenario runs on both.

- `VirtualTarget`: the firmware and a config on a virtual board; inputs are its pins, outputs its
  PWM, the log its console; it can cut power.
- `SerialTarget`: a real board flashed with the firmware and provisioned with
  `"test_console": true` (`jikimi flash`, `jikimi provision --set test_console=true`); inputs and
  outputs go through the test console on its serial port (a device path or `rfc2217://host:port`),
  the log is its console. It cannot cut power: scenarios that need it are skipped.
- `LabgridTarget`: a board in a labgrid place (rig/labgrid.py), provisioned as a SerialTarget's:
  its console through the exporter's ser2net, its power through labgrid's power driver, and the
  radio beside it for the phone side.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable

from jikimi_host.records import Record
from jikimi_host.rig.firmware import events_in, log_records
from jikimi_host.sim.hands import hold_button_through_power_up
from jikimi_host.rig.labgrid import LabgridPlace
from jikimi_host.sim.board import VirtualBoard
from jikimi_host.sim.radio import VirtualRadio
from jikimi_host.sim.run import deploy_firmware
from jikimi_host.device.testconsole import TestConsoleClient
from jikimi_host.wait import until

# The device config the scenarios run with (a real board must be provisioned with the same):
# both roles on one device, so that one board covers the panic and the door scenarios.
SCENARIO_PASSKEY = "493817"
SCENARIO_CONFIG: dict[str, Any] = {
    "passkey": SCENARIO_PASSKEY, "board": "sim", "roles": ["panic", "door"], "name": "rig",
    "gestures": {"hold_ms": 1000, "pairing_hold_ms": 3000},
    "alarm": {"cancel_window_ms": 5000},
    "door": {"exit_delay_ms": 0, "entry_delay_ms": 2000},
    "battery": {"confirm": 2, "interval_s": 1},
    "power": {"idle_sleep_s": 0},
    "test_console": True,
}


class Target:
    name = "target"
    can_cut_power = False
    hci_transport: str | None = None  # the phone side's radio, when the target brings its own

    async def boot(self) -> None: ...

    async def open_pairing(self) -> None: ...

    async def set_input(self, name: str, level: int) -> None: ...

    async def set_battery_mv(self, mv: int) -> None: ...

    async def siren_on(self) -> bool: ...

    def records(self) -> list[Record]: ...

    async def reset(self) -> None: ...

    async def power_cut(self) -> None:
        raise NotImplementedError(f"{self.name} cannot cut power")

    async def close(self) -> None: ...

    @property
    def config(self) -> dict[str, Any]:
        return SCENARIO_CONFIG

    # -- shared helpers ---------------------------------------------------------------------

    async def press(self, name: str = "button", hold_s: float = 0.1) -> None:
        await self.set_input(name, 1)
        await asyncio.sleep(hold_s)
        await self.set_input(name, 0)

    def events(self, prefix: str = "") -> list[str]:
        """The core's journaled events, "<type> seq=..." (without "event "), that start with `prefix`."""
        return [line[6:] for line in events_in(self.records(), prefix)]

    async def expect_event(self, prefix: str, timeout_s: float = 30.0, after: int = 0) -> str:
        """The first journaled event starting with `prefix` after the first `after` ones (WaitTimeout
        with the end of the target's log if none comes)."""
        found = await until(lambda: self.events(prefix)[after:], timeout_s, f"{self.name}: event {prefix!r}",
                            log=self._log_tail, poll_s=0.05)
        return found[0]

    def _log_tail(self) -> str:
        return "\n".join(json.dumps(r, ensure_ascii=False) for r in self.records()[-12:])


class VirtualTarget(Target):
    can_cut_power = True

    def __init__(self, folder: Path, radio: VirtualRadio, config: dict[str, Any] = SCENARIO_CONFIG) -> None:
        self.name = "virtual board"
        self._config = dict(config, test_console=False)  # the pins are driven directly here
        self.board = VirtualBoard(folder, radio=radio)
        deploy_firmware(self.board)
        self.board.deploy({"config.json": json.dumps(self._config)})

    @property
    def config(self) -> dict[str, Any]:
        return self._config

    async def boot(self) -> None:
        await self.board.start()

    async def open_pairing(self) -> None:
        """Power up holding the button; let go once the board's LED says the hold is long enough
        (the owner's gesture; hold_button_through_power_up waits for that, not a fixed time)."""
        if self.board.running:
            await self.board.power_cut()
        await hold_button_through_power_up(self.board, self._config["gestures"]["pairing_hold_ms"])

    async def set_input(self, name: str, level: int) -> None:
        pin = {"door": "reed"}.get(name, name)
        self.board.set_pin(pin, self.board.active_level(pin) if level else 1 - self.board.active_level(pin))

    async def press(self, name: str = "button", hold_s: float = 0.1) -> None:
        # The board's own press: the hold and the pause after it are timed from when the device
        # saw each edge, so a device process the host left unscheduled does not merge presses.
        await self.board.press({"door": "reed"}.get(name, name), hold_s=hold_s)

    async def set_battery_mv(self, mv: int) -> None:
        self.board.set_battery_mv(mv)

    async def siren_on(self) -> bool:
        history = self.board.pwm_history("buzzer")
        return bool(history and history[-1].value)

    def records(self) -> list[Record]:
        return log_records(self.board)

    async def reset(self) -> None:
        await self.board.reset()

    async def power_cut(self) -> None:
        await self.board.power_cut()

    async def close(self) -> None:
        await self.board.stop()


class SerialTarget(Target):
    """A real board: everything through its serial port's test console (blocking pyserial calls
    run in a worker thread, so the asyncio side keeps running)."""

    def __init__(self, port: str, name: str | None = None) -> None:
        self.name = name or f"board on {port}"
        self.port = port
        self.console: TestConsoleClient | None = None

    async def boot(self) -> None:
        """A fresh device, as a virtual target's new flash is: its events, alarms and bonds from
        the last scenario are wiped (an uncancelled alarm survives a mere reset)."""
        self.console = await asyncio.to_thread(TestConsoleClient, self.port, name=self.name)
        await self._reboot(self.console.wipe)

    def _client(self) -> TestConsoleClient:
        if self.console is None:
            raise RuntimeError(f"{self.name}: boot() first")
        return self.console

    async def open_pairing(self) -> None:
        await asyncio.to_thread(self._client().open_pairing)

    async def set_input(self, name: str, level: int) -> None:
        await asyncio.to_thread(self._client().set_input, name, level)

    async def set_battery_mv(self, mv: int) -> None:
        # the board reads it from now on: the core confirms it over its next readings
        await asyncio.to_thread(self._client().command, f"battery {mv}")

    async def siren_on(self) -> bool:
        hz, duty, _ = await asyncio.to_thread(self._client().outputs)
        return duty > 0

    def records(self) -> list[Record]:
        return list(self._client().records)

    async def reset(self) -> None:
        await self._reboot(self._client().reset)

    async def _reboot(self, command: Callable[[], None]) -> None:
        """Run a test-console command that reboots the board; return once its console is back."""
        client = self._client()
        start = len(client.records)
        await asyncio.to_thread(command)
        await asyncio.to_thread(client.wait_for, lambda r: r.get("k") == "test_console", 30.0, start)

    async def close(self) -> None:
        if self.console is not None:
            await asyncio.to_thread(self.console.close)


class LabgridTarget(SerialTarget):
    """A board in a locked labgrid place: a SerialTarget on the console ser2net serves, whose
    power labgrid switches (so the power-cut scenarios run) and whose radio the relay uses."""

    def __init__(self, place: LabgridPlace) -> None:
        resources = place.resources()
        super().__init__(resources.console_url, name=f"{place.label} ({resources.console_url})")
        self.place = place
        self.can_cut_power = resources.power is not None
        self.hci_transport = resources.hci_transport
        self._powered_off = False

    async def boot(self) -> None:
        """After a power cut: power on and wait for the console; else a fresh device (wiped)."""
        if not self._powered_off:
            await super().boot()
            return
        client = self._client()
        start = len(client.records)
        await asyncio.to_thread(self.place.power, True)
        self._powered_off = False
        await asyncio.to_thread(client.wait_for, lambda r: r.get("k") == "test_console", 30.0, start)

    async def power_cut(self) -> None:
        if not self.can_cut_power:
            await super().power_cut()
        await asyncio.to_thread(self.place.power, False)
        self._powered_off = True

    async def close(self) -> None:
        try:
            if self._powered_off:  # the next test finds the board on, as it found it
                await asyncio.to_thread(self.place.power, True)
        finally:
            await super().close()
