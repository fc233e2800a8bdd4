"""The pairing agents: AgentManager1 (RegisterAgent, UnregisterAgent, RequestDefaultAgent) and
the Agent1 questions (passkey, confirmation) Bumble's pairing asks through them, as bluetoothd
asks bluetoothctl or a desktop's agent."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from bumble.device import Connection
from bumble.pairing import PairingConfig, PairingDelegate
from dbus_fast import Message, MessageFlag, MessageType

from jikimi_host.sim.bluez.dbus_api import AGENT, AGENT_MANAGER, Reply, error, invalid_arguments
from jikimi_host.sim.bluez.objects import ObjectTree
from jikimi_host.sim.bluez.tasks import cancelling

logger = logging.getLogger(__name__)

AGENT_TIMEOUT_S = 60.0
IO_CAPABILITIES = {
    "DisplayOnly": PairingDelegate.IoCapability.DISPLAY_OUTPUT_ONLY,
    "DisplayYesNo": PairingDelegate.IoCapability.DISPLAY_OUTPUT_AND_YES_NO_INPUT,
    "KeyboardOnly": PairingDelegate.IoCapability.KEYBOARD_INPUT_ONLY,
    "NoInputNoOutput": PairingDelegate.IoCapability.NO_OUTPUT_NO_INPUT,
    "KeyboardDisplay": PairingDelegate.IoCapability.DISPLAY_OUTPUT_AND_KEYBOARD_INPUT,
}


@dataclass(eq=False)
class Agent:
    owner: str  # its unique bus name
    path: str
    capability: str


class Agents:
    """The registered agents (one per client), the default one, and which agent a pairing in
    progress asks."""

    def __init__(self, tree: ObjectTree) -> None:
        self.tree = tree
        self.registered: dict[str, Agent] = {}  # bus name -> its agent
        self.default: Agent | None = None
        self.pairing: dict[int, tuple[Agent | None, str]] = {}  # connection handle -> agent, device path
        tree.method(AGENT_MANAGER, "RegisterAgent", "os", self._register)
        tree.method(AGENT_MANAGER, "UnregisterAgent", "o", self._unregister)
        tree.method(AGENT_MANAGER, "RequestDefaultAgent", "o", self._request_default)
        tree.on_client_gone(self._client_gone)

    def for_caller(self, sender: str) -> Agent | None:
        """The agent a Pair from `sender` asks: its own, else the default (None: Just Works)."""
        return self.registered.get(sender) or self.default

    def pairing_config(self, connection: Connection) -> PairingConfig:
        """Bumble's pairing_config_factory: LE Secure Connections, MITM, bonding, with the agent
        of the Pair in progress on this connection."""
        agent, device_path = self.pairing.get(connection.handle, (None, ""))
        return PairingConfig(sc=True, mitm=True, bonding=True, delegate=AgentDelegate(self, agent, device_path))

    async def _register(self, path: str, msg: Message) -> Reply:
        agent_path, capability = msg.body
        capability = capability or "KeyboardDisplay"
        if capability not in IO_CAPABILITIES:
            raise invalid_arguments()
        if msg.sender in self.registered:
            raise error("AlreadyExists", "Already Exists")
        self.registered[msg.sender or ""] = Agent(msg.sender or "", agent_path, capability)
        return "", []

    async def _unregister(self, path: str, msg: Message) -> Reply:
        agent = self.registered.get(msg.sender or "")
        if agent is None or agent.path != msg.body[0]:
            raise error("DoesNotExist", "No such Agent")
        del self.registered[agent.owner]
        if agent is self.default:
            self.default = None
        return "", []

    async def _request_default(self, path: str, msg: Message) -> Reply:
        agent = self.registered.get(msg.sender or "")
        if agent is None or agent.path != msg.body[0]:
            raise error("DoesNotExist", "No such Agent")
        self.default = agent
        return "", []

    def _client_gone(self, name: str) -> None:
        agent = self.registered.pop(name, None)
        if agent is not None and agent is self.default:
            self.default = None

    async def ask(self, agent: Agent | None, member: str, signature: str, body: list[Any]) -> list[Any] | None:
        """The agent's answer, or None if there is no agent or it refused (an error reply)."""
        bus = self.tree.bus
        if agent is None or bus is None:
            return None
        call = Message(destination=agent.owner, path=agent.path, interface=AGENT, member=member,
                       signature=signature, body=body)
        try:
            reply = await asyncio.wait_for(bus.call(call), AGENT_TIMEOUT_S)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            # pairing ended (failed, cancelled, link lost) while the agent was asked: tell it
            bus.send(Message(destination=agent.owner, path=agent.path, interface=AGENT, member="Cancel",
                             flags=MessageFlag.NO_REPLY_EXPECTED))
            if cancelling():
                raise
            return None
        if reply.message_type == MessageType.ERROR:
            logger.info("agent %s answered %s with %s", agent.owner, member, reply.error_name)
            return None
        return list(reply.body)


class AgentDelegate(PairingDelegate):
    """Bumble's pairing questions, answered by a BlueZ agent over D-Bus; no agent means
    NoInputNoOutput (Just Works), as in BlueZ."""

    def __init__(self, agents: Agents, agent: Agent | None, device_path: str) -> None:
        super().__init__(io_capability=IO_CAPABILITIES[agent.capability if agent else "NoInputNoOutput"])
        self.agents = agents
        self.agent = agent
        self.device_path = device_path

    async def get_number(self) -> int | None:
        reply = await self.agents.ask(self.agent, "RequestPasskey", "o", [self.device_path])
        return None if reply is None else int(reply[0])

    async def display_number(self, number: int, digits: int) -> None:
        await self.agents.ask(self.agent, "DisplayPasskey", "ouq", [self.device_path, number, 0])

    async def compare_numbers(self, number: int, digits: int) -> bool:
        return await self.agents.ask(self.agent, "RequestConfirmation", "ou", [self.device_path, number]) \
            is not None

    async def confirm(self, auto: bool = False) -> bool:
        return True  # Just Works that we started: BlueZ does not ask

    async def accept(self) -> bool:
        return True
