"""The OS Bluetooth stack in CI, for the rig: the fake BlueZ (`jikimi_host.sim.bluez`) run as its
own process like bluetoothd, and the owner's side of it, what `bluetoothctl` does: an agent that
types the passkey from the label, discovery, Pair."""

# No `from __future__ import annotations`: dbus-fast reads the agent's D-Bus signature from them.
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, unpack_variants
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusUInt32
from dbus_fast.service import ServiceInterface, dbus_method
from jikimi import protocol as p

from jikimi_host.processes import stop_process
from jikimi_host.rig.firmware import CONFIG, expect_log
from jikimi_host.sim.hands import hold_button_through_power_up
from jikimi_host.sim.bluez import ADAPTER_PATH
from jikimi_host.sim.board import VirtualBoard
from jikimi_host.wait import until

AGENT_PATH = "/jikimi/owner/agent"


class BlueZProcess:
    """The fake BlueZ as its own process, like bluetoothd; its bonds in `folder`."""

    def __init__(self, bus: str, transport: str, folder: Path) -> None:
        self.bus, self.transport, self.folder = bus, transport, folder
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "jikimi_host.sim.bluez", "--bus", self.bus, "--transport", self.transport,
                "--bonds", str(self.folder / "bonds.json"), "--verbose",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log)
        finally:
            os.close(log)
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert line == b"ready\n", self.log.read_text()

    @property
    def log(self) -> Path:
        return self.folder / f"bluez-{self.starts}.log"

    async def crash(self) -> None:
        """bluetoothd dies (SIGKILL): no signal tells its clients that anything ended."""
        if self.process is not None:
            process, self.process = self.process, None
            process.kill()
            await process.wait()

    async def stop(self) -> int | None:
        if self.process is None:
            return None
        process, self.process = self.process, None
        return await stop_process(process)


class CallError(Exception):
    def __init__(self, name: str, body: list[Any]) -> None:
        super().__init__(name, *body)
        self.name = name
        self.text = body[0] if body else ""


class PasskeyAgent(ServiceInterface):
    """The owner at bluetoothctl's agent: types the passkey printed on the bell's label."""

    def __init__(self) -> None:
        super().__init__("org.bluez.Agent1")
        self.passkey = 0
        self.asked: list[str] = []

    @dbus_method()
    def RequestPasskey(self, device: DBusObjectPath) -> DBusUInt32:
        self.asked.append(device)
        return self.passkey

    @dbus_method()
    def Cancel(self) -> None:
        pass

    @dbus_method()
    def Release(self) -> None:
        pass


class Owner:
    """bluetoothctl's side of org.bluez: an agent, discovery, Pair, properties."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.agent = PasskeyAgent()

    async def call(self, path: str, interface: str, member: str, signature: str = "", *body: Any) -> list[Any]:
        reply = await self.bus.call(Message(destination="org.bluez", path=path, interface=interface, member=member,
                                            signature=signature, body=list(body)))
        if reply.message_type == MessageType.ERROR:
            raise CallError(reply.error_name or "", reply.body)
        return reply.body

    async def objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        (objects,) = await self.call("/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
        return unpack_variants(objects)

    async def device(self, condition: Callable[[dict[str, Any]], bool], timeout_s: float = 20,
                     what: str = "") -> tuple[str, dict[str, Any]]:
        """The first Device1 (path, properties) for which condition(properties) holds (WaitTimeout
        if none does within `timeout_s`)."""
        async def found() -> tuple[str, dict[str, Any]] | None:
            for path, interfaces in (await self.objects()).items():
                props = interfaces.get("org.bluez.Device1")
                if props is not None and condition(props):
                    return path, props
            return None

        return await until(found, timeout_s, f"a device: {what}", poll_s=0.05)

    async def register_agent(self) -> None:
        self.bus.export(AGENT_PATH, self.agent)
        await self.call("/org/bluez", "org.bluez.AgentManager1", "RegisterAgent", "os", AGENT_PATH, "KeyboardDisplay")
        await self.call("/org/bluez", "org.bluez.AgentManager1", "RequestDefaultAgent", "o", AGENT_PATH)

    async def pair(self, path: str) -> None:
        await self.call(path, "org.bluez.Device1", "Pair")


def advertises_jikimi(props: dict[str, Any]) -> bool:
    return p.uuid(p.UUID_SERVICE) in props.get("UUIDs", [])


async def find_in_pairing_window(owner: Owner, bell: VirtualBoard) -> tuple[str, str]:
    """The owner holds the button at power-up and searches: the bell's device object and the
    (resolvable private) address it advertises at."""
    await hold_button_through_power_up(bell, CONFIG["gestures"]["pairing_hold_ms"])
    await expect_log(bell, "core", msg="pairing open")
    await owner.call(ADAPTER_PATH, "org.bluez.Adapter1", "StartDiscovery")
    path, props = await owner.device(advertises_jikimi, what="the bell advertising the Jikimi service")
    assert props["Paired"] is False and props["AddressType"] == "random"
    return path, props["Address"]
