"""A virtual board's radio chip when the firmware runs MicroPython's own `bluetooth` module
(NimBLE): a controller on the virtual link whose HCI UART is a pty the board process opens
(`MICROPYBTUART`). NimBLE does advertising, SMP pairing, bonding and GATT itself; this side only
powers the chip with the board (a fresh controller per boot, off the air at a power cut) and
says which addresses it is on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bumble import hci

if TYPE_CHECKING:
    from jikimi_host.sim.controller import BoardController
    from jikimi_host.sim.radio import BoardRadio, VirtualRadio


class RadioChip:
    def __init__(self, radio: "VirtualRadio", unique_id: bytes) -> None:
        self.radio = radio
        self._mac = ":".join(f"{byte:02X}" for byte in unique_id)
        # NimBLE reads it with HCI Read BD_ADDR and uses it as the board's identity, as an
        # ESP32 uses its public Bluetooth MAC.
        self.identity_address = hci.Address(self._mac, hci.Address.PUBLIC_DEVICE_ADDRESS)
        self.board_radio: "BoardRadio | None" = None

    def power_on(self) -> str:
        """A new boot: a controller on the air; returns the pty for MICROPYBTUART."""
        self.power_off()
        self.board_radio = self.radio.plug_board(self._mac)
        return self.board_radio.path

    def power_off(self) -> None:
        """The board lost power or rebooted: the radio goes silent, its links drop."""
        if self.board_radio is not None:
            self.radio.unplug_board(self.board_radio)
            self.board_radio = None

    @property
    def controller(self) -> "BoardController":
        if self.board_radio is None:
            raise RuntimeError("the board is not powered")
        return self.board_radio.controller

    @property
    def on_air_address(self) -> hci.Address:
        """The address the board advertises with now: its identity address, or with
        addr_mode=2 its current resolvable private address."""
        return self.controller.le_legacy_advertiser.address
