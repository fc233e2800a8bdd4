"""The relay's radio interface: what `Central` needs from a Bluetooth stack (a `Radio` that finds,
pairs and connects devices, a `Link` to one connected device), and the transport names a caller
picks one by. The stacks (`radio_bumble.py`, `radio_os.py`) implement it; `radios.open_radio`
chooses one. This module imports neither, so the interface depends on no stack.
"""

from __future__ import annotations

from typing import Callable, Protocol

from jikimi_host.errors import UsageError
from jikimi_host.relay.config import DeviceEntry

OS_TRANSPORT = "os"
TRANSPORT_FORMS = ("a Bumble HCI transport (tcp-client:HOST:PORT, the virtual radio's; usb:0 or "
                   "serial:/dev/ttyUSB0,1000000, a controller of the relay's own), or os for the "
                   "computer's own Bluetooth stack")

# How a radio tells the relay what it is doing: report(kind, text, **fields), the relay's emit.
Report = Callable[..., None]


class TransportNameError(UsageError, ValueError):
    """The transport is not one the relay can open, whatever is plugged in: bad input (exit 2)."""


class Link(Protocol):
    """One connected device: secured, Events subscribed."""

    async def next_frame(self) -> bytes | None:
        """The next Events notification, or None once the link is down."""

    async def write(self, frame: bytes) -> None:
        """Write one frame to Commands, with response (ConnectionError if the link is down)."""

    async def close(self) -> None:
        """Disconnect, if still connected."""


class Radio(Protocol):
    can_pair: bool

    async def start(self) -> None:
        """Open the stack (OSError with the reason if it is not there)."""

    async def close(self) -> None: ...

    async def lost(self) -> None:
        """Return only if the stack is gone for good (its controller unplugged): the relay stops."""

    async def connect(self, identity: str, entry: DeviceEntry) -> Link:
        """Find the device with this identity address and open a Link to it."""

    async def pair_new(self, unpaired: list[DeviceEntry]) -> tuple[str, DeviceEntry, Link] | None:
        """Wait for a device in its pairing window and pair it with one of these entries' passkeys:
        its identity address, the entry it turned out to be, and the open link; None if none fit."""
