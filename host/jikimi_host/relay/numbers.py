"""Phone numbers: guardians' numbers to E.164, and the emergency number kept apart.

Two kinds of number, never mixed up:

- a *subscriber* number (a guardian): any number `phonenumbers` calls valid, written in a
  Korean national format (`010-1234-5678`, `01012345678`, `02-123-4567`) or internationally
  (`+82 10 1234 5678`, `+1 ...`); stored and dialled as E.164 (`+821012345678`);
- an *emergency* number (112 police, 119 fire/ambulance): a short number that is only valid
  inside its country, accepted only where the caller asks for one (`normalize_emergency`),
  kept as its bare digits because that is how it is dialled.

A guardian entry of "112" is a mistake (the relay would text the police as if they were a
guardian), so `normalize` rejects it with a message that says so.
"""

from __future__ import annotations

import re

import phonenumbers

DEFAULT_REGION = "KR"

# Separators people type inside numbers; everything else must be a digit (or a leading +).
_SEPARATORS = re.compile(r"[\s\-.()/]")


class NumberError(ValueError):
    """A number that cannot be used; the message names the config entry it came from."""


def normalize(entry: str, text: str, region: str = DEFAULT_REGION) -> str:
    """`text` as an E.164 number (`+821012345678`), or NumberError naming `entry`.

    National formats are read as numbers of `region` (South Korea by default).
    """
    if not isinstance(text, str) or not text.strip():
        raise NumberError(f"{entry}: {text!r} is not a phone number (expected a string such as \"010-1234-5678\")")
    if _is_emergency_digits(text, region):
        raise NumberError(
            f'{entry}: "{text}" is an emergency number; it is set by emergency_number, not here'
        )
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        parsed = None
    if parsed is None or not phonenumbers.is_valid_number(parsed):
        raise NumberError(f'{entry}: "{text}" is not a valid phone number in {region}')
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_emergency(entry: str, text: str, region: str = DEFAULT_REGION) -> str:
    """An emergency number of `region` (`"112"`, `"119"`) as its bare digits, or NumberError."""
    if not isinstance(text, str) or not text.strip():
        raise NumberError(f"{entry}: {text!r} is not an emergency number (expected e.g. \"112\")")
    digits = _SEPARATORS.sub("", text)
    if not digits.isdigit() or not phonenumbers.is_emergency_number(digits, region):
        raise NumberError(f'{entry}: "{text}" is not an emergency number in {region} (e.g. "112")')
    return digits


def is_emergency(number: str, region: str = DEFAULT_REGION) -> bool:
    """True if dialling or texting `number` would reach an emergency service.

    Deliberately generous (the telephony backends use it as a safety interlock, so that nothing
    reaches 112 without an explicit opt-in): separators are ignored, `+82112` counts, and so
    does any number that *connects* to an emergency service (e.g. `1120`).
    """
    if not isinstance(number, str):
        return False
    compact = _SEPARATORS.sub("", number)
    if compact.startswith("+"):
        try:
            parsed = phonenumbers.parse(compact, None)
        except phonenumbers.NumberParseException:
            return False
        country = phonenumbers.region_code_for_country_code(parsed.country_code)
        return _is_emergency_digits(str(parsed.national_number), country)
    return _is_emergency_digits(compact, region)


def _is_emergency_digits(text: str, region: str) -> bool:
    digits = _SEPARATORS.sub("", text)
    if not digits.isdigit():
        return False
    return phonenumbers.connects_to_emergency_number(digits, region)
