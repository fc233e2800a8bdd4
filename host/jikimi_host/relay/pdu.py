"""SMS-SUBMIT PDUs (3GPP TS 23.040 §9.2.2.2) for a modem in PDU mode (`AT+CMGF=0`).

What this module encodes, and the decoder accepts:

- SMSC address field `00`: the modem uses the SMSC stored on the SIM (TS 27.005 §3.1 "<pdu>").
- First octet: TP-MTI=01 (SUBMIT), TP-VPF=10 (relative validity), TP-UDHI when concatenated.
  TP-MR=00 lets the modem pick the message reference; it reports it in `+CMGS: <mr>`.
- TP-DA: `+82...` is international, TON/NPI 0x91; anything else (`112`, `0101234...`) is
  unknown/ISDN, 0x81. Digits only: a `;` or letter must never reach an AT command line.
- TP-DCS 0x00 (GSM 7-bit default alphabet, TS 23.038 §6.2.1) when every character is in the
  default table or its extension table (reached by the escape 0x1B, so those cost 2 septets);
  otherwise 0x08 (UCS-2, carried as UTF-16BE so characters outside the BMP travel as surrogate
  pairs, the way phones send emoji).
- Concatenation (TS 23.040 §9.2.3.24.1): UDH IE 0x00 (8-bit reference, total, index) when the
  text does not fit one message: GSM-7 160 → 153 septets a segment, UCS-2 70 → 67 UTF-16 units.
  A segment never ends inside an escape pair or a surrogate pair, so every segment decodes alone.

The decoder also reads IE 0x08 (16-bit reference), other VP formats and DCS groups 00xx/1111
(text only: 8-bit data and compressed text raise `PduError`). Any malformed input raises
`PduError`, never another exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["gsm7", "ucs2"]

# TS 23.038 §6.2.1: the GSM 7-bit default alphabet, indexed by septet value. 0x1B is the escape
# to the extension table (not a character), so it is kept out of the reverse map below.
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(GSM7_BASIC) == 128
GSM7_ESCAPE = 0x1B
# TS 23.038 §6.2.1.1: the default alphabet extension table (each preceded by the escape).
GSM7_EXTENSION = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}
_GSM7_CODE: dict[str, tuple[int, ...]] = {ch: (i,) for i, ch in enumerate(GSM7_BASIC) if i != GSM7_ESCAPE}
_GSM7_CODE.update({ch: (GSM7_ESCAPE, code) for code, ch in GSM7_EXTENSION.items()})

DCS_GSM7 = 0x00
DCS_UCS2 = 0x08
TON_INTERNATIONAL = 0x91
TON_UNKNOWN = 0x81
VP_4_DAYS = 0xAA  # relative VP: (0xAA - 166) days = 4 days (TS 23.040 §9.2.3.12.1)

MAX_USER_DATA_OCTETS = 140
GSM7_SINGLE_SEPTETS, GSM7_SEGMENT_SEPTETS = 160, 153
UCS2_SINGLE_UNITS, UCS2_SEGMENT_UNITS = 70, 67
MAX_SEGMENTS = 255  # the concatenation IE counts segments in one octet


class PduError(ValueError):
    """A PDU (or the number/text to encode into one) is malformed or unsupported."""


@dataclass(frozen=True)
class Concat:
    """Concatenation info from the UDH: which part of which message this segment is."""

    ref: int
    total: int
    index: int  # 1-based, as on the air


@dataclass(frozen=True)
class Submit:
    """One decoded SMS-SUBMIT."""

    number: str
    text: str  # this segment's part of the text
    concat: Concat | None
    encoding: Encoding
    message_reference: int  # TP-MR (00 when the modem assigns it)


# --- text → septets / UTF-16 units -------------------------------------------------------------


def fits_gsm7(text: str) -> bool:
    """True when every character is in the GSM default alphabet or its extension table."""
    return all(ch in _GSM7_CODE for ch in text)


def _units(text: str, encoding: Encoding) -> list[bytes]:
    """The text as indivisible units: a septet run per character (1 or 2 septets) for GSM-7,
    the UTF-16BE bytes per code point (2 or 4 octets) for UCS-2. Segments split between units."""
    if encoding == "gsm7":
        return [bytes(_GSM7_CODE[ch]) for ch in text]
    return [ch.encode("utf-16-be") for ch in text]


def _unit_cost(unit: bytes, encoding: Encoding) -> int:
    """Septets (GSM-7) or UTF-16 code units (UCS-2) a unit takes."""
    return len(unit) if encoding == "gsm7" else len(unit) // 2


def _split(text: str, encoding: Encoding) -> list[bytes]:
    """Split the text into segment payloads (septet values or UTF-16BE bytes)."""
    units = _units(text, encoding)
    single, per_segment = (
        (GSM7_SINGLE_SEPTETS, GSM7_SEGMENT_SEPTETS)
        if encoding == "gsm7"
        else (UCS2_SINGLE_UNITS, UCS2_SEGMENT_UNITS)
    )
    if sum(_unit_cost(u, encoding) for u in units) <= single:
        return [b"".join(units)]
    parts: list[bytes] = []
    current: list[bytes] = []
    used = 0
    for unit in units:
        cost = _unit_cost(unit, encoding)
        if used + cost > per_segment:  # start a new segment rather than split the unit
            parts.append(b"".join(current))
            current, used = [], 0
        current.append(unit)
        used += cost
    parts.append(b"".join(current))
    return parts


def choose_encoding(text: str) -> Encoding:
    return "gsm7" if fits_gsm7(text) else "ucs2"


def segments(text: str) -> int:
    """How many SMS segments the text needs."""
    return len(_split(text, choose_encoding(text)))


# --- GSM-7 packing (TS 23.038 §6.1.2.1.1) ------------------------------------------------------


def _pack_user_data(udh: bytes, septets: bytes) -> tuple[int, bytes]:
    """Pack the UDH and septets into user data; return (UDL in septets, octets).

    Septets are packed least significant bit first; after a UDH, fill bits align the first
    septet to a septet boundary (TS 23.040 §9.2.3.24)."""
    value = 0
    bit = 0
    for octet in udh:
        value |= octet << bit
        bit += 8
    bit = -(-bit // 7) * 7  # fill bits
    for septet in septets:
        value |= septet << bit
        bit += 7
    return bit // 7, value.to_bytes(-(-bit // 8), "little")


def _unpack_septets(octets: bytes, first_septet: int, septet_count: int) -> bytes:
    value = int.from_bytes(octets, "little")
    return bytes((value >> (7 * i)) & 0x7F for i in range(first_septet, septet_count))


def _decode_gsm7(septets: bytes) -> str:
    out: list[str] = []
    i = 0
    while i < len(septets):
        code = septets[i]
        if code == GSM7_ESCAPE:
            if i + 1 >= len(septets):
                raise PduError("GSM-7 text ends with a dangling escape (0x1B)")
            ext = septets[i + 1]
            if ext == GSM7_ESCAPE:
                out.append(" ")  # reserved for another extension table: shown as a space
            else:
                # Unknown extension codes show the default-table character (TS 23.038 §6.2.1.1).
                out.append(GSM7_EXTENSION.get(ext, GSM7_BASIC[ext]))
            i += 2
        else:
            out.append(GSM7_BASIC[code])
            i += 1
    return "".join(out)


# --- addresses ---------------------------------------------------------------------------------


def _encode_address(number: str) -> bytes:
    international = number.startswith("+")
    digits = number[1:] if international else number
    if not digits or not digits.isascii() or not digits.isdigit():
        raise PduError(f"destination {number!r} must be digits, optionally after a leading '+'")
    if len(digits) > 20:
        raise PduError(f"destination {number!r} is longer than 20 digits")
    padded = digits + ("F" if len(digits) % 2 else "")
    swapped = "".join(padded[i + 1] + padded[i] for i in range(0, len(padded), 2))
    toa = TON_INTERNATIONAL if international else TON_UNKNOWN
    return bytes([len(digits), toa]) + bytes.fromhex(swapped)


def _decode_address(pdu: bytes, pos: int) -> tuple[str, int]:
    digit_count = _octet(pdu, pos, "TP-DA length")
    toa = _octet(pdu, pos + 1, "TP-DA type of address")
    if not toa & 0x80:
        raise PduError(f"TP-DA type of address 0x{toa:02X} lacks the extension bit")
    if (toa >> 4) & 0x07 == 0x05:
        raise PduError("alphanumeric TP-DA is not valid in an SMS-SUBMIT we send")
    octets = (digit_count + 1) // 2
    raw = _take(pdu, pos + 2, octets, "TP-DA digits")
    digits = []
    for octet in raw:
        digits.extend((octet & 0x0F, octet >> 4))
    if digit_count % 2:
        if digits[-1] != 0x0F:
            raise PduError("odd-length TP-DA must end with the filler nibble F")
        digits.pop()
    if any(d > 9 for d in digits):
        raise PduError("TP-DA contains a non-digit nibble")
    number = "".join(str(d) for d in digits)
    if (toa >> 4) & 0x07 == 0x01:
        number = "+" + number
    return number, pos + 2 + octets


# --- encode ------------------------------------------------------------------------------------


def encode_submit(number: str, text: str, reference: int = 0) -> list[bytes]:
    """Encode `text` to `number` as one SMS-SUBMIT PDU per segment (SMSC field included).

    `reference` (0..255) is the concatenation reference shared by all segments of this message;
    it only appears when the text needs more than one segment."""
    if not 0 <= reference <= 0xFF:
        raise PduError(f"concatenation reference {reference} is not in 0..255")
    address = _encode_address(number)
    encoding = choose_encoding(text)
    parts = _split(text, encoding)
    if len(parts) > MAX_SEGMENTS:
        raise PduError(f"text needs {len(parts)} segments; at most {MAX_SEGMENTS} can be joined")
    concatenated = len(parts) > 1
    pdus = []
    for index, payload in enumerate(parts, start=1):
        udh = bytes([0x05, 0x00, 0x03, reference, len(parts), index]) if concatenated else b""
        if encoding == "gsm7":
            udl, user_data = _pack_user_data(udh, payload)
            dcs = DCS_GSM7
        else:
            user_data = udh + payload
            udl, dcs = len(user_data), DCS_UCS2
        assert len(user_data) <= MAX_USER_DATA_OCTETS
        first_octet = 0x11 | (0x40 if concatenated else 0)  # SUBMIT, relative VP, [UDHI]
        pdus.append(
            bytes([0x00, first_octet, 0x00])  # SMSC from SIM, first octet, TP-MR chosen by modem
            + address
            + bytes([0x00, dcs, VP_4_DAYS, udl])  # TP-PID, TP-DCS, TP-VP, TP-UDL
            + user_data
        )
    return pdus


def tpdu_length(pdu: bytes) -> int:
    """The length `AT+CMGS=<length>` wants: the PDU's octets without the SMSC field."""
    if not pdu:
        raise PduError("empty PDU")
    return len(pdu) - 1 - pdu[0]


# --- decode ------------------------------------------------------------------------------------


def _octet(pdu: bytes, pos: int, what: str) -> int:
    if pos >= len(pdu):
        raise PduError(f"PDU ends before {what} (octet {pos})")
    return pdu[pos]


def _take(pdu: bytes, pos: int, count: int, what: str) -> bytes:
    if pos + count > len(pdu):
        raise PduError(f"PDU ends inside {what} (needs {count} octets at {pos})")
    return pdu[pos : pos + count]


def _decode_dcs(dcs: int) -> Encoding:
    group = dcs >> 4
    if group <= 0x03:  # general data coding: bit 5 compressed, bits 3-2 alphabet
        if dcs & 0x20:
            raise PduError(f"TP-DCS 0x{dcs:02X}: compressed text is not supported")
        alphabet = (dcs >> 2) & 0x03
    elif group == 0x0F:  # data coding / message class: bit 2 selects 8-bit data
        alphabet = 1 if dcs & 0x04 else 0
    else:
        raise PduError(f"TP-DCS 0x{dcs:02X} is not supported")
    if alphabet == 0:
        return "gsm7"
    if alphabet == 2:
        return "ucs2"
    raise PduError(f"TP-DCS 0x{dcs:02X} is 8-bit data or reserved, not text")


def _parse_udh(udh: bytes) -> Concat | None:
    concat = None
    pos = 0
    while pos < len(udh):
        if pos + 2 > len(udh):
            raise PduError("UDH ends inside an information element header")
        iei, length = udh[pos], udh[pos + 1]
        data = udh[pos + 2 : pos + 2 + length]
        if len(data) != length:
            raise PduError(f"UDH information element 0x{iei:02X} overruns the header")
        if iei in (0x00, 0x08):
            if len(data) != (3 if iei == 0x00 else 4):
                raise PduError(f"concatenation IE 0x{iei:02X} has length {length}")
            ref = data[0] if iei == 0x00 else int.from_bytes(data[:2], "big")
            total, index = data[-2], data[-1]
            if total == 0 or not 1 <= index <= total:
                raise PduError(f"concatenation IE says part {index} of {total}")
            concat = Concat(ref=ref, total=total, index=index)
        pos += 2 + length
    return concat


def decode_submit(pdu: bytes) -> Submit:
    """Decode one SMS-SUBMIT PDU as sent with AT+CMGS (SMSC field first)."""
    smsc_len = _octet(pdu, 0, "SMSC length")
    pos = 1 + smsc_len
    first = _octet(pdu, pos, "first octet")
    if first & 0x03 != 0x01:
        raise PduError(f"first octet 0x{first:02X} is not an SMS-SUBMIT (TP-MTI must be 01)")
    mr = _octet(pdu, pos + 1, "TP-MR")
    number, pos = _decode_address(pdu, pos + 2)
    _octet(pdu, pos, "TP-PID")
    encoding = _decode_dcs(_octet(pdu, pos + 1, "TP-DCS"))
    pos += 2
    vp_len = {0b00: 0, 0b10: 1, 0b01: 7, 0b11: 7}[(first >> 3) & 0x03]
    _take(pdu, pos, vp_len, "TP-VP")
    pos += vp_len
    udl = _octet(pdu, pos, "TP-UDL")
    user_data = pdu[pos + 1 :]
    if encoding == "gsm7":
        if udl > GSM7_SINGLE_SEPTETS:
            raise PduError(f"TP-UDL {udl} exceeds 160 septets")
        needed = -(-udl * 7 // 8)
    else:
        needed = udl
    if needed > MAX_USER_DATA_OCTETS:
        raise PduError(f"TP-UDL {udl} exceeds 140 octets of user data")
    if len(user_data) != needed:
        raise PduError(f"TP-UDL {udl} needs {needed} octets of user data, PDU has {len(user_data)}")

    concat = None
    header_octets = 0
    if first & 0x40:  # TP-UDHI
        if not user_data:
            raise PduError("TP-UDHI set but there is no user data")
        header_octets = 1 + user_data[0]
        if header_octets > len(user_data):
            raise PduError(f"UDH length {user_data[0]} overruns the user data")
        concat = _parse_udh(user_data[1:header_octets])

    if encoding == "gsm7":
        first_septet = -(-header_octets * 8 // 7)
        if first_septet > udl:
            raise PduError("UDH is longer than TP-UDL")
        text = _decode_gsm7(_unpack_septets(user_data, first_septet, udl))
    else:
        body = user_data[header_octets:]
        if len(body) % 2:
            raise PduError("UCS-2 user data has an odd number of octets")
        try:
            text = body.decode("utf-16-be")
        except UnicodeDecodeError as exc:
            raise PduError(f"UCS-2 user data is not valid UTF-16: {exc.reason}") from None
    return Submit(number=number, text=text, concat=concat, encoding=encoding, message_reference=mr)
