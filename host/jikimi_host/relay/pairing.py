"""How the relay answers LE Secure Connections pairing with a device: as a keyboard, with the
passkey printed on the device's label (PROTOCOL.md §2.3). Bumble's delegate; the relay's Bumble
radio and the rig's simulated phone both pair with it.
"""

from __future__ import annotations

from bumble.pairing import PairingDelegate


class Passkey(PairingDelegate):
    """The owner types the passkey from the device's label."""

    def __init__(self, passkey: int) -> None:
        super().__init__(io_capability=PairingDelegate.IoCapability.KEYBOARD_INPUT_ONLY)
        self.passkey = passkey

    async def get_number(self) -> int | None:
        return self.passkey
