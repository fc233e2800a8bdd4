"""org.bluez's object tree on D-Bus: the exported objects and their properties
(ObjectManager, Properties, their signals), method calls dispatched to the parts that answer
them, and clients that leave the bus."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from jikimi_host.sim.bluez.dbus_api import (DBUS_ERROR, ERROR, OBJECT_MANAGER, PROPERTIES, BlueZError, Reply,
                                            invalid_arguments)
from jikimi_host.sim.bluez.tasks import Tasks

logger = logging.getLogger(__name__)

NAME_OWNER_CHANGED = ("type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                      "member='NameOwnerChanged'")

Interfaces = dict[str, dict[str, Variant]]  # interface -> property -> value
Handler = Callable[[str, Message], Awaitable[Reply]]  # (object path, the call) -> reply
Setter = Callable[[str, Variant], None]  # (object path, the new value)


def _copy(interfaces: Interfaces) -> Interfaces:
    """A snapshot to send: the message is marshalled later, the properties may change before."""
    return {name: dict(props) for name, props in interfaces.items()}


class ObjectTree:
    """The objects org.bluez exports, path -> interface -> property; the adapter, devices,
    agents and GATT parts register the methods and writable properties they answer."""

    def __init__(self, tasks: Tasks) -> None:
        self.tasks = tasks
        self.bus: MessageBus | None = None
        self.objects: dict[str, Interfaces] = {}
        self._methods: dict[tuple[str, str], tuple[str, Handler]] = {}
        self._writable: dict[tuple[str, str], Setter] = {}
        self._client_gone: list[Callable[[str], None]] = []

    def method(self, interface: str, member: str, signature: str, handler: Handler) -> None:
        """`handler` answers interface.member (called with the object's path and the message)."""
        self._methods[(interface, member)] = (signature, handler)

    def writable(self, interface: str, name: str, setter: Setter) -> None:
        """Properties.Set of interface.name calls `setter`; other properties are read-only."""
        self._writable[(interface, name)] = setter

    def on_client_gone(self, callback: Callable[[str], None]) -> None:
        """`callback(bus_name)` when a client leaves the bus: its sessions end."""
        self._client_gone.append(callback)

    async def connect(self, bus_address: str) -> MessageBus:
        self.bus = await MessageBus(bus_address=bus_address).connect()
        self.bus.add_message_handler(self._on_message)
        await self._bus_call("AddMatch", "s", [NAME_OWNER_CHANGED])
        return self.bus

    async def disconnect(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()
            try:
                await self.bus.wait_for_disconnect()
            except Exception:
                pass

    # -- objects and properties -------------------------------------------------------------

    def props(self, path: str, interface: str) -> dict[str, Variant] | None:
        return self.objects.get(path, {}).get(interface)

    def signal(self, path: str, interface: str, member: str, signature: str, body: list[Any]) -> None:
        if self.bus is not None and self.bus.connected:
            self.bus.send(Message.new_signal(path, interface, member, signature, body))

    def export(self, path: str, interfaces: Interfaces) -> None:
        self.objects[path] = interfaces
        self.signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", [path, _copy(interfaces)])

    def unexport(self, path: str) -> None:
        interfaces = self.objects.pop(path, None)
        if interfaces is not None:
            self.signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, list(interfaces)])

    def set(self, path: str, interface: str, always: bool = False, **values: Variant) -> None:
        """Update properties; PropertiesChanged for those that changed (`always`: all of them,
        as BlueZ does for a characteristic's Value)."""
        props = self.props(path, interface)
        if props is None:
            return
        changed = {k: v for k, v in values.items() if always or props.get(k) != v}
        props.update(changed)
        if changed:
            self.signal(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, changed, []])

    def invalidate(self, path: str, interface: str, *names: str) -> None:
        props = self.objects.get(path, {}).get(interface, {})
        gone = [name for name in names if props.pop(name, None) is not None]
        if gone:
            self.signal(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, {}, gone])

    # -- method calls -----------------------------------------------------------------------

    async def _bus_call(self, member: str, signature: str, body: list[Any]) -> Message:
        assert self.bus is not None
        return await self.bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                           interface="org.freedesktop.DBus", member=member,
                                           signature=signature, body=body))

    def _on_message(self, msg: Message) -> bool | None:
        if msg.message_type == MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus" and not msg.body[2]:
                for callback in self._client_gone:
                    callback(msg.body[0])
            return None
        if msg.message_type != MessageType.METHOD_CALL or msg.interface in (
                "org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Peer"):
            return None
        self.tasks.spawn(self._answer(msg))
        return True

    async def _answer(self, msg: Message) -> None:
        try:
            signature, body = await self._dispatch(msg)
            reply = Message.new_method_return(msg, signature, body)
        except BlueZError as err:
            reply = Message.new_error(msg, err.name, err.text)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a bug here must not leave the caller waiting
            logger.exception("%s.%s failed", msg.interface, msg.member)
            reply = Message.new_error(msg, ERROR + "Failed", str(err) or type(err).__name__)
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED and self.bus is not None and self.bus.connected:
            self.bus.send(reply)

    async def _dispatch(self, msg: Message) -> Reply:
        path, interface, member = msg.path or "", msg.interface, msg.member or ""
        if interface == PROPERTIES:
            return self._properties(path, member, msg)
        if interface == OBJECT_MANAGER and member == "GetManagedObjects" and path == "/":
            return "a{oa{sa{sv}}}", [{path: _copy(interfaces) for path, interfaces in self.objects.items()}]
        interfaces = self.objects.get(path, {})
        for name in [interface] if interface else list(interfaces):
            entry = self._methods.get((name or "", member))
            if entry is not None and name in interfaces:
                if msg.signature != entry[0]:
                    raise invalid_arguments()
                return await entry[1](path, msg)
        if not interfaces:
            raise BlueZError(DBUS_ERROR + "UnknownObject", f"Method \"{member}\" with signature \"{msg.signature}\" "
                             f"on interface \"{interface}\" doesn't exist")
        raise BlueZError(DBUS_ERROR + "UnknownMethod", f"Method \"{member}\" with signature \"{msg.signature}\" "
                         f"on interface \"{interface}\" doesn't exist")

    def _properties(self, path: str, member: str, msg: Message) -> Reply:
        signatures = {"Get": "ss", "GetAll": "s", "Set": "ssv"}
        if signatures.get(member) != msg.signature:
            raise BlueZError(DBUS_ERROR + "UnknownMethod", f"Method \"{member}\" doesn't exist")
        interface = msg.body[0]
        props = self.props(path, interface)
        if props is None:
            raise BlueZError(DBUS_ERROR + "InvalidArgs", f"No such interface '{interface}'")
        if member == "GetAll":
            return "a{sv}", [dict(props)]
        name = msg.body[1]
        if name not in props:
            raise BlueZError(DBUS_ERROR + "InvalidArgs", f"No such property '{name}'")
        if member == "Get":
            return "v", [props[name]]
        setter = self._writable.get((interface, name))
        if setter is None:
            raise BlueZError(DBUS_ERROR + "PropertyReadOnly", f"Property '{name}' is not writable")
        if msg.body[2].signature != props[name].signature:
            raise invalid_arguments()
        setter(path, msg.body[2])
        return "", []
