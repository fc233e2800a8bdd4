"""Telephony backends: how the relay sends an SMS and places a voice call.

`Telephony` is the interface the relay uses; `ModemTelephony` implements it over a real cellular
modem (`modem.py`, blocking pyserial I/O run in a worker thread with `asyncio.to_thread`).

Safety, because a modem sends real SMS and places real calls:

- `ModemTelephony` refuses to exist without `real_modem_opt_in=True` (the CLI's `--real-modem`).
- An emergency or short-code number (112, 119, 911...: anything that is an emergency number in
  Korea or is not a valid full E.164 number such as `+821012345678`) is refused unless
  `allow_emergency=True` (the CLI's `--allow-emergency`). Tests and demos must never reach 112.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import phonenumbers
from phonenumbers import shortnumberinfo

from jikimi_host.errors import UsageError
from .modem import Modem, ModemError

REAL_MODEM_FLAG = "--real-modem"
ALLOW_EMERGENCY_FLAG = "--allow-emergency"
HOME_REGION = "KR"


class TelephonyError(Exception):
    """Sending failed. `retryable`: trying again later may succeed (the outbox keeps it)."""

    def __init__(self, message: str, *, retryable: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.code = code


class TelephonySetupError(TelephonyError, UsageError):
    """The backend cannot be set up as asked (a real modem without its opt-in): bad input, exit 2,
    before anything is sent."""


class Telephony(Protocol):
    name: str
    # False: texts and calls to an emergency number (112) are refused (no --allow-emergency);
    # the relay says so at start-up and in every status, in the owner's words.
    reaches_emergency: bool

    async def send_sms(self, number: str, text: str) -> str:
        """Send an SMS; return a short reference for the audit log."""
        ...

    async def call(self, number: str, ring_s: float) -> str:
        """Place a voice call; hang up after `ring_s` or when it ends; return a short reference."""
        ...

    async def close(self) -> None: ...


def is_full_e164(number: str) -> bool:
    """True for a valid number written in canonical E.164 (`+821012345678`)."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed) and (
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == number
    )


def is_emergency_or_short(number: str) -> bool:
    """True for 112/119 (and any emergency number of the home region) and for anything that is
    not a full E.164 number: short codes like 911 or 1366 must not be reached by accident."""
    return shortnumberinfo.is_emergency_number(number, HOME_REGION) or not is_full_e164(number)


def check_destination(number: str, *, allow_emergency: bool, action: str) -> None:
    """Raise a non-retryable TelephonyError when `number` may not be reached."""
    if allow_emergency or not is_emergency_or_short(number):
        return
    raise TelephonyError(
        f"refusing to {action} {number!r}: it is an emergency or short-code number, or not a full "
        f"E.164 number (write guardians as +8210...). Reaching emergency services needs "
        f"{ALLOW_EMERGENCY_FLAG}.",
        retryable=False,
        code="EMERGENCY_REFUSED",
    )


class ModemTelephony:
    """Telephony over a cellular modem on a serial port (`/dev/ttyUSB2`, `rfc2217://h:p`, a pty)."""

    name = "modem"

    def __init__(
        self,
        url: str,
        *,
        real_modem_opt_in: bool,
        allow_emergency: bool,
        baudrate: int = 115200,
        **modem_options: Any,
    ) -> None:
        """`modem_options` go to `Modem` as they are (its timeouts, retries, backoff): their
        names and defaults are `Modem`'s, written there only."""
        if not real_modem_opt_in:
            raise TelephonySetupError(
                f"a cellular modem ({url}) sends real SMS and places real calls, which cost money "
                f"and reach real people; pass {REAL_MODEM_FLAG} to use it",
                retryable=False,
                code="NO_OPT_IN",
            )
        self.allow_emergency = allow_emergency
        self.reaches_emergency = allow_emergency
        self.modem = Modem(url, baudrate, **modem_options)

    async def send_sms(self, number: str, text: str) -> str:
        check_destination(number, allow_emergency=self.allow_emergency, action="text")
        refs = await self._run(self.modem.send_sms, number, text)
        return "mr=" + ",".join(str(r) for r in refs)

    async def call(self, number: str, ring_s: float) -> str:
        check_destination(number, allow_emergency=self.allow_emergency, action="call")
        result = await self._run(self.modem.call, number, ring_s)
        if not result.placed and result.outcome in ("BUSY", "NO CARRIER"):
            # The call never rang: busy line or no connection. Worth placing again later.
            raise TelephonyError(f"call to {number} failed: {result.outcome}", retryable=True,
                                 code=result.outcome)
        return f"call {result.outcome} after {result.duration_s:.1f}s"

    async def close(self) -> None:
        await asyncio.to_thread(self.modem.close)

    async def _run(self, function, *args):  # type: ignore[no-untyped-def]
        try:
            return await asyncio.to_thread(function, *args)
        except ModemError as exc:
            raise TelephonyError(
                f"modem {self.modem.url}: {exc.message}", retryable=exc.retryable, code=exc.code
            ) from exc
