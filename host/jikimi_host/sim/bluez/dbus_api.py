"""BlueZ's D-Bus API as the fake speaks it: the bus name, interfaces and object paths, and its
error replies (names and messages as bluetoothd sends them)."""

from __future__ import annotations

from bumble import hci
from bumble.core import UUID

BLUEZ = "org.bluez"
BLUEZ_PATH = "/org/bluez"
ADAPTER_PATH = "/org/bluez/hci0"
ERROR = "org.bluez.Error."
DBUS_ERROR = "org.freedesktop.DBus.Error."
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
ADAPTER = "org.bluez.Adapter1"
AGENT_MANAGER = "org.bluez.AgentManager1"
AGENT = "org.bluez.Agent1"
DEVICE = "org.bluez.Device1"
SERVICE = "org.bluez.GattService1"
CHARACTERISTIC = "org.bluez.GattCharacteristic1"
DESCRIPTOR = "org.bluez.GattDescriptor1"

# What a method handler answers: the reply's D-Bus signature and body.
Reply = tuple[str, list]


class BlueZError(Exception):
    """A D-Bus error reply: `name` is the error name, `text` its message."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


def error(short: str, text: str) -> BlueZError:
    """An org.bluez.Error.<short> reply."""
    return BlueZError(ERROR + short, text)


def invalid_arguments() -> BlueZError:
    return error("InvalidArguments", "Invalid arguments in method call")


def uuid_text(uuid: UUID) -> str:
    """BlueZ's form: 128 bits, lower case, dashed."""
    h = uuid.uuid_128_bytes[::-1].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def address_text(address: hci.Address) -> str:
    return address.to_string(with_type_qualifier=False)
