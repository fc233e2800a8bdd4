"""SMS-SUBMIT PDU encoding/decoding (relay/pdu.py): known vectors, segmentation, properties."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jikimi_host.relay.pdu import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    Concat,
    PduError,
    decode_submit,
    encode_submit,
    segments,
    tpdu_length,
)

KR_MOBILE = "+821012345678"


def udl_index(number: str) -> int:
    """Where TP-UDL sits: SMSC, first octet, MR, DA length, TOA, digits, PID, DCS, VP."""
    return 5 + (len(number.lstrip("+")) + 1) // 2 + 3


def test_classic_gsm7_hellohello_vector() -> None:
    # The example found throughout the TS 23.040 literature: "hellohello" to +46708251358.
    expected = "0011000B916407281553F80000AA0AE8329BFD4697D9EC37"
    assert [p.hex().upper() for p in encode_submit("+46708251358", "hellohello")] == [expected]
    submit = decode_submit(bytes.fromhex(expected))
    assert (submit.number, submit.text, submit.encoding, submit.concat) == (
        "+46708251358", "hellohello", "gsm7", None)
    assert tpdu_length(bytes.fromhex(expected)) == 23


def test_korean_ucs2_vector_decoded_by_hand() -> None:
    # 00            SMSC: use the SIM's
    # 11            SMS-SUBMIT, TP-VPF relative
    # 00            TP-MR (the modem assigns it)
    # 0C 91 280121436587   12 digits, international: 82 10 12 34 56 78 nibble-swapped
    # 00            TP-PID
    # 08            TP-DCS UCS-2
    # AA            TP-VP 4 days
    # 04            TP-UDL 4 octets
    # C548 B155     U+C548 '안', U+B155 '녕'
    expected = "0011000C912801214365870008AA04C548B155"
    assert "\uC548\uB155" == "안녕"
    assert [p.hex().upper() for p in encode_submit(KR_MOBILE, "안녕")] == [expected]
    submit = decode_submit(bytes.fromhex(expected))
    assert (submit.number, submit.text, submit.encoding) == (KR_MOBILE, "안녕", "ucs2")


def test_short_number_uses_unknown_type_of_address() -> None:
    # 03 digits, TON/NPI 0x81, "112" → 11 F2; "SOS" packs to D3 E7 14.
    assert encode_submit("112", "SOS")[0].hex().upper() == "001100038111F20000AA03D3E714"
    assert decode_submit(encode_submit("112", "SOS")[0]).number == "112"


def test_extension_characters_cost_two_septets() -> None:
    (pdu,) = encode_submit(KR_MOBILE, "[€]")
    submit = decode_submit(pdu)
    assert submit.text == "[€]" and submit.encoding == "gsm7"
    assert pdu[udl_index(KR_MOBILE)] == 6


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # 160 septets
        ("€" * 81, 2),
        ("가" * 70, 1),
        ("가" * 71, 2),
        ("가" * 134, 2),
        ("가" * 135, 3),
        ("😀" * 35, 1),  # 70 UTF-16 units
        ("😀" * 36, 2),
    ],
)
def test_segment_counts(text: str, count: int) -> None:
    assert segments(text) == count
    assert len(encode_submit(KR_MOBILE, text, 1)) == count


def test_concatenated_gsm7_layout() -> None:
    pdus = encode_submit(KR_MOBILE, "a" * 200, reference=0x42)
    assert len(pdus) == 2
    for index, pdu in enumerate(pdus, start=1):
        assert pdu[1] == 0x51  # SUBMIT + relative VP + TP-UDHI
        udl_at = udl_index(KR_MOBILE)
        assert pdu[udl_at] <= 160
        assert pdu[udl_at + 1 : udl_at + 7] == bytes([0x05, 0x00, 0x03, 0x42, 2, index])
    assert pdus[0][udl_index(KR_MOBILE)] == 160  # 7 septets of header + 153 of text
    assert [decode_submit(p).concat for p in pdus] == [Concat(0x42, 2, 1), Concat(0x42, 2, 2)]


def test_gsm7_segment_does_not_split_an_escape_pair() -> None:
    text = "a" * 152 + "€" * 5
    first, second = (decode_submit(p).text for p in encode_submit(KR_MOBILE, text))
    assert first == "a" * 152 and second == "€" * 5


def test_ucs2_segment_does_not_split_a_surrogate_pair() -> None:
    text = "가" * 66 + "😀" + "나" * 5  # 73 UTF-16 units: two segments of at most 67
    first, second = (decode_submit(p).text for p in encode_submit(KR_MOBILE, text))
    assert first == "가" * 66 and second == "😀" + "나" * 5


@pytest.mark.parametrize("number", ["", "+", "112;ATH", "+82 10 1234", "abc", "1" * 21, "١١٢"])
def test_bad_numbers_are_refused(number: str) -> None:
    with pytest.raises(PduError):
        encode_submit(number, "x")


def test_reference_must_fit_an_octet() -> None:
    with pytest.raises(PduError):
        encode_submit(KR_MOBILE, "x", reference=256)


@pytest.mark.parametrize(
    ("hex_pdu", "reason"),
    [
        ("", "SMSC"),
        ("0000", "SMS-SUBMIT"),  # TP-MTI 00 is a DELIVER
        ("0011000B916407281553F80000AA0BE8329BFD4697D9EC37", "TP-UDL"),  # UDL 11, 10 septets sent
        ("0011000B916407281553F80000AA0AE8329BFD4697D9EC3700", "TP-UDL"),  # trailing octet
        ("0011000C912801214365870008AA02D800", "UTF-16"),  # lone high surrogate
        ("0011000C912801214365870008AA03C548B1", "odd"),
        ("0011000381112F0000AA00", "filler"),  # odd digit count without F filler
        ("0011000C912801214365870004AA00", "8-bit"),
        ("0011000B916407281553F80000AA011B", "escape"),  # a lone escape septet
    ],
)
def test_malformed_pdus_raise_pdu_error(hex_pdu: str, reason: str) -> None:
    with pytest.raises(PduError, match=reason):
        decode_submit(bytes.fromhex(hex_pdu))


def test_concat_index_out_of_range_is_malformed() -> None:
    with pytest.raises(PduError, match="part 3 of 2"):
        decode_submit(bytes.fromhex("0051000C912801214365870008AA06050003000203"))


# --- properties --------------------------------------------------------------------------------

GSM_CHARS = "".join(c for c in GSM7_BASIC if c != "\x1b") + "".join(GSM7_EXTENSION.values())
texts = st.one_of(
    st.text(alphabet=GSM_CHARS, max_size=700),
    st.text(alphabet=st.sampled_from(GSM_CHARS + "가나다안녕하세요도와주세요😀🚨👍🏽\u200d"), max_size=400),
    st.text(max_size=300),
)
numbers = st.one_of(
    st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
    st.from_regex(r"[0-9]{1,20}", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(number=numbers, text=texts, reference=st.integers(0, 255))
@example(number=KR_MOBILE, text="긴급 상황입니다 🚨 " * 20, reference=9)
@example(number="112", text="{" * 200, reference=0)
def test_round_trip(number: str, text: str, reference: int) -> None:
    pdus = encode_submit(number, text, reference)
    assert len(pdus) == segments(text)
    decoded = [decode_submit(p) for p in pdus]
    for pdu, submit in zip(pdus, decoded):
        assert submit.number == number
        assert len(pdu) - udl_index(number) - 1 <= 140  # user data octets
        assert tpdu_length(pdu) == len(pdu) - 1
    encodings = {s.encoding for s in decoded}
    assert len(encodings) == 1
    if len(pdus) == 1:
        assert decoded[0].concat is None
    else:
        assert [s.concat for s in decoded] == [Concat(reference, len(pdus), i) for i in range(1, len(pdus) + 1)]
    assert "".join(s.text for s in decoded) == text


@settings(max_examples=300, deadline=None)
@given(text=texts)
def test_user_data_never_exceeds_140_octets(text: str) -> None:
    udl_at = udl_index(KR_MOBILE)
    for pdu in encode_submit(KR_MOBILE, text, 3):
        assert len(pdu[udl_at + 1 :]) <= 140
        dcs = pdu[udl_at - 2]
        assert pdu[udl_at] <= (160 if dcs == 0x00 else 140)


@settings(max_examples=500, deadline=None)
@given(data=st.data(), text=texts)
def test_mutated_pdus_raise_only_pdu_error(data: st.DataObject, text: str) -> None:
    pdu = bytearray(data.draw(st.sampled_from(encode_submit(KR_MOBILE, text, 5))))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "truncate", "extend", "set"]))
        if action == "flip" and pdu:
            i = data.draw(st.integers(0, len(pdu) - 1))
            pdu[i] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "truncate":
            del pdu[data.draw(st.integers(0, len(pdu))) :]
        elif action == "extend":
            pdu += data.draw(st.binary(min_size=1, max_size=4))
        elif pdu:
            pdu[data.draw(st.integers(0, len(pdu) - 1))] = data.draw(st.integers(0, 255))
    try:
        decode_submit(bytes(pdu))
    except PduError:
        pass


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=200))
def test_random_bytes_raise_only_pdu_error(raw: bytes) -> None:
    try:
        decode_submit(raw)
    except PduError:
        pass
